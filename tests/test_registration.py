"""Registration: known affines, the mask-moments fallback, stack composition, SyN point
direction, synthetic TRE (acceptance: median TRE <= 10 % of the spot pitch) and real HER2ST
patient C (slow)."""

from __future__ import annotations

import glob
import json

import cv2
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.errors import ConfigError, DataError
from asign_jax.preprocess.prepared import PreparedSample, PreparedSection
from asign_jax.registration.affine import apply_affine
from asign_jax.registration.ants_refine import ants_refine
from asign_jax.registration.keypoints import initial_affine
from asign_jax.registration.preprocess import load_section
from asign_jax.registration.result import RegisteredSample
from asign_jax.registration.stack import register_sample, register_stack

BG = (242, 238, 242)


def _rcfg(**kw):
    c = base_config().registration
    c.long_side = 512
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _tissue(size=600, seed=0, texture=True, n_blobs=5):
    """(size, size, 3) uint8 H&E-like image: irregular blob with multi-scale texture."""
    rng = np.random.default_rng(seed)
    m = np.zeros((size, size), np.uint8)
    for _ in range(n_blobs):
        c = (int(rng.uniform(0.38, 0.62) * size), int(rng.uniform(0.38, 0.62) * size))
        ax = (int(rng.uniform(0.12, 0.28) * size), int(rng.uniform(0.06, 0.16) * size))
        cv2.ellipse(m, c, ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    img = np.empty((size, size, 3), np.float32)
    img[:] = BG
    if texture:
        tex = np.zeros((size, size), np.float32)
        for sigma, amp in ((2, 1.0), (6, 0.7), (15, 0.5)):
            n = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), sigma)
            tex += amp * n / (n.std() + 1e-6)
        tex = (tex - tex.min()) / (tex.max() - tex.min())
    else:
        tex = np.full((size, size), 0.5, np.float32)
    tissue = np.stack([200 - 140 * tex, 120 - 80 * tex, 200 - 60 * tex], -1)
    img[m > 0] = tissue[m > 0]
    return np.clip(img, 0, 255).astype(np.uint8), m.astype(bool)


