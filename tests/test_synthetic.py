"""The synthetic HER2ST-layout generator: format, determinism, signal, transforms, reuse."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from asign_jax.config import base_config
from asign_jax.data import synthetic, synthetic_frames, synthetic_render
from asign_jax.errors import ConfigError, DataError

SPOT_COLUMNS = ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]


def small_cfg(**overrides):
    c = base_config().synthetic
    c.n_samples, c.n_sections, c.n_genes, c.n_types = 2, 2, 40, 3
    c.image_size, c.spot_pitch, c.max_translation_px = 640, 48, 30.0
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The default config (3 samples x 4 sections, 2048 px), generated once; (root, summary)."""
    root = tmp_path_factory.mktemp("synthetic_default")
    return root, synthetic.generate(base_config().synthetic, root, seed=0)


@pytest.fixture(scope="module")
def sections(default_data):
    """{name: (selection, counts, image, ground truth)} of the default data, read once."""
    root, summary = default_data
    return {name: read_section(root, name) for name in summary["spots"]}


def read_section(root: Path, name: str):
    """(selection DataFrame, counts DataFrame, RGB image, ground truth) of one section."""
    sel = pd.read_csv(root / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t")
    cnt = pd.read_csv(root / "ST-cnts" / f"{name}.tsv.gz", sep="\t", index_col=0)
    jpgs = sorted((root / "ST-imgs" / name[0] / name).glob("*.jpg"))
    assert len(jpgs) == 1, jpgs
    img = cv2.cvtColor(cv2.imread(str(jpgs[0])), cv2.COLOR_BGR2RGB)
    return sel, cnt, img, synthetic.load_ground_truth(root, name)


def test_default_generation_summary(default_data):
    root, summary = default_data
    assert summary["seed"] == 0 and summary["params"] == synthetic._read_params(
        base_config().synthetic)
    assert summary["samples"] == {p: [f"{p}{i}" for i in range(1, 5)] for p in "ABC"}
    assert set(summary["spots"]) == {f"{p}{i}" for p in "ABC" for i in range(1, 5)}
    # The tissue must stay inside the image under +-80 px / +-5 % / 30 deg, which at pitch
    # 160 px in 2048 px leaves room for ~70 spots per section.
    assert all(55 <= n <= 200 for n in summary["spots"].values()), summary["spots"]
    assert summary["genes"][:3] == ["G000", "G001", "G002"] and len(summary["genes"]) == 300
    assert json.loads((root / "synthetic.json").read_text()) == summary


def test_files_parse_in_her2st_format(default_data, sections):
    root, summary = default_data
    for name, n_spots in summary["spots"].items():
        sel, cnt, img, gt = sections[name]
        assert list(sel.columns) == SPOT_COLUMNS
        assert len(sel) == n_spots and (sel["selected"] == 1).all()
        assert sel["x"].dtype.kind == "i" and sel["y"].dtype.kind == "i"
        assert sel["x"].min() >= 1 and sel["y"].min() >= 1
        assert np.abs(sel["new_x"] - sel["x"]).max() < 0.2
        ids = sel["x"].astype(str) + "x" + sel["y"].astype(str)
        assert ids.is_unique and set(ids) == set(cnt.index) == set(gt["spots"]["ids"])
        assert list(cnt.columns) == summary["genes"]
        # Counts: non-negative integers.
        assert all(dt.kind == "i" for dt in cnt.dtypes)
        assert (cnt.to_numpy() >= 0).all() and cnt.to_numpy().sum() > 0
        assert img.shape == (2048, 2048, 3) and img.dtype == np.uint8
        lbl = pd.read_csv(root / "ST-pat" / "lbl" / f"{name}_labeled_coordinates.tsv", sep="\t")
        assert list(lbl.columns) == ["Row.names", "x", "y", "pixel_x", "pixel_y", "label"]
        assert len(lbl) == n_spots
    # The count header starts with an empty cell, like HER2ST.
    import gzip
    with gzip.open(root / "ST-cnts" / "A1.tsv.gz", "rt") as f:
        assert f.readline().startswith("\tG000\tG001\t")


def _spot_table(summary, sections):
    """Per spot: sample, type, counts (N, G), image features (N, 5)."""
    samples, types, counts, feats = [], [], [], []
    for sample, names in summary["samples"].items():
        for name in names:
            sel, cnt, img, gt = sections[name]
            type_of = dict(zip(gt["spots"]["ids"], gt["spots"]["type"]))
            sel = sel.set_index(sel["x"].astype(str) + "x" + sel["y"].astype(str))
            xy = np.rint(sel.loc[cnt.index, ["pixel_x", "pixel_y"]].to_numpy(float)).astype(int)
            gray = img.mean(-1)
            for x, y in xy:
                win = img[y - 20:y + 21, x - 20:x + 21].reshape(-1, 3).astype(np.float64)
                g = gray[y - 20:y + 21, x - 20:x + 21]
                feats.append(np.r_[np.median(win, 0), g.std(), (g < 120).mean()])
            samples += [sample] * len(cnt)
            types += [type_of[i] for i in cnt.index]
            counts.append(cnt.to_numpy())
    return (np.array(samples), np.array(types), np.concatenate(counts).astype(np.float64),
            np.array(feats))


def _nearest_centroid_accuracy(z, types, train):
    """Fits per-type centroids on `train` rows (standardised), returns accuracy on the rest."""
    mu, sd = z[train].mean(0), z[train].std(0) + 1e-6
    z = (z - mu) / sd
    ks = np.unique(types)
    cent = np.stack([z[train & (types == k)].mean(0) for k in ks])
    pred = ks[np.argmin(((z[~train][:, None] - cent[None]) ** 2).sum(-1), 1)]
    return float((pred == types[~train]).mean())


def test_expression_and_images_carry_the_tissue_type(default_data, sections):
    _, summary = default_data
    sample, types, counts, feats = _spot_table(summary, sections)
    assert len(np.unique(types)) == 5
    train = sample != "C"     # biology is shared: centroids from blocks A, B classify block C
    logn = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    acc_expr = _nearest_centroid_accuracy(logn, types, train)
    acc_img = _nearest_centroid_accuracy(feats, types, train)
    assert acc_expr >= 0.95, acc_expr
    assert acc_img >= 0.75, acc_img
    # Realistic count statistics: a few very high genes, library-size variation.
    gene_mean = counts.mean(0)
    assert np.sort(gene_mean)[-3:].min() > 20 * np.median(gene_mean)
    lib = counts.sum(1)
    for k in np.unique(types):
        cv = lib[types == k].std() / lib[types == k].mean()
        assert 0.2 < cv < 1.0, (k, cv)
    assert 500 < lib.mean() < 3000
    print(f"nearest-centroid accuracy on block C: expression {acc_expr:.3f}, "
          f"image {acc_img:.3f}")


def test_spots_land_on_tissue(default_data, sections):
    root, summary = default_data
    background = 255 * np.exp(-synthetic_render.BACKGROUND_OD)
    on_tissue = []
    for name in summary["spots"]:
        sel, _, img, _ = sections[name]
        green = img[..., 1].astype(np.float64)      # eosin and hematoxylin both absorb green
        xy = np.rint(sel[["pixel_x", "pixel_y"]].to_numpy(float)).astype(int)
        assert (xy >= 40).all() and (xy < 2048 - 40).all()
        for x, y in xy:
            win = green[y - 15:y + 16, x - 15:x + 16]
            on_tissue.append((win > background - 12).mean() < 0.3
                             and np.median(win) < background - 30)
            # A spot may sit on a lumen (a white hole <= 28 px radius), never off the tissue.
            assert np.median(green[y - 40:y + 41, x - 40:x + 41]) < background - 30
        # Background (image corners) is white.
        assert green[:20, :20].mean() > background - 4 and img[:20, :20].std() < 4
    assert np.mean(on_tissue) > 0.97, np.mean(on_tissue)


def test_transforms_reproduce_spot_pixels(default_data):
    root, summary = default_data
    for names in summary["samples"].values():
        gts = [synthetic.load_ground_truth(root, n) for n in names]
        ref = gts[0]
        for name, gt in zip(names, gts):
            sel = pd.read_csv(root / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t")
            sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
            pix = sel.loc[gt["spots"]["ids"], ["pixel_x", "pixel_y"]].to_numpy(float)
            can = np.asarray(gt["spots"]["canonical_xy"])
            a = np.asarray(gt["affine"])
            assert a.shape == (3, 3) and np.allclose(a[2], [0, 0, 1])
            assert abs(gt["rotation_deg"]) <= 30.0 and np.all(np.abs(gt["translation_px"]) <= 80)
            affine_only = can @ a[:2, :2].T + a[:2, 2]
            dev = np.linalg.norm(affine_only - pix, axis=1)
            assert dev.max() <= gt["elastic_px"] + 0.01 and dev.max() > 0.1
            assert np.abs(synthetic_frames.canonical_to_section(gt, can) - pix).max() < 0.01
            back = synthetic_frames.section_to_canonical(gt, pix)
            assert np.abs(back - can).max() < 0.01
            # Into the reference frame: affine-only within ~2 x elastic, exact within 0.01.
            truth = synthetic_frames.canonical_to_section(ref, can)
            approx = synthetic_frames.true_reference_coords(gt, ref, pix)
            exact = synthetic_frames.true_reference_coords(gt, ref, pix, exact=True)
            assert np.linalg.norm(approx - truth, axis=1).max() <= 2.5 * gt["elastic_px"]
            assert np.abs(exact - truth).max() < 0.02


def test_image_content_follows_the_transforms(default_data):
    """Warping section l into the reference frame with the true affine aligns the tissue."""
    root, summary = default_data
    names = summary["samples"]["B"]
    gts = [synthetic.load_ground_truth(root, n) for n in names]
    f = 0.25
    down = np.diag([f, f, 1.0])

    def tissue(name):
        img = cv2.imread(str(next((root / "ST-imgs" / name[0] / name).glob("*.jpg"))),
                         cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        return (cv2.GaussianBlur(small, (0, 0), 3) < 230).astype(np.uint8)

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    ref = tissue(names[0])
    for name, gt in zip(names[1:], gts[1:]):
        m = down @ np.asarray(gts[0]["affine"]) @ np.linalg.inv(gt["affine"]) @ np.linalg.inv(down)
        mov = tissue(name)
        warped = cv2.warpAffine(mov, m[:2], ref.shape[::-1], flags=cv2.INTER_NEAREST)
        print(f"{name} -> {names[0]}: tissue IoU {iou(mov, ref):.3f} unregistered, "
              f"{iou(warped, ref):.3f} with the true affine")
        assert iou(warped, ref) > 0.93 > iou(mov, ref) + 0.02


def test_tissue_types_change_gradually_between_sections(tmp_path):
    # shared_grid: every section samples the same canonical grid, so a spot id names the
    # same canonical position in all sections and only z changes.
    cfg = small_cfg(n_samples=1, n_sections=4, image_size=1024, spot_pitch=32,
                    n_types=5, shared_grid=True)
    summary = synthetic.generate(cfg, tmp_path, seed=3)
    gts = [synthetic.load_ground_truth(tmp_path, n) for n in summary["samples"]["A"]]
    types = [dict(zip(g["spots"]["ids"], g["spots"]["type"])) for g in gts]
    canon = [dict(zip(g["spots"]["ids"], map(tuple, g["spots"]["canonical_xy"]))) for g in gts]

    def agreement(a, b):
        common = sorted(set(types[a]) & set(types[b]))
        assert len(common) > 300 and all(canon[a][i] == canon[b][i] for i in common)
        return np.mean([types[a][i] == types[b][i] for i in common])

    consecutive = [agreement(i, i + 1) for i in range(3)]
    assert min(consecutive) >= 0.8, consecutive
    assert agreement(0, 3) < max(consecutive) and agreement(0, 3) > 0.4, agreement(0, 3)


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_from_the_seed(tmp_path):
    cfg = small_cfg()
    s1 = synthetic.generate(cfg, tmp_path / "a", seed=5)
    s2 = synthetic.generate(cfg, tmp_path / "b", seed=5)
    synthetic.generate(cfg, tmp_path / "c", seed=6)
    t1, t2, t3 = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert set(t1) == set(t2) == set(t3) and len(t1) == 2 * 2 * 6 + 1   # 6 files a section
    for key in t1:
        if key != "synthetic.json":
            assert t1[key] == t2[key], key
    drop = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert drop(s1) == drop(s2) and s1["spots"] != {} and s1["seed"] == 5
    assert t1["ST-cnts/A1.tsv.gz"] != t3["ST-cnts/A1.tsv.gz"]
    assert t1["ST-imgs/A/A1/A1_HE.jpg"] != t3["ST-imgs/A/A1/A1_HE.jpg"]
    # Blocks of one seed differ from each other.
    g_a, g_b = (synthetic.load_ground_truth(tmp_path / "a", n) for n in ("A1", "B1"))
    assert g_a["affine"] != g_b["affine"] and g_a["spots"]["type"] != g_b["spots"]["type"]


def test_idempotent_and_regenerates_on_change(tmp_path, monkeypatch):
    cfg = small_cfg(n_sections=3)
    synthetic.generate(cfg, tmp_path, seed=1)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with monkeypatch.context() as m:                # up to date: nothing is drawn or written
        m.setattr(synthetic, "_write_block", lambda *a: pytest.fail("regenerated"))
        again = synthetic.generate(cfg, tmp_path, seed=1)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    assert again["samples"]["A"] == ["A1", "A2", "A3"]
    # Different parameters: regenerated, and sections that no longer exist are removed.
    fewer = synthetic.generate(small_cfg(n_sections=2), tmp_path, seed=1)
    assert fewer["samples"]["A"] == ["A1", "A2"]
    assert not (tmp_path / "ST-cnts" / "A3.tsv.gz").exists()
    assert not (tmp_path / "ST-imgs" / "A" / "A3").exists()
    assert not (tmp_path / "ground_truth" / "A3.json").exists()


def test_refuses_real_dataset_folder_and_bad_config(tmp_path):
    (tmp_path / "ST-cnts").mkdir()
    with pytest.raises(DataError, match="real dataset"):
        synthetic.generate(small_cfg(), tmp_path, seed=0)
    with pytest.raises(ConfigError, match="tissue radius"):
        synthetic.generate(small_cfg(image_size=256, spot_pitch=64), tmp_path / "x", seed=0)
    with pytest.raises(ConfigError, match="n_samples"):
        synthetic.generate(small_cfg(n_samples=0), tmp_path / "y", seed=0)
