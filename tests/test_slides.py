"""Whole-slide images, microns and the HEST-1k layout (data.slide, data.working, data.hest)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from asign_jax.config import base_config
from asign_jax.data import hest, loaders, pixel_size, pyramid, slide
from asign_jax.data.lattice import PITCH_UM
from asign_jax.errors import DataError
from asign_jax.features.patches import crop_patches


def _noise(h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)


def test_um_px_conversion_and_her2st_sizes():
    c = base_config()
    assert c.data.um_per_px == slide.HER2ST_UM_PER_PX == 0.6875
    assert pixel_size.px_to_um(c.data.spot_size, c.data.um_per_px) == 154.0
    assert pixel_size.um_to_px(154.0, 0.6875) == 224.0
    assert pixel_size.um_to_px(154.0, 0.25) == 616.0          # a 40x slide: 616 level-0 px
    # HER2ST's ST lattice: ~291 px between array neighbours = 200 um
    assert abs(291 * 0.6875 - PITCH_UM["square"]) < 1.0


def test_tiff_slide_levels_region_reads_and_level_choice(tmp_path):
    img = _noise(500, 600)
    p = pyramid.write_pyramid_tiff(tmp_path / "s.tif", img, 0.5, tile=128)
    s = slide.open_slide(p)
    assert s.backend == "tifffile" and s.size == (600, 500)
    assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
    assert s.um_per_px == pytest.approx(0.5)
    assert np.array_equal(s.read_region(0, (10, 20, 110, 70)), img[20:70, 10:110])
    # the coarsest level whose pixels are not larger than requested; level 0 when none fits
    assert [s.best_level(d) for d in (0.5, 1.0, 1.9, 2.0, 3.9, 4.0, 50.0)] == [0, 0, 0, 1, 1, 2, 2]
    # at scale 1 the region-read patches equal crop_patches on the decoded image, border too
    w = slide.WorkingImage(s, 1.0)
    centres = np.array([[3.0, 4.0], [599.0, 499.0], [300.2, 250.7], [0.0, 499.0]])
    assert np.array_equal(w.crop_patches(centres, 64), crop_patches(img, centres, 64))
    assert np.array_equal(crop_patches(w, centres, 64), crop_patches(img, centres, 64))
    # at scale 2 a working pixel is a level-1 pixel: read from level 1, not from level 0
    w2 = slide.WorkingImage(s, 2.0)
    assert w2.shape == (250, 300, 3)
    lvl1 = s.read_region(1, (0, 0, 300, 250))
    assert np.array_equal(w2.read_working(40, 30, 72, 62), lvl1[30:62, 40:72])
    rgb, hw, to_small = w2.read_small(100)
    assert hw == (250, 300) and max(rgb.shape[:2]) == 100
    h, w = rgb.shape[:2]            # pixel-centre exact: small = (working + 0.5) * ratio - 0.5
    np.testing.assert_allclose(to_small @ [299.5, 249.5, 1],
                               [300 * w / 300 - 0.5, 250 * h / 250 - 0.5, 1], atol=1e-9)


def test_bad_slides_raise_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(DataError, match="broken.tif"):
        slide.open_slide(bad)
    svs = tmp_path / "slide.svs"
    svs.write_bytes(b"not a slide")
    with pytest.raises(DataError, match="slide.svs"):
        slide.open_slide(svs)
    with pytest.raises(DataError, match="does not exist"):
        slide.open_slide(tmp_path / "absent.tif")
    p = pyramid.write_pyramid_tiff(tmp_path / "s.tif", _noise(300, 300), None, tile=128)
    s = slide.open_slide(p)
    with pytest.raises(DataError, match=r"s\.tif: level 5 missing"):
        s.read_region(5, (0, 0, 10, 10))
    with pytest.raises(DataError, match=r"s\.tif: region .* outside level 0"):
        s.read_region(0, (250, 250, 310, 260))
    with pytest.raises(DataError, match=r"s\.tif: 1 of 2 spot centres lie outside"):
        pixel_size.check_spots_in_slide(p, np.array([[10.0, 10.0], [10.0, 300.0]]), s.size)
    assert s.um_per_px is None
    with pytest.raises(DataError, match=r"s\.tif: no pixel size"):
        pixel_size.resolve_um_per_px(p, s, 0.0, None, None)
    assert pixel_size.resolve_um_per_px(p, s, 0.0, 0.25, None) == (0.25, "dataset metadata")
    assert pixel_size.resolve_um_per_px(p, s, 0.3, 0.25, None)[0] == 0.3
    pixel_size.check_lattice_pixel_size(p, 400.0, 0.5, 200.0)         # 200 um: fine
    pixel_size.check_lattice_pixel_size(p, 400.0, 0.59, 200.0)        # 18 % off: fine
    with pytest.raises(DataError, match=r"s\.tif: pixel size 0.65 .*more than 20%"):
        pixel_size.check_lattice_pixel_size(p, 400.0, 0.65, 200.0)


# ---------------------------------------------------------------------------- HEST

GENES = ["ERBB2", "GNAS", "FASN", "ACTB", "MT1"]


def write_hest_sample(root: Path, sid: str, *, patient="P", order=None, mpp=0.34375,
                      pitch_px=None, seed=0, size=(700, 800), spot_shift=(0.0, 0.0)):
    """One HEST sample: a 4 x 3 square lattice (pitch 200 um at ``mpp``), image ``size``."""
    import anndata
    import scipy.sparse as sp
    pitch = pitch_px or 200.0 / mpp / 4          # 4 sub-steps so the lattice fits the image
    grid = [(x, y) for y in range(3) for x in range(4)]
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, (len(grid), len(GENES))).astype(np.float32)
    xy = np.array([[100 + pitch * x, 120 + pitch * y] for x, y in grid]) + spot_shift
    obs = pd.DataFrame({"array_col": [g[0] for g in grid], "array_row": [g[1] for g in grid]},
                       index=pd.Index([f"{sid}_{i}" for i in range(len(grid))], dtype=object))
    ad = anndata.AnnData(X=sp.csr_matrix(counts), obs=obs,
                         var=pd.DataFrame(index=pd.Index(GENES, dtype=object)))
    ad.obsm["spatial"] = xy
    (root / "st").mkdir(parents=True, exist_ok=True)
    ad.write_h5ad(root / "st" / f"{sid}.h5ad")
    pyramid.write_pyramid_tiff(root / "wsis" / f"{sid}.tif", _noise(*size, seed=seed), None,
                             tile=128)
    meta = {"id": sid, "patient": patient, "pixel_size_um_estimated": mpp,
            "inter_spot_dist": pitch * mpp,
            "spot_diameter": 25.0, "st_technology": "Spatial Transcriptomics",
            "organ": "Breast"}
    if order is not None:
        meta["section_order"] = order
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
    return counts, xy


def hest_config(root, sections="", flt=""):
    c = base_config()
    c.data.format, c.data.root, c.data.sections, c.data.hest_filter = "hest", str(root), \
        sections, flt
    return c


def test_hest_reader_groups_orders_and_converts_to_working_px(tmp_path):
    root = tmp_path / "hest"
    c1, xy1 = write_hest_sample(root, "S1", order=1, seed=1)
    c0, xy0 = write_hest_sample(root, "S0", order=0, seed=2)
    write_hest_sample(root, "Q9", patient="Q", seed=3)
    pd.DataFrame({"id": ["S1", "S0", "Q9"], "patient": ["P", "P", "Q"],
                  "organ": ["Breast", "Breast", "Bowel"]}).to_csv(root / "HEST_v1_1_0.csv",
                                                                  index=False)
    samples = loaders.load_samples(hest_config(root, "S1,S0,Q9"))
    assert [s.sample_id for s in samples] == ["P", "Q"]
    p = samples[0]
    assert [x.name for x in p.sections] == ["S0", "S1"]          # metadata section_order
    s0 = p.sections[0]
    # 0.34375 um/px slides, 0.6875 um/px working: 2 slide px per working px
    assert s0.image_scale == 2.0 and s0.um_per_px == 0.34375
    np.testing.assert_allclose(s0.pixel_xy, xy0 / 2)
    np.testing.assert_array_equal(s0.counts.toarray(), c0)      # sparse in the h5ad: kept CSR
    assert s0.read_image().shape == (350, 400, 3)
    # explicit groups keep the given order; the filter selects from the CSV
    g = loaders.load_samples(hest_config(root, "B:S1,S0"))
    assert [x.name for x in g[0].sections] == ["S1", "S0"] and g[0].sample_id == "B"
    f = loaders.load_samples(hest_config(root, "", "organ=bowel"))
    assert [(s.sample_id, [x.name for x in s.sections]) for s in f] == [("Q", ["Q9"])]


def test_hest_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / "hest"
    write_hest_sample(root, "OUT", spot_shift=(0.0, 600.0))
    with pytest.raises(DataError, match=r"OUT\.tif: .* spot centres lie outside"):
        loaders.load_samples(hest_config(root, "OUT"))
    write_hest_sample(root, "MPP", mpp=0.34375, pitch_px=200.0 / 0.34375 / 4)
    meta = json.loads((root / "metadata" / "MPP.json").read_text())
    meta["pixel_size_um_estimated"] = 0.5                        # 45 % off the lattice
    (root / "metadata" / "MPP.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"MPP\.tif: pixel size 0.5 .*lattice's pitch"):
        loaders.load_samples(hest_config(root, "MPP"))
    write_hest_sample(root, "NOMPP")
    meta = json.loads((root / "metadata" / "NOMPP.json").read_text())
    del meta["pixel_size_um_estimated"]
    (root / "metadata" / "NOMPP.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"NOMPP\.tif: no pixel size"):
        loaders.load_samples(hest_config(root, "NOMPP"))
    with pytest.raises(DataError, match=r"st.*absent\.h5ad"):
        loaders.load_samples(hest_config(root, "absent"))
    with pytest.raises(DataError, match="HEST_v1"):
        loaders.load_samples(hest_config(root, "", "patient=P"))


# ------------------------------------------------- HER2ST -> HEST gives the same prepared data

def _write_her2st(root: Path, name: str, seed: int):
    grid = [(x, y) for y in range(2, 7) for x in range(2, 8)]
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 25, (len(grid), 6))
    genes = [f"G{i}" for i in range(6)]
    (root / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (root / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "ST-cnts" / f"{name}.tsv.gz", "wt") as f:
        f.write("\t" + "\t".join(genes) + "\n")
        for (x, y), row in zip(grid, counts):
            f.write(f"{x}x{y}\t" + "\t".join(map(str, row)) + "\n")
    lines = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
    lines += [f"{x}\t{y}\t{x}\t{y}\t{100 * x + 3.3}\t{100 * y - 40.6}\t1" for x, y in grid]
    (root / "ST-spotfiles" / f"{name}_selection.tsv").write_text("\n".join(lines) + "\n")
    folder = root / "ST-imgs" / name[0] / name
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.jpg"), _noise(760, 900, seed)[..., ::-1])


class PatchExtractor:
    """Features = per-channel means and a pixel checksum of every patch (so equal features
    mean pixel-identical patches); D = 4, T = 1."""

    def section_features(self, name, image, spot_xy, region_origin, global_origin, data_cfg,
                         cache_dir=None, spot_ids=None):
        def f(centres, size):
            p = crop_patches(image, centres, size).astype(np.float64)
            return np.c_[p.mean((1, 2)), (p * np.arange(size)[None, :, None, None]).sum((1, 2, 3))
                         % 9973]
        r, g = int(data_cfg.region_size), int(data_cfg.global_size)
        out = {"spot_feats": f(spot_xy, int(data_cfg.spot_size)),
               "region_feats": f(np.asarray(region_origin) + r // 2, r),
               "global_feats": f(np.asarray(global_origin) + g // 2, g)}
        for k in ("region", "global"):
            out[f"{k}_tokens"] = out[f"{k}_feats"][:, None]
        return out


def test_her2st_converted_to_hest_prepares_the_same_arrays(tmp_path):
    import importlib.util
    from asign_jax.preprocess.prepare import prepare_samples
    from asign_jax.registration.preprocess import load_section
    from asign_jax.registration.stack import section_image

    her = tmp_path / "her2st"
    for i, n in enumerate(("C1", "C2")):
        _write_her2st(her, n, i)
    spec = importlib.util.spec_from_file_location(
        "to_hest", Path(__file__).resolve().parents[1] / "experiments" / "to_hest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "hest"
    src = base_config()
    src.data.root, src.data.sections = str(her), "C1,C2"
    # 100 px between array neighbours = 200 um: 2 um/px (working resolution too: scale 1)
    mod.convert(src, out, 2.0)

    def cfg(fmt, root):
        c = base_config()
        c.data.format, c.data.root, c.data.sections = fmt, str(root), "C1,C2"
        c.data.n_genes, c.data.um_per_px = 4, 2.0
        c.data.spot_size, c.data.region_size, c.data.global_size = 64, 128, 256
        return c

    a = prepare_samples(loaders.load_samples(cfg("her2st", her)), cfg("her2st", her),
                        tmp_path / "wa", extractor=PatchExtractor())
    b_samples = loaders.load_samples(cfg("hest", out))
    assert b_samples[0].sections[0].image_scale == 1.0
    b = prepare_samples(b_samples, cfg("hest", out), tmp_path / "wb", extractor=PatchExtractor())
    assert list(a[0].genes) == list(b[0].genes)
    for sa, sb in zip(a[0].sections, b[0].sections):
        for k in ("pixel_xy", "array_xy", "spot_labels", "region_labels", "global_labels",
                  "region_origin", "spot_region", "spot_feats", "region_feats", "global_feats",
                  "image_shape"):
            np.testing.assert_array_equal(getattr(sa, k), getattr(sb, k), err_msg=k)
        # registration sees the same thumbnail: the TIFF's levels are the JPEG's reductions
        ia, ib = load_section("a", section_image(sa), 200), load_section("b", section_image(sb), 200)
        assert np.array_equal(ia.rgb, ib.rgb) and np.allclose(ia.to_small, ib.to_small)


def test_impute_manifest_accepts_hest_sections(tmp_path):
    from asign_jax.block import sources
    from asign_jax.block.manifest import load_manifest
    root = tmp_path / "hest"
    counts, xy = write_hest_sample(root, "H1", mpp=0.6875)
    write_hest_sample(root, "H2", mpp=0.25, seed=4)
    (tmp_path / "m.yaml").write_text(
        "sample: H\nsections:\n"
        "  - {name: H1, image: hest/wsis/H1.tif, st: {format: hest, root: hest}}\n"
        "  - {name: H2, image: hest/wsis/H2.tif, st: {format: hest, root: hest}}\n"
        "  - {name: H3, image: hest/wsis/H2.tif}\n")
    m = load_manifest(tmp_path / "m.yaml")
    section, lattice = sources.read_measured(m.sections[0], base_config().data)
    np.testing.assert_array_equal(section.counts.toarray(), counts)
    np.testing.assert_allclose(section.pixel_xy, xy)
    assert section.image_scale == 1.0 and lattice.pitch == pytest.approx(200 / 0.6875 / 4)
    # a slide at another pixel size is read at the working resolution (2.75 px per working px)
    h2, lattice = sources.read_measured(m.sections[1], base_config().data)
    assert h2.image_scale == pytest.approx(2.75) and h2.um_per_px == 0.25
    np.testing.assert_allclose(h2.pixel_xy * 2.75, hest.read_section(root, "H2").pixel_xy)
    assert lattice.pitch * 0.6875 == pytest.approx(200 / 4)
    # an image-only slide: its size from the manifest (this TIFF has no resolution tags)
    with pytest.raises(DataError, match=r"H2\.tif: no pixel size .* manifest's um_per_px"):
        sources.image_scale(m.sections[2], base_config().data)
    assert sources.image_scale(dataclasses.replace(m.sections[2], um_per_px=0.25),
                               base_config().data) == pytest.approx(2.75)
    (tmp_path / "bad.yaml").write_text(
        "sections:\n  - {name: H1, image: hest/wsis/H1.tif, st: {format: hest, root: hest}}\n"
        "  - {name: H3, image: hest/wsis/H2.tif, um_per_px: -1}\n")
    with pytest.raises(DataError, match=r"bad.yaml: section 2 \('H3'\): um_per_px must be > 0"):
        load_manifest(tmp_path / "bad.yaml")


# ---------------------------------------------------------------------------- SpatialData

def test_volume_zarr_opens_and_lines_up(tmp_path):
    pytest.importorskip("spatialdata")
    import types

    import anndata
    import spatialdata
    from spatialdata.transformations import get_transformation

    from asign_jax.evaluation import spatialdata_out
    imgs = [pyramid.write_pyramid_tiff(tmp_path / f"s{i}.tif", _noise(300, 400, i), 0.6875,
                                     tile=128) for i in range(2)]
    secs = [types.SimpleNamespace(name=f"S{i}", image_path=str(p), image_scale=1.0)
            for i, p in enumerate(imgs)]
    xy = np.array([[10.0, 20.0], [50.5, 60.0], [200.0, 100.0], [30.0, 40.0], [390.0, 290.0]])
    layer = np.array([0, 0, 0, 1, 1])
    ad = anndata.AnnData(X=np.arange(10, dtype=np.float32).reshape(5, 2),
                         obs=pd.DataFrame({"layer": layer, "origin": pd.Categorical(
                             ["measured"] * 3 + ["virtual"] * 2)},
                             index=pd.Index([f"n{i}" for i in range(5)], dtype=object)),
                         var=pd.DataFrame(index=pd.Index(["A", "B"], dtype=object)))
    ad.obsm["spatial"] = xy
    ad.layers["measured"] = ad.X.copy()
    aff = np.array([np.eye(3), [[1, 0, 5.0], [0, 1, -3.0], [0, 0, 1]]])
    out = spatialdata_out.write_volume_zarr(tmp_path / "volume.zarr", ad, secs, aff, [0.0, 3.0],
                                            {"S0": 20.0, "S1": 20.0}, z_unit="um",
                                            image_long_side=256)
    sd = spatialdata.read_zarr(out)
    assert set(sd.images) == {"S0_he", "S1_he"} and set(sd.shapes) == {"S0_spots", "S1_spots"}
    table = sd.tables["table"]
    np.testing.assert_array_equal(table.X, ad.X)
    np.testing.assert_array_equal(table.layers["measured"], ad.layers["measured"])
    # a spot's circle centre is its obsm['spatial'], radius half the lattice diameter
    row = 4
    region, inst = table.obs["region"].iloc[row], int(table.obs["instance_id"].iloc[row])
    shp = sd.shapes[region]
    c = shp.geometry.loc[inst]
    assert region == "S1_spots" and (c.x, c.y) == tuple(table.obsm["spatial"][row])
    assert shp["radius"].loc[inst] == 10.0
    # coordinate systems: one per section + the shared block one with the registration affine
    t = get_transformation(shp, to_coordinate_system="block")
    np.testing.assert_allclose(t.to_affine_matrix(("x", "y"), ("x", "y")), aff[1])
    assert set(get_transformation(sd.images["S0_he"], get_all=True)) == {"S0", "block"}
    assert sd.attrs["z"] == {"S0": 0.0, "S1": 3.0}


def test_volume_zarr_skipped_without_spatialdata(tmp_path, monkeypatch, caplog):
    from asign_jax.evaluation import spatialdata_out
    monkeypatch.setattr(spatialdata_out, "available", lambda: False)
    assert spatialdata_out.write_volume_zarr(tmp_path / "v.zarr", None, [], None, [], {}) is None
    assert "spatialdata is not installed" in caplog.text and not (tmp_path / "v.zarr").exists()


# ---------------------------------------------------------------------------- Visium HD

def test_visium_hd_reader_bins_sparse_and_bad_input(tmp_path):
    import importlib.util

    import scipy.sparse as sp

    from asign_jax.data import visium_hd
    from asign_jax.preprocess.prepare import prepare_samples
    spec = importlib.util.spec_from_file_location(
        "vhd", Path(__file__).resolve().parents[1] / "experiments" / "visium_hd_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write(tmp_path / "hd", bins=400, genes=30, nnz_per_bin=5, um_per_px=0.5)
    c = base_config()
    c.data.format, c.data.root, c.data.n_genes = "visium_hd", str(tmp_path / "hd"), 6
    c.data.spot_size, c.data.region_size, c.data.global_size = 16, 64, 128
    samples = loaders.load_samples(c)
    s = samples[0].sections[0]
    assert s.n_spots == 400 and len(s.genes) == 30 and sp.isspmatrix_csr(s.counts)
    # 8 um bins at 0.5 um/px = 16 px; working 0.6875 um/px: 1.375 slide px per working px
    assert s.image_scale == pytest.approx(1.375) and s.pitch_um == 8.0
    np.testing.assert_allclose(s.pixel_xy[1] - s.pixel_xy[0], [16 / 1.375, 0.0])
    p = prepare_samples(samples, c, tmp_path / "w", extractor=mod.ZeroFeatures())[0].sections[0]
    assert p.spot_counts.shape == (400, 6) and isinstance(p.spot_counts, np.ndarray)
    full = s.counts.toarray()
    genes = list(s.genes)
    chosen = (tmp_path / "w" / "prepared" / "genes.txt").read_text().split()
    np.testing.assert_array_equal(p.spot_counts, full[:, [genes.index(g) for g in chosen]])
    with pytest.raises(Exception, match="data.bin_um=16|square_016um"):
        c.data.bin_um = 16
        loaders.load_samples(c)
    sf = tmp_path / "hd" / "S1" / "binned_outputs" / "square_008um" / "spatial" / \
        "scalefactors_json.json"
    sf.write_text(json.dumps({"microns_per_pixel": 2.0, "bin_size_um": 8.0}))
    c.data.bin_um = 8
    with pytest.raises(DataError, match=r"S1_full_image\.tif: pixel size 2 .*lattice's pitch"):
        loaders.load_samples(c)
    with pytest.raises(Exception, match="data.bin_um=3"):
        visium_hd.bin_folder(tmp_path / "hd" / "S1", 3)

def test_openslide_backend_reads_regions_and_pixel_size(tmp_path):
    openslide = pytest.importorskip("openslide")
    img = _noise(300, 350)
    p = pyramid.write_pyramid_tiff(tmp_path / "o.tif", img, 0.5, tile=128)
    s = slide.OpenSlideSlide(p, openslide.OpenSlide(str(p)))
    assert s.size == (350, 300) and s.um_per_px == pytest.approx(0.5)
    assert np.array_equal(s.read_region(0, (10, 20, 110, 70)), img[20:70, 10:110])
    with pytest.raises(DataError, match=r"o\.tif: level 3 missing"):
        s.read_region(3, (0, 0, 4, 4))


def test_hest_sections_prepare_with_the_histology_encoder(tmp_path):
    # a HEST slide at 0.34375 um/px is read lazily at the working 0.6875 um/px (WorkingImage,
    # scale 2); the histology descriptors read it box by box from the pyramid
    from asign_jax.preprocess.prepare import prepare_samples
    root = tmp_path / "hest"
    for i, sid in enumerate(("S0", "S1")):
        write_hest_sample(root, sid, order=i, seed=i + 1, size=(1400, 1600))
    c = hest_config(root, "S0,S1")
    c.features.encoder, c.data.n_genes = "histology", 4
    c.data.spot_size, c.data.region_size, c.data.global_size = 64, 128, 256
    samples = loaders.load_samples(c)
    assert samples[0].sections[0].image_scale == 2.0
    prepared = prepare_samples(samples, c, tmp_path / "w")
    for s in prepared[0].sections:
        assert s.spot_feats.shape[0] == 12 and np.isfinite(s.spot_feats).all()
        assert np.isfinite(s.global_tokens).all()