def _about_centre(deg, scale, t, size=600):
    """(3, 3) rotation/scale about the image centre, then translation t."""
    a = np.deg2rad(deg)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([size / 2, size / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + np.asarray(t, float) - lin @ c
    return m


def _warp(img, m, size=600):
    """Image whose pixel p shows ``img`` at inv(m) p (i.e. ``m`` maps img -> result)."""
    return cv2.warpAffine(img, m[:2], (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BG)


def _egg(size=600):
    """Textureless, smooth, asymmetric (egg-like) tissue with a soft edge: no keypoints."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    th, r = np.arctan2(yy - c, xx - c), np.hypot(xx - c, yy - c)
    radius = 0.28 * size * (1 + 0.25 * np.cos(th) + 0.12 * np.sin(2 * th + 0.5))
    a = np.clip((radius - r) / 6 + 0.5, 0, 1)[..., None]
    img = np.array(BG, np.float32) * (1 - a) + np.array([140, 80, 170], np.float32) * a
    return img.astype(np.uint8), a[..., 0] > 0.5


def _points_in(mask, n=60, seed=0):
    ys, xs = np.nonzero(mask)
    i = np.random.default_rng(seed).choice(len(xs), n, replace=False)
    return np.stack([xs[i], ys[i]], 1).astype(np.float64)


# ---------------------------------------------------------------------------------------
# (a) a known affine
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deg,scale,t", [(15.0, 1.05, (20, -35)), (-20.0, 0.95, (-30, 25))])
def test_known_affine_recovered(deg, scale, t):
    fixed, fmask = _tissue(seed=1)
    truth = _about_centre(deg, scale, t)          # moving px -> fixed px
    moving = _warp(fixed, np.linalg.inv(truth))
    mmask = _warp(fmask.astype(np.uint8), np.linalg.inv(truth)).astype(bool)
    pts = _points_in(mmask & (cv2.erode(mmask.astype(np.uint8), np.ones((41, 41))) > 0))
    res = register_stack([moving, fixed], [{"spot": pts}, {"spot": np.zeros((0, 2))}],
                         _rcfg(), names=["m", "f"])
    assert res.reference == 1 and res.qc["reference"] == "f"
    qc = res.qc["sections"][0]
    assert qc["method"] == "sift+ants-affine", qc
    assert qc["inliers"] >= 12
    err = np.linalg.norm(res.points[0]["spot"] - apply_affine(truth, pts), axis=1)
    assert err.max() < 2.0, err.max()
    assert np.abs(res.affines[0] - truth).max() < 0.05 * np.abs(truth).max()
    assert qc["dice_after"] > 0.97 and qc["dice_after"] > qc["dice_before"]


def test_ants_affine_direction_from_perturbed_start(tmp_path):
    """ANTs must pull a deliberately wrong start back onto the truth (a direction mix-up in
    reading the ANTs transform would double the error instead)."""
    fixed, fmask = _tissue(seed=2)
    truth = _about_centre(10.0, 1.0, (15, 10))
    moving = _warp(fixed, np.linalg.inv(truth))
    mv, fx = load_section("m", moving, 512), load_section("f", fixed, 512)
    truth_small = fx.to_small @ truth @ mv.to_full
    perturb = _about_centre(3.0, 1.0, (8, -6), size=512)
    start = perturb @ truth_small
    ref = ants_refine(mv, fx, start, _rcfg(), tmp_path)
    pts = apply_affine(mv.to_small, _points_in(_warp(fmask.astype(np.uint8),
                                                     np.linalg.inv(truth)).astype(bool)))
    before = np.linalg.norm(apply_affine(start, pts) - apply_affine(truth_small, pts), axis=1)
    after = np.linalg.norm(apply_affine(ref.matrix, pts) - apply_affine(truth_small, pts), axis=1)
    assert before.mean() > 8.0
    assert after.mean() < 1.0 and after.max() < 2.5, (after.max(), after.mean())   # mixed-up: > 16


def test_syn_warp_maps_points_in_the_right_direction():
    """Moving = fixed under a smooth non-rigid displacement u: moving pixel p shows fixed at
    p + u(p). SyN point mapping must get closer to p + u(p) than the affine alone, and much
    closer than the opposite direction p - u(p)."""
    size = 512
    fixed, fmask = _tissue(size=size, seed=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ux = 6.0 * np.sin(2 * np.pi * yy / size) * np.exp(-((xx - 256) ** 2 + (yy - 256) ** 2) / 2e4)
    uy = 6.0 * np.cos(2 * np.pi * xx / size) * np.exp(-((xx - 256) ** 2 + (yy - 256) ** 2) / 2e4)
    moving = cv2.remap(fixed, xx + ux, yy + uy, cv2.INTER_LINEAR, borderValue=BG)
    pts = _points_in(fmask & (np.hypot(ux, uy) > 3.0), n=80, seed=1)
    ij = pts.astype(int)
    true = pts + np.stack([ux[ij[:, 1], ij[:, 0]], uy[ij[:, 1], ij[:, 0]]], 1)
    wrong = pts - (true - pts)
    errs = {}
    for kind in ("Affine", "SyN"):
        res = register_stack([moving, fixed], [{"spot": pts}, {"spot": np.zeros((0, 2))}],
                             _rcfg(ants_transform=kind, ants_syn_iterations=(60, 40, 20)))
        out = res.points[0]["spot"]
        errs[kind] = np.median(np.linalg.norm(out - true, axis=1))
        errs[kind + "_wrong"] = np.median(np.linalg.norm(out - wrong, axis=1))
        assert res.qc["sections"][0]["method"].endswith("ants-" + kind.lower())
    assert errs["SyN"] < 0.6 * errs["Affine"], errs
    assert errs["SyN"] < 0.5 * errs["SyN_wrong"], errs


# ---------------------------------------------------------------------------------------
# (b) the mask-moments fallback
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deg", [25.0, 160.0])
def test_mask_moments_fallback_on_textureless_tissue(deg, caplog):
    fixed, fmask = _egg()
    truth = _about_centre(deg, 1.0, (25, -15))
    moving = _warp(fixed, np.linalg.inv(truth))
    mv, fx = load_section("m", moving, 512), load_section("f", fixed, 512)
    init = initial_affine(mv, fx, _rcfg())
    assert init.method == "mask-moments" and init.inliers < 12
    assert "falling back" in caplog.text
    pts = _points_in(_warp(fmask.astype(np.uint8), np.linalg.inv(truth)).astype(bool))
    full = fx.to_full @ init.matrix @ mv.to_small
    err = np.linalg.norm(apply_affine(full, pts) - apply_affine(truth, pts), axis=1)
    assert np.median(err) < 4.0, np.median(err)
    res = register_stack([moving, fixed], [{"spot": pts}, {"spot": pts[:0]}],
                         _rcfg(ants_iterations=(50, 25, 10)))
    assert res.qc["sections"][0]["method"] == "mask-moments+ants-affine"
    err = np.linalg.norm(res.points[0]["spot"] - apply_affine(truth, pts), axis=1)
    assert np.median(err) < 3.0, np.median(err)


def test_dice_safeguard_falls_back(monkeypatch, caplog):
    """A refinement that lowers the mask Dice is rejected (loudly) for the initial affine, and
    an initial affine that is also worse than the identity gives the identity."""
    import asign_jax.registration.stack as stack_mod
    from asign_jax.registration.ants_refine import Refinement
    from asign_jax.registration.keypoints import InitialAffine

    fixed, fmask = _tissue(seed=6)
    truth = _about_centre(5.0, 1.0, (10, 5))
    moving = _warp(fixed, np.linalg.inv(truth))
    pts = _points_in(fmask, n=20)
    away = np.eye(3)
    away[:2, 2] = [150, -120]
    monkeypatch.setattr(stack_mod, "ants_refine",
                        lambda mv, fx, init, *a, **k: Refinement(away @ init))
    res = register_stack([moving, fixed], [{"spot": pts}, {"spot": pts[:0]}], _rcfg())
    s = res.qc["sections"][0]
    assert s["method"] == "sift (ants rejected)" and "LOWERS" in caplog.text
    err = np.linalg.norm(res.points[0]["spot"] - apply_affine(truth, pts), axis=1)
    assert err.max() < 2.0 and s["dice_after"] > s["dice_before"]

    monkeypatch.setattr(stack_mod, "initial_affine",
                        lambda mv, fx, cfg, seed=0: InitialAffine(away, 0, "sift", 0))
    res = register_stack([moving, fixed], [{"spot": pts}, {"spot": pts[:0]}], _rcfg())
    s = res.qc["sections"][0]
    assert s["method"] == "identity (pair fallback)"
    np.testing.assert_allclose(res.points[0]["spot"], pts, atol=1e-9)
    assert s["dice_after"] == s["dice_before"]


# ---------------------------------------------------------------------------------------
# (c) stack composition
# ---------------------------------------------------------------------------------------

def _prepared(sample_id, names, paths, pixel_xy, shapes):
    """A PreparedSample with only what registration reads (other arrays empty)."""
    e2 = np.zeros((0, 2))
    secs = []
    for i, (n, p, xy, hw) in enumerate(zip(names, paths, pixel_xy, shapes)):
        o = np.floor(xy / 512).astype(int) * 512
        go = np.floor(xy / 1024).astype(int) * 1024
        secs.append(PreparedSection(
            name=n, layer=i, spot_ids=np.array([f"s{j}" for j in range(len(xy))]),
            array_xy=np.zeros_like(xy), pixel_xy=xy, spot_counts=np.zeros((len(xy), 0)),
            spot_labels=np.zeros((len(xy), 0)), region_origin=np.unique(o, axis=0),
            region_counts=e2, region_labels=e2, spot_region=np.zeros(len(xy), np.int32),
            global_origin=np.unique(go, axis=0), global_counts=e2, global_labels=e2,
            spot_global=np.zeros(len(xy), np.int32), region_global=np.zeros(0, np.int32),
            image_shape=np.asarray(hw), image_path=str(p)))
    return PreparedSample(sample_id=sample_id, genes=np.array([]), sections=secs)


@pytest.mark.parametrize("n_layers", [3, 4])
def test_stack_composition_to_middle(n_layers, tmp_path):
    canon, cmask = _tissue(seed=5)
    params = [(-12.0, 1.02, (15, -20)), (8.0, 0.98, (-10, 12)), (0.0, 1.0, (0, 0)),
              (15.0, 1.03, (20, 5))][:n_layers]
    affs = [_about_centre(*p) for p in params]                 # canonical -> section px
    spots = _points_in(cv2.erode(cmask.astype(np.uint8), np.ones((61, 61))) > 0, n=40)
    paths, pix = [], []
    for l, a in enumerate(affs):
        p = tmp_path / f"S{l}.png"
        cv2.imwrite(str(p), cv2.cvtColor(_warp(canon, a), cv2.COLOR_RGB2BGR))
        paths.append(p)
        pix.append(apply_affine(a, spots))
    names = [f"S{l}" for l in range(n_layers)]
    cfg = base_config()
    cfg.registration.long_side = 512
    cfg.registration.ants_transform = "none"                  # keypoint affines only: fast
    prep = _prepared("X", names, paths, pix, [(600, 600)] * n_layers)
    reg = register_sample(prep, cfg, tmp_path / "wd", ground_truth=affs)
    ref = n_layers // 2
    assert reg.reference == ref
    np.testing.assert_allclose(reg.affines[ref], np.eye(3), atol=1e-12)
    qc = json.loads((tmp_path / "wd/registration/X/qc.json").read_text())
    assert qc["reference"] == names[ref]
    for l in range(n_layers):
        expected = affs[ref] @ np.linalg.inv(affs[l])
        err = np.linalg.norm(reg.spot_xy[l] - apply_affine(expected, pix[l]), axis=1)
        assert err.max() < 2.0, (l, err.max())
        assert np.abs(reg.affines[l] - expected)[:2, :2].max() < 0.01
        # Tile centres go through the same (affine) transform.
        c = prep.sections[l].region_centers(512)
        np.testing.assert_allclose(reg.region_xy[l], apply_affine(reg.affines[l], c), atol=1e-6)
        s = qc["sections"][l]
        assert s["name"] == names[l] and s["tre_px"] < 2.0
        assert s["method"] == ("reference" if l == ref else "sift")
    loaded = RegisteredSample.load(tmp_path / "wd", "X")
    np.testing.assert_allclose(loaded.affines, reg.affines)
    assert (tmp_path / "wd/registration/X/overlay.png").stat().st_size > 10_000


def test_single_section_and_bad_image(tmp_path):
    cfg = base_config()
    prep = _prepared("one", ["A1"], [tmp_path / "none.png"], [np.array([[10.0, 20.0]])],
                     [(100, 100)])
    reg = register_sample(prep, cfg, tmp_path)
    np.testing.assert_allclose(reg.affines, np.eye(3)[None])
    np.testing.assert_allclose(reg.spot_xy[0], [[10.0, 20.0]])
    assert (tmp_path / "registration/one/qc.json").exists()
    prep2 = _prepared("two", ["A1", "A2"], [tmp_path / "none.png"] * 2,
                      [np.zeros((1, 2))] * 2, [(100, 100)] * 2)
    with pytest.raises(DataError, match="none.png"):
        register_sample(prep2, cfg, tmp_path)


# ---------------------------------------------------------------------------------------
# (d) synthetic generator: acceptance, median TRE <= 10 % of the spot pitch
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_tre_within_tenth_of_pitch(seed, tmp_path):
    from asign_jax.data.synthetic import generate
    from asign_jax.stages import register
    from asign_jax.runfolder import NEW, RunFolder, stage_fields

    cfg = base_config()
    s = cfg.synthetic
    s.n_samples, s.n_sections, s.n_genes, s.n_types, s.image_size = 1, 3, 20, 3, 1024
    root = tmp_path / "data"
    summary = generate(s, root, seed)
    cfg.data.format, cfg.data.root = "synthetic", str(root)
    cfg.registration.long_side = 512
    names = summary["samples"]["A"]
    gts = [json.loads((root / "ground_truth" / f"{n}.json").read_text()) for n in names]
    pix = [np.asarray(g["spots"]["pixel_xy"], float) for g in gts]
    paths = [root / "ST-imgs" / "A" / n / f"{n}_HE.jpg" for n in names]
    wd = tmp_path / "wd"
    rf = RunFolder(wd)                              # a prepare stage made by hand
    rf.start("prepare", stage_fields("prepare", cfg), {}, NEW)
    _prepared("A", names, paths, pix, [(1024, 1024)] * 3).save(wd)
    (wd / "prepared" / "index.json").write_text(json.dumps({"samples": ["A"], "genes": []}))
    rf.finish("prepare")
    qcs = register(cfg, wd)
    pitch = float(s.spot_pitch)
    for sec in qcs["A"]["sections"]:
        assert sec["tre_px"] is not None and sec["tre_px"] <= 0.1 * pitch, sec
        assert sec["dice_after"] >= sec["dice_before"]


# ---------------------------------------------------------------------------------------
# (e) real data: HER2ST patient C, C2..C6 onto C4
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_her2st_patient_c(her2st_root, tmp_path):
    from scipy.spatial import cKDTree

    names = ["C2", "C3", "C4", "C5", "C6"]
    paths, pix = [], []
    for n in names:
        imgs = glob.glob(str(her2st_root / "ST-imgs" / "C" / n / "*.jpg"))
        assert len(imgs) == 1, imgs
        paths.append(imgs[0])
        pix.append(np.loadtxt(her2st_root / "ST-spotfiles" / f"{n}_selection.tsv",
                              skiprows=1, usecols=(4, 5)))
    cfg = base_config()
    cfg.registration.long_side = 512
    prep = _prepared("C", names, paths, pix, [()] * 5)
    reg = register_sample(prep, cfg, tmp_path)
    qc = json.loads((tmp_path / "registration/C/qc.json").read_text())
    assert qc["reference"] == "C4" and reg.reference == 2
    for s in qc["sections"]:
        if s["name"] == "C4":
            continue
        assert s["dice_after"] >= 0.85 and s["dice_after"] > s["dice_before"], s
    n_ok = n_all = 0
    for l in range(5):
        others = np.vstack([reg.spot_xy[k] for k in range(5) if k != l])
        d, _ = cKDTree(others).query(reg.spot_xy[l])
        n_ok += int((d < 2 * 112.0).sum())
        n_all += len(d)
    assert n_ok / n_all >= 0.8, n_ok / n_all


# ---------------------------------------------------------------------------------------
# (c) every registration knob reaches the code it names
# ---------------------------------------------------------------------------------------

def test_each_keypoint_setting_changes_the_fit(monkeypatch):
    """detector, max_keypoints, estimator, robust, reproj_threshold, min_inliers,
    allow_reflection and content_refine: each one set, and its effect seen."""
    from asign_jax.registration import keypoints
    fixed, _ = _tissue(seed=1)
    truth = _about_centre(15.0, 1.05, (20, -35))
    mv = load_section("m", _warp(fixed, np.linalg.inv(truth)), 512)
    fx = load_section("f", fixed, 512)
    truth_small = fx.to_small @ truth @ mv.to_full
    seen = []
    for name in ("estimateAffine2D", "estimateAffinePartial2D"):
        real = getattr(cv2, name)
        monkeypatch.setattr(cv2, name, lambda *a, _r=real, _n=name, **k: (
            seen.append((_n, k["method"], k["ransacReprojThreshold"])) or _r(*a, **k)))
    default = keypoints.initial_affine(mv, fx, _rcfg())
    assert default.method == "sift" and seen[-1] == ("estimateAffine2D", cv2.USAC_MAGSAC, 3.0)
    assert np.abs(default.matrix - truth_small).max() < 0.05 * np.abs(truth_small).max()
    orb = keypoints.initial_affine(mv, fx, _rcfg(detector="orb"))
    assert orb.method == "orb" and orb.n_matches != default.n_matches
    few = keypoints.initial_affine(mv, fx, _rcfg(max_keypoints=30))
    assert few.n_matches <= 30 < default.n_matches
    part = keypoints.initial_affine(mv, fx, _rcfg(estimator="partial", robust="ransac",
                                                  reproj_threshold=5.0))
    assert seen[-1] == ("estimateAffinePartial2D", cv2.RANSAC, 5.0)
    a = part.matrix[:2, :2]                       # a similarity: [[s c, -s s'], [s s', s c]]
    assert abs(a[0, 0] - a[1, 1]) < 1e-9 and abs(a[0, 1] + a[1, 0]) < 1e-9
    keypoints.initial_affine(mv, fx, _rcfg(robust="ransac"))
    assert seen[-1] == ("estimateAffine2D", cv2.RANSAC, 3.0)
    # too few inliers -> the mask-moments fallback; content_refine off keeps its raw answer
    refined = keypoints.initial_affine(mv, fx, _rcfg(min_inliers=10 ** 6))
    raw = keypoints.initial_affine(mv, fx, _rcfg(min_inliers=10 ** 6, content_refine=False))
    moments, _ = keypoints.mask_moments_affine(mv, fx, allow_reflection=True)
    assert refined.method == raw.method == "mask-moments"
    np.testing.assert_array_equal(raw.matrix, moments)
    assert not np.array_equal(refined.matrix, moments)
    # a mirrored section is matched mirrored only when reflections are allowed
    mirrored = load_section("mirror", np.ascontiguousarray(fixed[:, ::-1]), 512)
    off = dict(min_inliers=10 ** 6, content_refine=False)
    det = lambda **k: np.linalg.det(keypoints.initial_affine(mirrored, fx, _rcfg(**k)).matrix[:2, :2])
    assert det(**off) < 0 and det(allow_reflection=False, **off) > 0


def test_ants_metric_is_the_linear_stage_metric(monkeypatch, tmp_path):
    from asign_jax.registration import ants_refine as ar
    fixed, _ = _tissue(seed=2)
    mv, fx = load_section("m", _warp(fixed, _about_centre(5.0, 1.0, (5, 5))), 512), \
        load_section("f", fixed, 512)
    calls = []
    ants = ar.import_ants(1)
    real = ants.registration
    monkeypatch.setattr(ants, "registration", lambda *a, **k: calls.append(k) or real(*a, **k))
    for metric in ("meansquares", "GC"):
        ar.ants_refine(mv, fx, np.eye(3), _rcfg(ants_metric=metric, ants_iterations=(5, 2, 1)),
                       tmp_path / metric)
    assert [k.get("aff_metric") for k in calls] == ["meansquares", "GC"]
    with pytest.raises(ConfigError, match="registration.ants_metric"):
        ar.ants_refine(mv, fx, np.eye(3), _rcfg(ants_metric="mi"), tmp_path / "bad")
