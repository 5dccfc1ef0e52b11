"""Preprocessing: gene selection, normalisation, tiles, the pipeline and `prepare` (fakes).

Expected numbers are computed by hand in the comments.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.data.section import Sample, Section
from asign_jax.errors import ConfigError, DataError, RunFolderError
from asign_jax.preprocess.genes import mean_expression, select_genes
from asign_jax.preprocess.normalize import normalize
from asign_jax.preprocess.prepare import prepare_samples, rank_sections, section_summary
from asign_jax.preprocess.prepared import PreparedSample, list_prepared
from asign_jax.preprocess.tiles import (assign_tiles, check_spots_inside, region_global,
                                        tile_counts)

ln = np.log


def make_section(name, genes, counts, pixel_xy=None, image_path=None, array_xy=None):
    counts = np.asarray(counts, dtype=np.float32)
    n = len(counts)
    pixel_xy = np.zeros((n, 2)) if pixel_xy is None else np.asarray(pixel_xy, dtype=float)
    array_xy = (np.stack([np.arange(n), np.zeros(n)], 1) if array_xy is None
                else np.asarray(array_xy, dtype=float))
    return Section(name=name, image_path=image_path,
                   spot_ids=np.array([f"{name}_{i}" for i in range(n)]),
                   array_xy=array_xy, pixel_xy=pixel_xy, counts=counts,
                   genes=np.array(genes))


# ------------------------------------------------------------------------------- genes
def test_select_genes_equal_section_weight_and_ties():
    # A: g1 mean (1+3)/2=2, g2 0, g3 4.   B: g3 0, g1 2, g2 (6+0+0)/3=2.
    # averaged: g1 2, g2 1, g3 2  (spot-weighted would give g3 8/5=1.6, g1 2, g2 1.2)
    a = make_section("A", ["g1", "g2", "g3", "gx"], [[1, 0, 4, 9], [3, 0, 4, 9]])
    b = make_section("B", ["g3", "g1", "g2", "gy"], [[0, 2, 6, 1], [0, 2, 0, 1], [0, 2, 0, 1]])
    np.testing.assert_allclose(mean_expression([a, b], np.array(["g1", "g2", "g3"])),
                               [2.0, 1.0, 2.0])
    # g1 and g3 tie at 2 -> name order
    assert select_genes([a, b], 2).tolist() == ["g1", "g3"]
    assert select_genes([b, a], 3).tolist() == ["g1", "g3", "g2"]
    with pytest.raises(DataError, match="only 3 genes"):
        select_genes([a, b], 4)
    # data.gene_selection_sections: the ranking reads the listed sections only (genes must
    # still be common to all): B alone ranks g1 = g2 = 2 > g3 = 0
    assert select_genes([a, b], 2, rank_sections([a, b], "B")).tolist() == ["g1", "g2"]
    assert rank_sections([a, b], "") is None
    with pytest.raises(ConfigError, match="gene_selection_sections.*'C'"):
        rank_sections([a, b], "B, C")


# ------------------------------------------------------------------------------- normalise
def test_normalize_asign():
    y = normalize(np.array([[1, 0, 3], [0, 0, 0]]), "asign")
    # row 0: (c+1) = 2,1,4 sum 7; row 1: 1,1,1 sum 3
    np.testing.assert_allclose(y, ln([[2 / 7, 1 / 7, 4 / 7], [1 / 3, 1 / 3, 1 / 3]]),
                               rtol=1e-6)
    assert y.dtype == np.float32


def test_normalize_triplex_and_zero_total():
    y = normalize(np.array([[1, 0, 3], [0, 0, 0]]), "triplex")
    # row 0 total 4: log1p(1e4 * 1/4), 0, log1p(1e4 * 3/4); row 1 total 0 -> zeros
    np.testing.assert_allclose(y, [[np.log1p(2500), 0, np.log1p(7500)], [0, 0, 0]], rtol=1e-6)
    assert np.isfinite(y).all()


def test_normalize_triplex_smoothing():
    # a=(0,0) [1,1] -> log1p(5000) twice; b=(1,1) [1,0] -> log1p(1e4), 0; c=(3,0) zeros.
    # a's and b's 3x3 boxes hold {a, b}; c's box holds only c.
    counts = np.array([[1, 1], [1, 0], [0, 0]])
    xy = np.array([[0, 0], [1, 1], [3, 0]])
    y = normalize(counts, "triplex", array_xy=xy, smooth=True)
    m = [(np.log1p(5000) + np.log1p(1e4)) / 2, np.log1p(5000) / 2]
    np.testing.assert_allclose(y, [m, m, [0, 0]], rtol=1e-6)


def test_normalize_stnet_uses_all_gene_totals():
    # ln((1+c) / (n_all + total_all)) = ln([2,1,4] / (5 + 10))
    y = normalize(np.array([[1, 0, 3]]), "stnet", all_totals=np.array([10.0]), n_all_genes=5)
    np.testing.assert_allclose(y, ln([[2 / 15, 1 / 15, 4 / 15]]), rtol=1e-6)
    with pytest.raises(ValueError, match="all_totals"):
        normalize(np.array([[1, 0, 3]]), "stnet")


def test_normalize_bad_names():
    with pytest.raises(ConfigError, match="asign, triplex, stnet"):
        normalize(np.ones((1, 2)), "cpm")
    with pytest.raises(ConfigError, match="triplex"):
        normalize(np.ones((1, 2)), "asign", smooth=True)


# ------------------------------------------------------------------------------- tiles
def test_assign_tiles_hand_computed():
    xy = np.array([[10, 10], [600, 20], [100, 700], [1100, 1100], [511.9, 0], [512, 0]])
    # 512 grid (i, j): (0,0) (1,0) (0,1) (2,2) (0,0) (1,0); row-major order (j, i)
    origins, tile = assign_tiles(xy, 512)
    assert origins.tolist() == [[0, 0], [512, 0], [0, 512], [1024, 1024]]
    assert tile.tolist() == [0, 1, 2, 3, 0, 1] and tile.dtype == np.int32
    g_origins, g_tile = assign_tiles(xy, 1024)
    assert g_origins.tolist() == [[0, 0], [1024, 1024]]
    assert g_tile.tolist() == [0, 0, 0, 1, 0, 0]
    assert region_global(origins, 512, g_origins, 1024).tolist() == [0, 0, 0, 1]
    with pytest.raises(ConfigError, match="multiple"):
        region_global(origins, 512, g_origins, 768)
    counts = np.array([[1, 0], [2, 1], [3, 3], [4, 0], [5, 5], [6, 1]])
    # tile 0 = spots 0,4; tile 1 = spots 1,5; tile 2 = spot 2; tile 3 = spot 3
    assert tile_counts(counts, tile, 4).tolist() == [[6, 5], [8, 2], [3, 3], [4, 0]]


def test_tiles_contain_their_spots():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 3000, size=(500, 2))
    for size in (512, 1024):
        origins, tile = assign_tiles(xy, size)
        lo = origins[tile]
        assert ((lo <= xy) & (xy < lo + size)).all()
        assert len(np.unique(origins, axis=0)) == len(origins) == len(np.unique(tile))
    ro, rt = assign_tiles(xy, 512)
    go, gt = assign_tiles(xy, 1024)
    rg = region_global(ro, 512, go, 1024)
    assert (rg[rt] == gt).all()  # a spot's region tile lies in the spot's global tile


def test_spots_outside_image():
    check_spots_inside(np.array([[999.5, 799.9], [0, 0]]), (800, 1000), "S1")
    for bad in ([1000, 5], [-0.5, 3], [5, 800]):
        with pytest.raises(DataError, match="section 'S1'.*1 of 2 spot centres"):
            check_spots_inside(np.array([[1, 1], bad]), (800, 1000), "S1")


# ------------------------------------------------------------------------------- pipeline
H, W = 700, 1100
# spot:      s0          s1          s2          s3           s4
PIX = [[150, 150], [400, 300], [600, 150], [1050, 650], [200, 600]]
# region (512): s0,s1 -> (0,0); s2 -> (1,0); s4 -> (0,1); s3 -> (2,1)
# order (j,i): [0,0] [512,0] [0,512] [1024,512]; spot_region [0,0,1,3,2]
# global (1024): s3 -> (1,0), others (0,0); spot_global [0,0,0,1,0]
# 224 patches leaving the 1100x700 image: s3 (x 938..1162) and s4 (y 488..712) -> 2
COUNTS_P = [[1, 0, 2, 5], [3, 0, 4, 0], [0, 1, 6, 0], [2, 0, 0, 0], [0, 0, 3, 1]]
# genes a,b,c,d; means P1=P2: a 1.2, b 0.2, c 3, d 1.2; Q1: a 2, b 0, c 1, d 0
# averaged over 3 sections: c 2.33, a 1.47, d 0.8, b 0.13 -> top 2 = [c, a]


class FakeExtractor:
    """Features from coordinates (D=3, T=2); records each call."""

    def __init__(self):
        self.calls = []

    def section_features(self, section_name, image, spot_xy, region_origin, global_origin,
                         data_cfg, cache_dir, spot_ids=None):
        assert len(spot_ids) == len(spot_xy) and str(spot_ids[0]).startswith(section_name)
        self.calls.append((section_name, image.shape, int(image[0, 0, 0]), Path(cache_dir)))

        def f(xy):
            return np.c_[np.asarray(xy, float), np.full(len(xy), image[0, 0, 0])]

        return {"spot_feats": f(spot_xy), "region_feats": f(region_origin),
                "region_tokens": np.repeat(f(region_origin)[:, None], 2, axis=1),
                "global_feats": f(global_origin),
                "global_tokens": np.repeat(f(global_origin)[:, None], 2, axis=1)}


def write_image(path, value, h=H, w=W):
    import cv2
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def fake_samples(tmp_path, q_pix=((100, 100), (900, 100))):
    p1 = make_section("P1", list("abcd"), COUNTS_P, PIX, write_image(tmp_path / "p1.png", 11))
    p2 = make_section("P2", list("abcd"), np.array(COUNTS_P)[::-1], PIX,
                      write_image(tmp_path / "p2.png", 22))
    q1 = make_section("Q1", list("dcabe"), [[0, 1, 2, 0, 100], [0, 1, 2, 0, 100]], q_pix,
                      write_image(tmp_path / "q1.png", 33))
    return [Sample("P", [p1, p2]), Sample("Q", [q1])]


def small_config(normalization="asign"):
    c = base_config()
    c.data.n_genes = 2
    c.data.normalization = normalization
    return c


def test_prepare_samples_asign(tmp_path):
    wd = tmp_path / "wd"
    ext = FakeExtractor()
    out = prepare_samples(fake_samples(tmp_path), small_config(), wd, extractor=ext)
    assert (wd / "prepared" / "genes.txt").read_text().split() == ["c", "a"]
    index = json.loads((wd / "prepared" / "index.json").read_text())
    assert index == {"samples": ["P", "Q"], "genes": ["c", "a"], "normalization": "asign",
                     "left_out": {}}
    assert list_prepared(wd) == ["P", "Q"]
    # each image read once, in order, with the feature cache dir
    assert [(c[0], c[1], c[2]) for c in ext.calls] == [("P1", (H, W, 3), 11),
                                                      ("P2", (H, W, 3), 22),
                                                      ("Q1", (H, W, 3), 33)]
    assert ext.calls[0][3] == wd / "cache" / "features"

    s = out[0].sections[0]
    assert (s.name, s.layer, out[0].sections[1].layer) == ("P1", 0, 1)
    # counts over [c, a]: s0 [2,1] s1 [4,3] s2 [6,0] s3 [0,2] s4 [3,0]
    np.testing.assert_array_equal(s.spot_counts, [[2, 1], [4, 3], [6, 0], [0, 2], [3, 0]])
    np.testing.assert_allclose(s.spot_labels[0], ln([3 / 5, 2 / 5]), rtol=1e-6)
    assert s.region_origin.tolist() == [[0, 0], [512, 0], [0, 512], [1024, 512]]
    assert s.spot_region.tolist() == [0, 0, 1, 3, 2]
    assert s.global_origin.tolist() == [[0, 0], [1024, 0]]
    assert s.spot_global.tolist() == [0, 0, 0, 1, 0]
    assert s.region_global.tolist() == [0, 0, 0, 1]
    # region sums: t0 = s0+s1 [6,4]; t1 = s2 [6,0]; t2 = s4 [3,0]; t3 = s3 [0,2]
    np.testing.assert_array_equal(s.region_counts, [[6, 4], [6, 0], [3, 0], [0, 2]])
    np.testing.assert_allclose(s.region_labels, ln([[7 / 12, 5 / 12], [7 / 8, 1 / 8],
                                                    [4 / 5, 1 / 5], [1 / 4, 3 / 4]]),
                               rtol=1e-6)
    # global sums: g0 = s0+s1+s2+s4 [15,4] -> (16, 5)/21; g1 = s3 [0,2] -> (1, 3)/4
    np.testing.assert_array_equal(s.global_counts, [[15, 4], [0, 2]])
    np.testing.assert_allclose(s.global_labels, ln([[16 / 21, 5 / 21], [1 / 4, 3 / 4]]),
                               rtol=1e-6)
    assert s.image_shape.tolist() == [H, W]
    np.testing.assert_array_equal(s.spot_feats[:, :2], np.array(PIX, np.float32))
    assert s.region_tokens.shape == (4, 2, 3) and s.region_tokens.dtype == np.float16
    assert section_summary("P", s, 224) == {"sample": "P", "section": "P1", "spots": 5,
                                           "region_tiles": 4, "global_tiles": 2,
                                           "padded_spots": 2}
    # saved = returned
    back = PreparedSample.load(wd, "P")
    assert back.genes.tolist() == ["c", "a"] and back.normalization == "asign"
    for k in ("spot_labels", "region_labels", "global_labels", "spot_region", "region_feats"):
        np.testing.assert_array_equal(getattr(back.sections[0], k), getattr(s, k))


def test_prepare_samples_stnet_tiles_use_all_gene_totals(tmp_path):
    out = prepare_samples(fake_samples(tmp_path), small_config("stnet"), tmp_path / "wd",
                          extractor=FakeExtractor())
    s = out[0].sections[0]
    # all-gene totals s0 8, s1 7, s2 7, s3 2, s4 4; 4 genes in the section
    # spot s0 [2,1]: ln([3,2] / (4+8)); region t0 [6,4], total 15: ln([7,5] / 19)
    # global g0 [15,4], total 8+7+7+4=26: ln([16,5] / 30)
    np.testing.assert_allclose(s.spot_labels[0], ln([3 / 12, 2 / 12]), rtol=1e-6)
    np.testing.assert_allclose(s.region_labels[0], ln([7 / 19, 5 / 19]), rtol=1e-6)
    np.testing.assert_allclose(s.global_labels[0], ln([16 / 30, 5 / 30]), rtol=1e-6)


def test_prepare_samples_triplex_smooths_spots_only(tmp_path):
    out = prepare_samples(fake_samples(tmp_path), small_config("triplex"), tmp_path / "wd",
                          extractor=FakeExtractor())
    cfg = small_config("triplex")
    cfg.data.smooth = True
    out_s = prepare_samples(fake_samples(tmp_path), cfg, tmp_path / "wd2",
                            extractor=FakeExtractor())
    a, b = out[0].sections[0], out_s[0].sections[0]
    # array_xy = (i, 0): spot 0's box holds spots 0 and 1
    np.testing.assert_allclose(b.spot_labels[0], (a.spot_labels[0] + a.spot_labels[1]) / 2,
                               rtol=1e-6)
    np.testing.assert_array_equal(a.region_labels, b.region_labels)
    # region t0 [6,4] total 10: log1p(1e4 * [0.6, 0.4])
    np.testing.assert_allclose(a.region_labels[0], np.log1p([6000, 4000]), rtol=1e-6)


def test_prepare_samples_spot_outside_image(tmp_path):
    samples = fake_samples(tmp_path, q_pix=((100, 100), (1100, 100)))  # x == W
    with pytest.raises(DataError, match="section 'Q1'.*outside"):
        prepare_samples(samples, small_config(), tmp_path / "wd", extractor=FakeExtractor())


# ------------------------------------------------------------------------------- prepare()
def test_prepare_orchestration_with_fakes(tmp_path, monkeypatch, capsys):
    from asign_jax import stages
    from asign_jax.preprocess import prepare as prepare_mod

    seen = {}

    def load_samples(config, dropped=None):
        seen["root"] = config.data.root
        return fake_samples(tmp_path)

    def generate(cfg, root, seed):
        seen["generate"] = (Path(root), seed)

    registered = []
    monkeypatch.setattr(stages, "load_samples", load_samples)
    monkeypatch.setattr(stages, "generate", generate)
    monkeypatch.setattr(prepare_mod, "make_extractor", lambda cfg: FakeExtractor())
    monkeypatch.setattr(stages, "register_sample",
                        lambda p, c, w, ground_truth=None: registered.append((p.sample_id, Path(w))))
    prepare = stages.prepare

    cfg = small_config()
    cfg.data.format = "synthetic"
    cfg.seed = 7
    wd = tmp_path / "wd"
    prepare(cfg, wd)
    assert seen["generate"] == (wd / "synthetic_data", 7)
    assert seen["root"] == str(wd / "synthetic_data")
    assert cfg.data.root == ""                      # caller's config untouched
    assert registered == [("P", wd), ("Q", wd)]     # Q (one section) gets identity coordinates
    text = capsys.readouterr().out
    assert "P1" in text and "first c, last a" in text
    row = [line.split() for line in text.splitlines() if line.startswith("P ")][0]
    assert row == ["P", "P1", "5", "4", "2", "2"]

    registered.clear()
    seen.clear()
    prepare(cfg, wd)                                # both stages match: reused, nothing redone
    assert registered == [] and seen == {}
    cfg.data.n_genes = 1
    with pytest.raises(RunFolderError, match="was made with data.n_genes=2; you asked for 1"):
        prepare(cfg, wd, skip_registration=True)
    prepare(cfg, wd, skip_registration=True, overwrite=True)
    assert registered == [] and not (wd / "registration").exists()     # deleted, not redone


def test_stnet_totals_survive_gene_intersection():
    """ST-Net normalisation divides by the total over ALL genes of the file, not the kept ones."""
    from asign_jax.data.section import Section
    counts = np.array([[1, 2, 7], [0, 4, 4]], dtype=np.float32)
    sec = Section("X1", None, np.array(["1x1", "2x1"]), np.zeros((2, 2)), np.zeros((2, 2)),
                  counts, np.array(["a", "b", "c"]))
    sub = sec.subset_genes(np.array(["b"])).subset_genes(np.array(["b"]))
    np.testing.assert_array_equal(sub.total_counts, [10.0, 8.0])
    assert sub.n_all_genes == 3
    from asign_jax.preprocess.normalize import normalize
    out = normalize(sub.counts, "stnet", all_totals=sub.total_counts, n_all_genes=sub.n_all_genes)
    np.testing.assert_allclose(out[:, 0], np.log([3 / 13, 5 / 11]), rtol=1e-6)
