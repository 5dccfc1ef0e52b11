"""The histology encoder (features/histology.py) on small rendered H&E images with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.data.section import Section
from asign_jax.features import histology_cells, histology_pixels
from asign_jax.features.encoders import make_extractor
from asign_jax.preprocess.prepare import prepare_section

H_OD = np.array([0.60, 0.72, 0.35])
E_OD = np.array([0.12, 0.88, 0.45])


def _unit(v):
    return np.asarray(v, float) / np.linalg.norm(v)


def _render(ch, ce, h_od=H_OD, e_od=E_OD):
    """(S, S) H and E concentrations -> (S, S, 3) uint8 RGB, OD = cH h_od + cE e_od."""
    od = ch[..., None] * _unit(h_od) + ce[..., None] * _unit(e_od)
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)


def _nuclei_fields(size=256, seed=0, n_target=60, radius=5):
    """Concentrations of a tissue with non-overlapping discs (nuclei) at random places;
    returns (cH, cE, number of discs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ce = 0.35 + 0.1 * cv2.GaussianBlur(rng.standard_normal((size, size)), (0, 0), 3) * 3
    ch = np.full((size, size), 0.08)
    centres = []
    while len(centres) < n_target:
        c = rng.uniform(radius + 2, size - radius - 2, 2)
        if all(np.hypot(*(c - d)) > 2 * radius + 4 for d in centres):
            centres.append(c)
    for x, y in centres:
        ch[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = 1.2
    return ch, np.clip(ce, 0.05, None), len(centres)


def test_nuclei_count_within_10_percent():
    ch, ce, n = _nuclei_fields()
    _, summary = histology_cells.section_cells(_render(ch, ce), cell=4)
    assert abs(summary["nuclei"] - n) <= 0.1 * n, (summary["nuclei"], n)


def test_touching_nuclei_are_split():
    size, r = 96, 6
    yy, xx = np.mgrid[:size, :size]
    ch = np.full((size, size), 0.08)
    for cx, cy in ((30, 30), (30 + 2 * r - 2, 30), (60, 70), (60, 70 + 2 * r - 2)):
        ch[(xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2] = 1.2
    labels = histology_pixels.segment_nuclei(ch, np.ones_like(ch, bool), threshold=0.6)
    assert labels.max() == 4


def test_stain_vectors_recovered_within_3_degrees():
    rng = np.random.default_rng(1)
    size = 200
    kind = rng.choice(3, (size, size), p=[0.3, 0.4, 0.3])     # H only | E only | both
    ch = rng.uniform(0.3, 1.2, (size, size)) * (kind != 1)
    ce = rng.uniform(0.3, 1.0, (size, size)) * (kind != 0)
    v, method = histology_pixels.stain_vectors(_render(ch, ce))
    assert method == "macenko"
    for got, want in ((v[0], H_OD), (v[1], E_OD)):
        angle = np.degrees(np.arccos(np.clip(_unit(got) @ _unit(want), -1, 1)))
        assert angle < 3.0, angle


def test_ruifrok_fallback_on_a_blank_image():
    v, method = histology_pixels.stain_vectors(np.full((32, 32, 3), 250, np.uint8))
    assert method == "ruifrok" and v.shape == (3, 3)


def _cfg(**kw):
    c = base_config()
    c.data.spot_size, c.data.region_size, c.data.global_size = 64, 128, 256
    c.features.encoder = "histology"
    c.features.histology_downsample = 1
    c.features.token_grid = 2
    for k, v in kw.items():
        setattr(c.features, k, v)
    return c


def _windows(size=256):
    xy = np.stack(np.meshgrid(np.arange(40, size - 30, 48), np.arange(40, size - 30, 48)),
                  -1).reshape(-1, 2).astype(float)
    return xy, np.array([[0, 0], [128, 0], [0, 128], [128, 128]]), np.array([[0, 0]])


def test_texture_invariant_to_a_stain_change_the_normalisation_removes():
    ch, ce, _ = _nuclei_fields(seed=2)
    c = _cfg(histology_standardize="none")
    ex = make_extractor(c.features)
    xy, ro, go = _windows()
    a = ex.describe("a", _render(ch, ce), xy, ro, go, c.data)
    # other stain hues and a 30 % darker staining: the same tissue
    b = ex.describe("b", _render(1.3 * ch, 1.3 * ce, [0.55, 0.76, 0.35], [0.18, 0.86, 0.47]),
                    xy, ro, go, c.data)
    names = histology_cells.DESCRIPTOR_NAMES
    tex = [i for i, n in enumerate(names) if n.startswith(("lbp_", "glcm_"))]
    for key in ("spot_feats", "region_feats"):
        fa, fb = a[key][:, tex], b[key][:, tex]
        assert np.abs(fa - fb).max() < 0.05 * max(1.0, np.abs(fa).max()), key
    nuc = names.index("nuclei_log_count")
    np.testing.assert_allclose(a["spot_feats"][:, nuc], b["spot_feats"][:, nuc], atol=0.2)


def test_output_shapes_tokens_and_determinism():
    ch, ce, _ = _nuclei_fields(seed=3)
    img = _render(ch, ce)
    c = _cfg()
    xy, ro, go = _windows()
    a = make_extractor(c.features).describe("s", img, xy, ro, go, c.data)
    b = make_extractor(c.features).describe("s", img, xy, ro, go, c.data)
    d = histology_cells.HISTOLOGY_DIM
    assert a["spot_feats"].shape == (len(xy), d) and a["spot_tokens"].shape == (len(xy), 4, d)
    assert a["region_tokens"].shape == (4, 4, d) and a["global_feats"].shape == (1, d)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.isfinite(a[k]).all()
    # per-section standardisation: zero mean / unit std over the section's spots
    np.testing.assert_allclose(a["spot_feats"].mean(0), 0, atol=1e-4)
    # token grid: a global tile's 2x2 tokens are its region tiles' windows (row-major)
    raw = make_extractor(_cfg(histology_standardize="none").features).describe(
        "s", img, xy, ro, go, c.data)
    np.testing.assert_allclose(raw["global_tokens"][0].astype(np.float32),
                               raw["region_feats"], rtol=2e-3, atol=2e-3)


def test_features_read_no_label(tmp_path):
    ch, ce, _ = _nuclei_fields(seed=4)
    path = tmp_path / "he.png"
    cv2.imwrite(str(path), cv2.cvtColor(_render(ch, ce), cv2.COLOR_RGB2BGR))
    xy, _, _ = _windows()
    c = _cfg()
    c.data.n_genes = 3
    ex = make_extractor(c.features)
    genes = np.array(["a", "b", "c"])
    out = []
    for seed in (0, 1):
        counts = np.random.default_rng(seed).poisson(5.0, (len(xy), 3)).astype(np.float32)
        s = Section(name="S", image_path=path, spot_ids=np.array([str(i) for i in range(len(xy))]),
                    array_xy=xy / 48, pixel_xy=xy, counts=counts, genes=genes)
        ps, _ = prepare_section(s, 0, genes, c.data, ex, tmp_path / f"cache{seed}")
        out.append(ps)
    assert not np.array_equal(out[0].spot_labels, out[1].spot_labels)
    np.testing.assert_array_equal(out[0].spot_feats, out[1].spot_feats)
    np.testing.assert_array_equal(out[0].region_tokens, out[1].region_tokens)


def test_cache_reused_and_keyed(tmp_path):
    ch, ce, _ = _nuclei_fields(seed=5)
    img = _render(ch, ce)
    c = _cfg()
    xy, ro, go = _windows()
    ex = make_extractor(c.features)
    a = ex.section_features("s", img, xy, ro, go, c.data, tmp_path)
    assert len(list(tmp_path.glob("s-*.npz"))) == 1
    b = ex.section_features("s", img, xy, ro, go, c.data, tmp_path)
    np.testing.assert_array_equal(a["spot_feats"], b["spot_feats"])
    make_extractor(_cfg(histology_cell=2).features).section_features(
        "s", img, xy, ro, go, c.data, tmp_path)
    assert len(list(tmp_path.glob("s-*.npz"))) == 2


@pytest.mark.parametrize("mode", ["bad"])
def test_bad_standardize_is_a_config_error(mode):
    from asign_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="histology_standardize"):
        make_extractor(_cfg(histology_standardize=mode).features)


def test_a_whole_slide_read_lazily_gives_the_array_features(tmp_path, monkeypatch):
    # a pyramidal TIFF seen through data.slide.WorkingImage (HEST / SVS sections) is read box by
    # box; at scale 1 the descriptors equal those of the decoded array, and the cache key is the
    # slide's identity (no bytes of a whole slide are hashed)
    from asign_jax.data import pyramid, slide
    ch, ce, _ = _nuclei_fields(seed=6)
    img = _render(ch, ce)
    pyramid.write_pyramid_tiff(tmp_path / "s.tif", img, None, tile=64)
    lazy = slide.WorkingImage(slide.open_slide(tmp_path / "s.tif"), 1.0)
    c = _cfg()
    xy, ro, go = _windows()
    ex = make_extractor(c.features)
    a = ex.describe("s", img, xy, ro, go, c.data)
    b = ex.section_features("s", lazy, xy, ro, go, c.data, tmp_path / "cache")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert ex.cache_key("s", lazy, xy, ro, go, c.data) != ex.cache_key("s", img, xy, ro, go,
                                                                        c.data)
    # downsampled, on a slide 2x finer than the working px whose coarser levels are another
    # reduction than an area average (every second pixel): the box is read at the working
    # level and area-averaged as the array is, so the descriptors are the array's exactly,
    # and no level finer than the working one is read
    c2 = _cfg(histology_downsample=2)
    ex2 = make_extractor(c2.features)
    a2 = ex2.describe("s", img, xy, ro, go, c2.data)
    coarser = [img[::2, ::2], img[::4, ::4]]
    pyramid.write_upsampled_pyramid(tmp_path / "f.tif", img, 2, 0.5, reductions=coarser,
                                    tile=64)
    fine = slide.WorkingImage(slide.open_slide(tmp_path / "f.tif"), 2.0)
    levels = set()
    read = slide.TiffSlide._read
    monkeypatch.setattr(slide.TiffSlide, "_read",
                        lambda self, level, *box: levels.add(level) or read(self, level, *box))
    b2 = ex2.describe("s", fine, xy, ro, go, c2.data)
    assert levels == {1}
    for k in a2:
        np.testing.assert_array_equal(a2[k], b2[k], err_msg=k)


def test_context_windows_append_the_neighbourhood_to_every_row():
    """features.histology_context: a row's own descriptors are unchanged, and the appended
    block of a side-S context is the descriptor of the S-wide window centred on the row (here:
    a spot centred on a region tile with S = the tile's side reads that tile's descriptors)."""
    ch, ce, _ = _nuclei_fields(seed=6)
    img = _render(ch, ce)
    d = histology_cells.HISTOLOGY_DIM
    xy, ro, go = _windows()
    xy = np.concatenate([xy, [[64.0, 64.0], [192.0, 192.0]]])    # region tiles 0 and 3's centres
    for mode in ("none", "section"):
        c0, c = _cfg(histology_standardize=mode), _cfg(histology_standardize=mode,
                                                       histology_context=(128, 256))
        a = make_extractor(c0.features).describe("s", img, xy, ro, go, c0.data)
        b = make_extractor(c.features).describe("s", img, xy, ro, go, c.data)
        assert make_extractor(c.features).dim == 3 * d
        for level in ("spot", "region", "global"):
            fb, tb = b[f"{level}_feats"], b[f"{level}_tokens"]
            assert fb.shape[1] == 3 * d and tb.shape[2] == 3 * d
            np.testing.assert_array_equal(fb[:, :d], a[f"{level}_feats"])
            np.testing.assert_array_equal(tb[..., :d], a[f"{level}_tokens"])
            # every token carries its row's context blocks
            np.testing.assert_array_equal(tb[..., d:], np.broadcast_to(
                fb[:, None, d:].astype(np.float16), tb[..., d:].shape))
        if mode == "none":
            np.testing.assert_allclose(b["spot_feats"][-2:, d:2 * d], a["region_feats"][[0, 3]],
                                       rtol=1e-5, atol=1e-5)
            # the global tile's 256-px context is the tile itself
            np.testing.assert_allclose(b["global_feats"][:, 2 * d:], a["global_feats"],
                                       rtol=1e-5, atol=1e-5)
        else:    # each context block is z-scored over the section's rows, like the own one
            np.testing.assert_allclose(b["spot_feats"][:, d:].mean(0), 0, atol=1e-3)


def test_bad_context_is_a_config_error():
    from asign_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="histology_context"):
        make_extractor(_cfg(histology_context=(0,)).features)
