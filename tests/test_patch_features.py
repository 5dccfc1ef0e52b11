"""TRIDENT / HEST patch-feature files: the pooling rule, bad input, the round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.errors import ConfigError, DataError
from asign_jax.features.encoders import make_extractor
from asign_jax.features.extract import FeatureExtractor, input_files
from asign_jax.features.patch_features import PatchFeatureReader, write_trident

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

IMAGE = np.zeros((128, 160, 3), np.uint8)           # H 128, W 160


def _grid_patches(d=4, size=32, seed=0):
    """A TRIDENT-like grid of 32 px patches over the 160 x 128 image (5 x 4 patches)."""
    tl = np.array([(x, y) for y in range(0, 128, size) for x in range(0, 160, size)])
    feats = np.random.default_rng(seed).normal(size=(len(tl), d)).astype(np.float32)
    return tl, feats


def _cfg(dirs, **kw):
    c = base_config()
    c.features.encoder = "patch_features"
    c.features.patch_features = ",".join(str(d) for d in dirs)
    c.features.token_grid = 2
    c.data.spot_size, c.data.region_size, c.data.global_size = 32, 64, 128
    for k, v in kw.items():
        c.features[k] = v
    return c


def _feat(tl, feats, x, y):
    return feats[int(np.flatnonzero((tl[:, 0] == x) & (tl[:, 1] == y))[0])]


def test_area_weighted_rule_and_tokens(tmp_path):
    tl, feats = _grid_patches()
    write_trident(tmp_path / "S1.h5", feats, tl, 32)
    c = _cfg([tmp_path])
    reader = make_extractor(c.features)
    assert isinstance(reader, PatchFeatureReader)
    assert input_files(c.features) == [tmp_path / "S1.h5"]     # tracked by the run folder
    # spot 0 coincides with the patch at (32, 0); spot 1's window [40, 72) x [16, 48) straddles
    # four patches: overlaps 24x16, 8x16 (top), 24x16, 8x16 (bottom)
    spots = np.array([[48.0, 16.0], [56.0, 32.0]])
    out = reader.section_features("S1", IMAGE, spots, [[0, 0], [64, 64]], [[0, 0]], c.data)
    np.testing.assert_array_equal(out["spot_feats"][0], _feat(tl, feats, 32, 0))
    assert (out["spot_tokens"][0] == feats[1].astype(np.float16)).all()
    p = {k: _feat(tl, feats, *k) for k in [(32, 0), (64, 0), (32, 32), (64, 32)]}
    want = (24 * p[32, 0] + 8 * p[64, 0] + 24 * p[32, 32] + 8 * p[64, 32]) / 64
    np.testing.assert_allclose(out["spot_feats"][1], want, rtol=1e-6, atol=1e-6)
    # token (0, 1) = cell [56, 72) x [16, 32): patch (32, 0) 8 px wide, (64, 0) 8 px wide
    np.testing.assert_allclose(out["spot_tokens"][1, 1].astype(np.float32),
                               (p[32, 0] + p[64, 0]) / 2, atol=2e-3)
    # a 64 px region tile on the grid = the mean of its four patches; its 2x2 tokens = them
    quad = [_feat(tl, feats, x, y) for y in (64, 96) for x in (64, 96)]
    np.testing.assert_allclose(out["region_feats"][1], np.mean(quad, 0), atol=1e-6)
    np.testing.assert_allclose(out["region_tokens"][1].astype(np.float32), quad, atol=2e-3)
    # the global tile (128 px) runs 32 px past the right border? no: W = 160; it is inside
    assert out["global_feats"].shape == (1, 4) and out["global_tokens"].shape == (1, 4, 4)


def test_hest_layout_and_patch_size_field(tmp_path):
    tl, feats = _grid_patches()
    with h5py.File(tmp_path / "s1.h5", "w") as f:     # HEST: embeddings + coords + barcodes
        f["embeddings"] = feats
        f["coords"] = tl
        f["barcodes"] = np.array([f"b{i}".encode() for i in range(len(tl))])
    spots, tiles = np.array([[48.0, 16.0]]), np.array([[0, 0]])
    with pytest.raises(DataError, match="features.patch_size_level0"):
        PatchFeatureReader(_cfg([tmp_path]).features).section_features(
            "S1", IMAGE, spots, tiles, tiles, _cfg([tmp_path]).data)
    c = _cfg([tmp_path], patch_size_level0=32)             # case-insensitive name match
    out = PatchFeatureReader(c.features).section_features("S1", IMAGE, spots, tiles, tiles,
                                                          c.data)
    np.testing.assert_array_equal(out["spot_feats"][0], _feat(tl, feats, 32, 0))


def test_bad_input_one_line_each(tmp_path):
    tl, feats = _grid_patches()
    a, b, c_, d = (tmp_path / n for n in "abcd")
    write_trident(a / "S1.h5", feats, tl, 32)
    write_trident(a / "S2.h5", feats[:, :3], tl, 32)           # another dimension
    write_trident(b / "S1.h5", feats, tl + [[0, 200]] * (np.arange(len(tl)) == 3)[:, None], 32)
    write_trident(c_ / "S1.h5", feats[:3], tl[:3], 32)          # covers the top-left only
    cfg = _cfg([a])
    tiles, spots = np.array([[0, 0]]), np.array([[16.0, 16.0]])

    def run(folder, section="S1", xy=spots, reader=None):
        r = reader or PatchFeatureReader(_cfg([folder]).features)
        return r.section_features(section, IMAGE, xy, tiles, tiles, cfg.data,
                                  spot_ids=["1x1"] * len(xy))

    reader = PatchFeatureReader(cfg.features)
    run(a, reader=reader)
    for folder, section, xy, pattern in [
            (a, "S9", spots, r"no patch-feature file for section 'S9'.*S1.h5"),
            (b, "S1", spots, r"b/S1.h5: 1 of 20 patches lie outside the 160x128"),
            (c_, "S1", np.array([[16.0, 16.0], [150.0, 100.0]]),
             r"c/S1.h5: section 'S1': 1 of 2 spots are less than 50% covered.*'1x1'")]:
        with pytest.raises(DataError, match=pattern) as e:
            run(folder, section, xy)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"a/S2.h5: feature dimension 3 differs from 4"):
        run(a, "S2", reader=reader)
    with pytest.raises(DataError, match="folder does not exist"):
        PatchFeatureReader(_cfg([d]).features)
    with pytest.raises(ConfigError, match="features.patch_features"):
        PatchFeatureReader(_cfg([]).features)


def test_trident_round_trip_equals_the_direct_encoder(tmp_path):
    """experiments/write_trident.py's files, read back: the direct encoder's features."""
    from write_trident import level_folders, write_section
    rng = np.random.default_rng(0)
    import cv2
    image = cv2.resize(rng.integers(0, 255, (6, 5, 3)).astype(np.uint8), (160, 192))
    c = base_config()
    c.features.update(spot_input=32, region_input=32, global_input=32, token_grid=1,
                      batch_size=4)
    c.data.spot_size, c.data.region_size, c.data.global_size = 32, 64, 128
    spots = np.array([[20.0, 20.0], [30.0, 24.0], [80.0, 96.0], [150.0, 185.0], [5.0, 100.0]])
    ex = FeatureExtractor(c.features)
    write_section(ex, "A1", image, spots, c.data, tmp_path)
    from asign_jax.preprocess.tiles import assign_tiles
    ro, go = assign_tiles(spots, 64)[0], assign_tiles(spots, 128)[0]
    direct = ex.section_features("A1", image, spots, ro, go, c.data)
    c.features.encoder = "patch_features"
    c.features.patch_features = ",".join(str(p) for p in level_folders(tmp_path, c.data).values())
    read = make_extractor(c.features).section_features("A1", image, spots, ro, go, c.data)
    for k in direct:           # overlapping spot patches (1 and 2) still get their own patch
        np.testing.assert_allclose(read[k].astype(np.float32), direct[k].astype(np.float32),
                                   rtol=1e-3 if "tokens" in k else 0, atol=1e-3 if
                                   "tokens" in k else 0, err_msg=k)
