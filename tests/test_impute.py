"""python -m asign_jax.impute: manifests and their errors, spot lattices and virtual grids, and a
tiny synthetic block (one section with ST, two image-only) imputed end to end.

The end-to-end block uses a small colour-statistics feature extractor instead of ResNet-50 (the
encoder has its own tests) and shares one compiled model between training, checkpoint loading
and fine-tuning.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from asign_jax.block import manifest as mf
from asign_jax.block import model as block_model
from asign_jax.block import sources, virtual
from asign_jax.block.run import impute_block
from asign_jax.config import base_config
from asign_jax.data import generic
from asign_jax.data.lattice import Lattice, fit_lattice, infer_lattice
from asign_jax.errors import ConfigError, DataError
from asign_jax.features.patches import crop_patches
from asign_jax.graph import io as graph_io
from asign_jax.models import factory
from asign_jax.registration.preprocess import load_section
from asign_jax.training import pools

ROOT = Path(__file__).resolve().parents[1]


def write_image(path, size=256, radius=80, seed=0):
    """A white slide with one pink disc of tissue (H&E-like) centred in the image."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 245, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < radius ** 2
    img[disc] = (np.array([200, 90, 160]) + rng.integers(-20, 20, (disc.sum(), 3))).clip(0, 255)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])
    return path


# ---- manifests ------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    for n in ("S1", "S2", "S3"):
        write_image(tmp_path / "img" / f"{n}.png")
    (tmp_path / "st").mkdir()
    for f in ("S2.tsv", "S2.csv"):
        (tmp_path / "st" / f).write_text("x\n")
    return tmp_path


def yaml_manifest(root, body):
    path = root / "block.yaml"
    path.write_text(body)
    return path


GOOD = """
sample: blk
thickness_um: 5
sections:
  - {name: S1, image: img/S1.png}
  - name: S2
    image: img/S2.png
    st: {format: generic, counts: st/S2.tsv, spots: st/S2.csv}
  - {name: S3, image: img/S3.png, spots_from: st/S2.csv}
"""


def test_manifest_yaml_and_csv(files):
    m = mf.load_manifest(yaml_manifest(files, GOOD))
    assert m.sample_id == "blk" and [s.name for s in m.sections] == ["S1", "S2", "S3"]
    assert m.measured == [1] and m.z() == [0.0, 5.0, 10.0]
    assert m.sections[1].st.counts == files / "st" / "S2.tsv"
    assert m.sections[2].spots_from == files / "st" / "S2.csv" and not m.sections[2].measured
    assert mf.load_manifest(yaml_manifest(files, GOOD), thickness_um=2.0).z()[2] == 4.0
    csv = files / "block.csv"
    csv.write_text("# a comment\nname,image,format,counts,spots\nS1,img/S1.png,,,\n"
                   "S2,img/S2.png,generic,st/S2.tsv,st/S2.csv\n")
    m = mf.load_manifest(csv)
    assert m.sample_id == "block" and m.measured == [1] and m.z() == [0.0, 1.0]


@pytest.mark.parametrize("body, match", [
    ("sections:\n  - {name: S1, image: img/S1.png}\n  - {name: S2, image: img/S2.png}\n",
     "no section carries ST"),
    (GOOD.replace("img/S3.png", "img/nowhere.png"), r"section 3 \('S3'\): image .*nowhere.png "
                                                    "does not exist"),
    (GOOD.replace("img/S3.png", "st/S2.tsv"), r"image .*S2.tsv cannot be read"),
    (GOOD.replace("counts: st/S2.tsv", "counts: st/gone.tsv"), r"count file .*gone.tsv does not"),
    (GOOD.replace("thickness_um: 5", "thickness: 5"), r"unknown key\(s\) \['thickness'\]"),
    (GOOD.replace("name: S3", "name: S1"), r"listed twice: \['S1'\]"),
    (GOOD.replace("thickness_um: 5", "thickness_um: -1"), "must be > 0"),
    (GOOD.replace("format: generic", "format: slideseq"), "st format 'slideseq'"),
    ("sections:\n  - name: S2\n    image: img/S2.png\n    st: {format: generic, counts: "
     "st/S2.tsv, spots: st/S2.csv}\n", "a block needs at least two"),
    ("sections:\n  - {name: S1}\n  - {name: S2, image: img/S2.png}\n", "no 'image'"),
])
def test_manifest_errors_name_the_file(files, body, match):
    with pytest.raises(DataError, match=match) as e:
        mf.load_manifest(yaml_manifest(files, body))
    assert str(files / "block.yaml") in str(e.value)


def test_manifest_csv_errors_and_missing_manifest(files):
    bad = files / "bad.csv"
    bad.write_text("section,img\nS1,img/S1.png\n")
    with pytest.raises(DataError, match="needs columns 'name' and 'image'"):
        mf.load_manifest(bad)
    with pytest.raises(DataError, match="manifest does not exist"):
        mf.load_manifest(files / "nothing.yaml")


def test_her2st_layout_with_absent_count_files(tmp_path):
    for n in ("C1", "C2", "C3"):
        write_image(tmp_path / "ST-imgs" / "C" / n / f"{n}_HE.jpg")
    (tmp_path / "ST-cnts").mkdir()
    (tmp_path / "ST-spotfiles").mkdir()
    (tmp_path / "ST-cnts" / "C2.tsv.gz").write_text("")
    (tmp_path / "ST-spotfiles" / "C2_selection.tsv").write_text("")
    m = mf.load_manifest(yaml_manifest(
        tmp_path, f"layout: {{format: her2st, root: {tmp_path}, sections: [C1, C2, C3]}}\n"))
    assert m.measured == [1] and m.sections[1].st.format == "her2st"
    assert m.sections[0].image.name == "C1_HE.jpg"


# ---- lattices and virtual grids -------------------------------------------------------------

def test_fit_lattice_square_and_visium_hex():
    k = np.stack(np.meshgrid(np.arange(6), np.arange(5), indexing="ij"), -1).reshape(-1, 2)
    rot = np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]])
    pixel = k @ (150 * rot).T + [300, 200]
    lat = fit_lattice(k, pixel, "square")
    assert lat.pitch == pytest.approx(150) and lat.spot_diameter == pytest.approx(75)
    assert lat.um_per_px == pytest.approx(200 / 150)
    np.testing.assert_allclose(lat.points(lat.index(pixel)), pixel, atol=1e-6)
    # Visium: (col, row) with col + row even; 100 px pitch, rows 100 * sqrt(3) / 2 apart
    rows, cols = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (rows + cols) % 2 == 0
    arr = np.stack([cols[keep], rows[keep]], 1).astype(float)
    px = np.stack([arr[:, 0] * 50 + 10, arr[:, 1] * 50 * np.sqrt(3) + 20], 1)
    hexl = fit_lattice(arr, px, "hex")
    assert hexl.kind == "hex" and hexl.pitch == pytest.approx(100)
    assert hexl.spot_diameter == pytest.approx(55)
    inferred = infer_lattice(px + np.random.default_rng(0).normal(0, 2, px.shape))
    assert inferred.kind == "hex" and inferred.pitch == pytest.approx(100, rel=0.02)
    assert infer_lattice(pixel).kind == "square"


def _neighbours(xy, pitch):
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d, (np.abs(d - pitch) < 0.02 * pitch)


@pytest.mark.parametrize("kind", ["square", "hex"])
def test_virtual_grid_pitch_lattice_and_tissue(tmp_path, kind):
    size, radius, pitch = 600, 200, 40.0
    secs = [load_section(n, cv2.imread(str(write_image(tmp_path / f"{n}.png", size, radius)))
                         [..., ::-1], 300) for n in ("M", "V")]
    if kind == "square":
        basis = pitch * np.eye(2)
    else:
        basis = pitch * np.array([[1.0, 0.5], [0.0, np.sqrt(3) / 2]])
    lattice = Lattice(kind, np.array([13.0, 17.0]), basis)
    # the image-only section V is the measured one rotated by 20 degrees about the centre
    a = np.deg2rad(20)
    c = size / 2
    to_ref = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    to_ref[:2, 2] = c - to_ref[:2, :2] @ [c, c]
    frames = virtual.BlockFrames(["M", "V"], 0, np.stack([np.eye(3), to_ref]), secs, {})
    k, xy, lat_v = virtual.virtual_grid(frames, lattice, 0, 1)
    assert len(xy) > 50
    # on the tissue (the disc; mask borders are blurred by ~a pixel of the small image)
    assert np.all(np.linalg.norm(xy - c, axis=1) < radius + 4)
    # and every lattice point well inside the tissue is there
    all_k, all_xy = lat_v.points_in([0, 0], [size, size])
    inner = np.linalg.norm(all_xy - c, axis=1) < radius - 6
    assert set(map(tuple, all_k[inner])) <= set(map(tuple, k))
    # pitch and lattice type: interior spots have 4 (square) or 6 (hex) neighbours at the pitch
    d, at_pitch = _neighbours(xy, pitch)
    assert d.min() == pytest.approx(pitch, rel=1e-6)
    inner = np.linalg.norm(xy - c, axis=1) < radius - 2 * pitch
    assert set(at_pitch[inner].sum(1)) == {4 if kind == "square" else 6}
    # in the reference frame the grid is the measured section's lattice
    ref = xy @ to_ref[:2, :2].T + to_ref[:2, 2]
    np.testing.assert_allclose(ref, lattice.points(k), atol=1e-6)
    np.testing.assert_allclose(lattice.index(ref), k, atol=1e-6)


def test_nearest_measured_and_poor_sections():
    assert virtual.nearest_measured(0, [2, 4]) == 2 and virtual.nearest_measured(3, [2, 4]) == 2
    qc = {"sections": [{"name": "a", "dice_after": 0.99}, {"name": "b", "dice_after": 0.5},
                       {"name": "c", "dice_after": None}]}
    assert virtual.poor_sections(qc, 0.9) == ["b"]


def test_poor_registration_stops_unless_allowed(tmp_path, monkeypatch):
    imgs = [write_image(tmp_path / f"{n}.png") for n in ("A", "B")]
    qc = {"reference": "B", "sections": [
        {"name": "A", "inliers": 3, "method": "x", "dice_before": 0.4, "dice_after": 0.61,
         "tre_px": None},
        {"name": "B", "inliers": None, "method": "reference", "dice_before": 1.0,
         "dice_after": 1.0, "tre_px": None}]}

    class Res:
        reference, affines, sections, pairs, seconds = 1, np.tile(np.eye(3), (2, 1, 1)), [], {}, 1.0

    Res.qc = qc
    monkeypatch.setattr(virtual, "register_stack", lambda *a, **k: Res())
    cfg = base_config()
    with pytest.raises(DataError, match=r"below impute.min_dice=0.9 for \['A'\].*0.4->0.61"
                                        ".*--allow_poor_registration"):
        virtual.register_block("blk", imgs, ["A", "B"], [{}, {}], cfg)
    frames = virtual.register_block("blk", imgs, ["A", "B"], [{}, {}], cfg, allow_poor=True)
    assert frames.qc["sections"][0]["dice_after"] == 0.61


def test_generic_reader_and_spots_from(tmp_path):
    (tmp_path / "counts.tsv").write_text("\tg1\tg2\ns1\t1\t2\ns2\t0\t5\ns3\t3\t3\n")
    (tmp_path / "spots.csv").write_text("id,x,y,in_tissue\ns1,10,20,1\ns2,30,20,1\n"
                                        "s3,50,20,0\n")
    image = write_image(tmp_path / "img.png")
    section, has_array = generic.read_section("S", tmp_path / "counts.tsv",
                                              tmp_path / "spots.csv", image)
    assert not has_array and section.spot_ids.tolist() == ["s1", "s2"]
    np.testing.assert_array_equal(section.counts, [[1, 2], [0, 5]])
    entry = mf.SectionEntry("V", image)
    given = sources.read_spots_from(entry, tmp_path / "spots.csv")
    assert not given.has_counts and given.n_spots == 2 and given.subset_genes(["g1"]) is given
    (tmp_path / "bad.csv").write_text("id,x\ns1,3\n")
    with pytest.raises(DataError, match=r"bad.csv: spots_from file lacks column\(s\) \['y'\]"):
        sources.read_spots_from(entry, tmp_path / "bad.csv")
    (tmp_path / "far.csv").write_text("id,x,y\ns1,10,20\ns2,10,90000\n")   # a JPEG / PNG too
    with pytest.raises(DataError, match=r"far.csv: 1 of 2 spot centres lie outside the"):
        sources.read_spots_from(entry, tmp_path / "far.csv")


# ---- a tiny synthetic block end to end -------------------------------------------------------

class ColourFeatures:
    """Per patch: mean and std of RGB, and a coarse texture statistic (D = 9, T = 1)."""

    def section_features(self, name, image, spot_xy, region_origin, global_origin, data_cfg,
                         cache_dir, spot_ids=None):
        def feats(centres, size):
            p = crop_patches(image, centres, size).astype(np.float32) / 255
            return np.concatenate([p.mean((1, 2)), p.std((1, 2)),
                                   p[:, ::4, ::4].mean((1, 2)) ** 2], 1)
        s = feats(spot_xy, data_cfg.spot_size)
        r = feats(region_origin + data_cfg.region_size // 2, data_cfg.region_size)
        g = feats(global_origin + data_cfg.global_size // 2, data_cfg.global_size)
        return {"spot_feats": s, "region_feats": r, "region_tokens": r[:, None],
                "global_feats": g, "global_tokens": g[:, None]}


def tiny_config():
    c = base_config()
    c.synthetic.n_samples, c.synthetic.n_sections, c.synthetic.n_genes = 1, 3, 30
    c.synthetic.n_types, c.synthetic.image_size, c.synthetic.spot_pitch = 3, 768, 96
    c.data.n_genes = 12
    c.data.um_per_px = 200 / 96          # the synthetic array's 96 px pitch is ST's 200 µm
    c.registration.long_side = 384
    c.registration.ants_transform = "none"
    c.model.asign.hidden, c.model.asign.heads, c.model.asign.gat_layers = 8, 2, 1
    c.model.asign.cli_iterations, c.model.asign.transformer_mlp_ratio = 2, 1
    c.train.optimizer, c.train.learning_rate = "adam", 1e-2
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
    c.train.eval_genes = ("G000",)
    return c


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """The synthetic block A (A2 with ST; A1, A3 images only), imputed once."""
    from asign_jax.data.synthetic import generate

    root = tmp_path_factory.mktemp("impute")
    config = tiny_config()
    generate(config.synthetic, root / "data", seed=0)
    d = root / "data"
    img = {n: next((d / "ST-imgs" / "A" / n).glob("*.jpg")) for n in ("A1", "A2", "A3")}
    # A3's spot centres given by the user (its real array positions, no counts)
    sel = np.loadtxt(d / "ST-spotfiles" / "A3_selection.tsv", skiprows=1)
    (root / "spots").mkdir()
    (root / "spots" / "A3.csv").write_text("id,x,y\n" + "".join(
        f"s{i},{x},{y}\n" for i, (x, y) in enumerate(sel[:, 4:6])))
    manifest = yaml_manifest(root, f"""
sample: A
thickness_um: 4
sections:
  - {{name: A1, image: {img['A1']}}}
  - name: A2
    image: {img['A2']}
    st: {{format: her2st, root: {d}}}
  - {{name: A3, image: {img['A3']}}}
""")
    summary = impute_block(manifest, root / "out", config, extractor=ColourFeatures(),
                           spots_from=str(root / "spots"), progress=False)
    return {"root": root, "data": d, "manifest": manifest, "config": config,
            "summary": summary, "out": root / "out"}


@pytest.mark.slow
def test_block_imputes_end_to_end(block):
    import anndata as ad

    out, summary = block["out"], block["summary"]
    assert [r["origin"] for r in summary["sections"]] == ["virtual", "measured", "given"]
    assert summary["measured_unchanged"] and summary["model"]["source"] == "trained on the block"
    v = ad.read_h5ad(out / "volume.h5ad")
    n = [r["spots"] for r in summary["sections"]]
    assert v.n_obs == sum(n) and v.n_vars == 12 and all(x > 10 for x in n)
    assert list(v.obs["section"].cat.categories) == ["A1", "A2", "A3"]
    np.testing.assert_array_equal(v.obs["z"].to_numpy(), np.repeat([0.0, 4.0, 8.0], n))
    np.testing.assert_array_equal(v.obsm["spatial_3d"][:, 2], v.obs["z"].to_numpy())
    virtual_rows = v.obs["origin"].to_numpy() == "virtual"
    assert set(v.obs["spot_id"][virtual_rows]) == {"virtual"}
    assert v.obs_names[virtual_rows][0].startswith("A1_virtual_")
    given = v.obs["section"].to_numpy() == "A3"
    assert v.obs["spot_id"][given].tolist() == [f"s{i}" for i in range(given.sum())]
    assert np.isfinite(v.X).all() and np.isnan(v.layers["measured"][virtual_rows]).all()
    assert v.uns["normalization"]["method"] == "asign" and v.uns["z_unit"] == "um"
    assert v.uns["registration_qc"]["reference"] == "A2"
    assert json.loads(v.uns["model"]["trained_on"]) == ["A"]
    # measured spots come back unchanged: X and layers["measured"] are the prepared labels
    from asign_jax.preprocess.prepared import PreparedSample

    prep = PreparedSample.load(out / "work", "A")
    a2 = v.obs["section"].to_numpy() == "A2"
    np.testing.assert_array_equal(v.X[a2], prep.sections[1].spot_labels)
    np.testing.assert_array_equal(v.layers["measured"][a2], prep.sections[1].spot_labels)
    np.testing.assert_array_equal(v.obs["spot_id"][a2], prep.sections[1].spot_ids)
    np.testing.assert_allclose(v.obsm["spatial"][a2], prep.sections[1].pixel_xy)
    assert not prep.sections[0].labelled and prep.sections[0].spot_labels is None
    # image-only sections are never labelled in the graph
    g = graph_io.load_sample_graph(out / "work", "A")
    for scale in ("spot", "region", "global"):
        gr = g.graph(scale)
        assert not np.asarray(gr.nodes["label_mask"])[np.asarray(gr.nodes["layer"]) != 1].any()
        assert not np.asarray(gr.nodes["label"])[np.asarray(gr.nodes["layer"]) != 1].any()
    # the per-section file: original ids, own pixels, image in the scverse spatial layout
    s1 = ad.read_h5ad(out / "sections" / "A2.h5ad")
    assert list(s1.obs_names) == prep.sections[1].spot_ids.tolist()
    lib = s1.uns["spatial"]["A2"]
    assert lib["images"]["hires"].dtype == np.uint8 and lib["images"]["lowres"].ndim == 3
    assert set(lib["scalefactors"]) == {"tissue_hires_scalef", "tissue_lowres_scalef",
                                        "spot_diameter_fullres"}
    for f in ("figures/genemap_A1_G000.png", "figures/block_G000.png", "summary.json",
              "work/registration/A/overlay.png", "work/registration/A/qc.json"):
        assert (out / f).exists(), f


@pytest.mark.slow
def test_checkpoint_is_loaded_and_fine_tuned(block):
    import anndata as ad

    first = ad.read_h5ad(block["out"] / "volume.h5ad")
    ckpt = block_model.find_checkpoint(block["out"])
    assert ckpt.fold_dir == block["out"] / "work" / "checkpoints" / "fold_0"
    again = impute_block(block["manifest"], block["root"] / "ckpt", block["config"],
                         checkpoint=str(block["out"] / "work"), extractor=ColourFeatures(),
                         spots_from=str(block["root"] / "spots"), progress=False)
    assert again["model"]["source"] == "checkpoint" and again["model"]["step"] == 2
    second = ad.read_h5ad(block["root"] / "ckpt" / "volume.h5ad")
    np.testing.assert_allclose(second.X, first.X, rtol=1e-5, atol=1e-6)   # the same model
    tuned = impute_block(block["manifest"], block["root"] / "tuned", block["config"],
                         checkpoint=str(ckpt.fold_dir), finetune=True,
                         extractor=ColourFeatures(), spots_from=str(block["root"] / "spots"),
                         progress=False)
    assert tuned["model"]["source"] == "checkpoint fine-tuned on the block"
    assert tuned["model"]["step"] == 2               # train.steps more, from the checkpoint
    third = ad.read_h5ad(block["root"] / "tuned" / "volume.h5ad")
    moved = third.obs["origin"].to_numpy() != "measured"
    assert not np.allclose(third.X[moved], first.X[moved])
    np.testing.assert_array_equal(third.X[~moved], first.X[~moved])   # measured: unchanged
    wrong = block["config"].copy_and_resolve_references()
    wrong.model.asign.hidden = 12
    with pytest.raises(ConfigError, match="does not fit the model of the config"):
        impute_block(block["manifest"], block["root"] / "wrong", wrong,
                     checkpoint=str(ckpt.fold_dir), extractor=ColourFeatures(), progress=False)
    with pytest.raises(DataError, match="written from other inputs"):
        impute_block(block["manifest"], block["out"], block["config"], thickness_um=9.0,
                     extractor=ColourFeatures(), progress=False)


def test_block_above_max_graph_nodes_trains_and_imputes_in_tiles(block, tmp_path):
    """impute goes through train's pool (tiled above train.max_graph_nodes, model inputs
    attached) and tiled evaluation: the tiled prediction equals the one-graph prediction for the
    same params; a model whose per-sample inputs tiles cannot carry is refused in one line."""
    from asign_jax import stages

    config = stages.validated(block["config"])
    work = block["out"] / "work"
    genes, graphs, _ = stages.read_inputs(config, work)
    n_spots = int(np.asarray(graphs["A"].spot.n_node)[0])
    net, loss_fn = factory.build(config, len(genes))
    fold = block_model.block_fold("A", [], {"A": 3}, config, measured=[1])
    whole = pools.fold_pool(config, net, graphs, fold, work)
    params, _ = block_model.restore(config, net, whole,
                                    block_model.find_checkpoint(block["out"]).fold_dir)
    one = block_model.predict(config, net, params, graphs["A"], whole)
    tiled_cfg = config.copy_and_resolve_references()
    tiled_cfg.train.max_graph_nodes = n_spots - 1     # 56 spots: 4 tiles (1-hop halo)
    tiled_cfg.train.steps = 1
    pool, fitted, _ = block_model.fit(tiled_cfg, net, loss_fn, graphs, fold, tmp_path,
                                      progress=False)
    assert pool.tiled and not whole.tiled and len(pool) > 1
    tiled = block_model.predict(tiled_cfg, net, params, pool=pool, graph=graphs["A"])
    assert set(tiled) == set(one) == {"prediction", "network", "propagation"}
    for k in one:
        np.testing.assert_allclose(tiled[k], one[k], rtol=1e-5, atol=1e-5)
    base = tiled_cfg.copy_and_resolve_references()
    base.model.name = "stnet"
    stnet, _ = factory.build(base, len(genes))
    with pytest.raises(ConfigError, match="spatial tiles do not carry"):
        pools.fold_pool(base, stnet, graphs, fold, work)


@pytest.mark.slow
def test_block_of_whole_slide_tiffs_imputes_like_its_jpegs(block, tmp_path, monkeypatch):
    """The block as pyramidal TIFFs 4x finer than its JPEGs (level 0 at um_per_px / 4; level 2
    = the JPEG's pixels, levels 3+ its DCT reductions; spots in level-0 px): impute reads every
    patch and thumbnail by region from level 2 or coarser, never level 0 or 1, and writes the
    same volume as the JPEG block."""
    import anndata as ad
    import pandas as pd

    from asign_jax.data import pyramid, slide
    from asign_jax.data.image import jpeg_reductions, read_rgb

    d, config = block["data"], block["config"]
    um = float(config.data.um_per_px) / 4
    tif = {}
    for n in ("A1", "A2", "A3"):
        jpg = next((d / "ST-imgs" / "A" / n).glob("*.jpg"))
        tif[n] = pyramid.write_upsampled_pyramid(tmp_path / f"{n}.tif", read_rgb(jpg), 4, um,
                                                 reductions=jpeg_reductions(jpg), tile=128)
    sel = pd.read_csv(d / "ST-spotfiles" / "A2_selection.tsv", sep="\t")
    sel[["pixel_x", "pixel_y"]] *= 4
    sel.to_csv(tmp_path / "A2_selection.tsv", sep="\t", index=False)
    given = (block["root"] / "spots" / "A3.csv").read_text().splitlines()
    (tmp_path / "spots").mkdir()
    (tmp_path / "spots" / "A3.csv").write_text("\n".join(given[:1] + [
        f"{i},{float(x) * 4},{float(y) * 4}" for i, x, y in (r.split(",") for r in given[1:])]))
    manifest = yaml_manifest(tmp_path, f"""
sample: A
thickness_um: 4
sections:
  - {{name: A1, image: {tif['A1']}}}
  - name: A2
    image: {tif['A2']}
    st: {{format: her2st, counts: {d / 'ST-cnts' / 'A2.tsv.gz'}, spots: A2_selection.tsv}}
  - {{name: A3, image: {tif['A3']}, um_per_px: {um!r}}}
""")
    levels = set()
    read = slide.TiffSlide._read
    monkeypatch.setattr(slide.TiffSlide, "_read",
                        lambda self, level, *box: levels.add(level) or read(self, level, *box))
    summary = impute_block(manifest, tmp_path / "out", config, extractor=ColourFeatures(),
                           spots_from=str(tmp_path / "spots"), progress=False)
    assert levels and min(levels) == 2
    want = ad.read_h5ad(block["out"] / "volume.h5ad")
    got = ad.read_h5ad(tmp_path / "out" / "volume.h5ad")
    assert list(got.obs_names) == list(want.obs_names)
    np.testing.assert_array_equal(got.obsm["spatial"], want.obsm["spatial"])
    np.testing.assert_array_equal(got.X, want.X)
    assert [r["dice_after"] for r in summary["sections"]] == \
        [r["dice_after"] for r in block["summary"]["sections"]]
    lib = got.uns["spatial"]["A1"]            # the images line up with working-px spots
    assert lib["scalefactors"] == want.uns["spatial"]["A1"]["scalefactors"]


@pytest.mark.slow
def test_scanpy_and_squidpy_draw_a_section(block):
    sc = pytest.importorskip("scanpy")
    sq = pytest.importorskip("squidpy")
    import matplotlib
    matplotlib.use("Agg")
    import anndata as ad

    v = ad.read_h5ad(block["out"] / "volume.h5ad")
    assert v.obsm["spatial_3d"].shape == (v.n_obs, 3)
    s = sc.read_h5ad(block["out"] / "sections" / "A1.h5ad")
    sc.pl.spatial(s, color="G000", library_id="A1", show=False)
    sq.pl.spatial_scatter(s, color="G000", library_id="A1")
    sq.pl.spatial_scatter(v, color="G000", library_key="section", library_id=["A1", "A3"],
                          img_res_key="lowres")
    matplotlib.pyplot.close("all")


def test_imputed_block_volume_zarr_lines_up_with_the_h5ad(block):
    sd = pytest.importorskip("spatialdata")
    import anndata as ad

    v = ad.read_h5ad(block["out"] / "volume.h5ad")
    z = sd.read_zarr(block["out"] / "volume.zarr")
    t = z.tables["table"]
    np.testing.assert_array_equal(t.X, v.X)
    assert list(t.obs["origin"]) == list(v.obs["origin"])
    for row in (0, v.n_obs - 1):                     # a measured and a virtual spot
        c = z.shapes[t.obs["region"].iloc[row]].geometry.loc[int(t.obs["instance_id"].iloc[row])]
        np.testing.assert_allclose([c.x, c.y], v.obsm["spatial"][row])
    assert {f"{s}_he" for s in v.obs["section"].cat.categories} == set(z.images)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("sections: []\n")
    r = subprocess.run([sys.executable, "-m", "asign_jax.impute", "--manifest", str(bad),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: 0 section(s)")


def test_block_fold_uses_the_dataset_validation_design():
    """One measured section: the block is held out like cross-validation's test sample (its
    measured layer known), so val_known_fraction hides blocks of that layer and selection reads
    them; several measured sections: a training sample; a config that needs validation but
    gets none stops with one line."""
    c = base_config()
    c.train.val_known_fraction, c.train.val_block_px = 0.25, 400.0
    fold = block_model.block_fold("C", ["B"], {"C": 5, "B": 1}, c, measured=[2])
    assert fold.test_samples == ("C",) and fold.train_samples == ("B",)
    assert fold.known_layer == {"C": 2} and fold.val_blocks == ("C",) and fold.has_validation
    layer = np.repeat(np.arange(5), 40)
    xy = np.tile(np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2), (5, 1))
    hidden = fold.hidden_validation("C", layer, xy * 200.0)
    assert hidden.any() and not hidden[layer != 2].any()      # only the measured layer
    multi = block_model.block_fold("C", ["B"], {"C": 5, "B": 1}, c, measured=[0, 2])
    assert multi.train_samples == ("C", "B") and not multi.has_validation
    c.train.select = "pcc_gene"
    with pytest.raises(ConfigError, match="read a validation role, but the folds have none"):
        block_model.fit(c, None, None, {}, multi, Path("/nonexistent"))


# ---- issue 22: impute notices edited data; given spots checked against the tissue -----------

def _restore(path, data, st):
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_impute_refuses_a_model_trained_on_edited_data(block):
    """The training stage of an impute --out folder has its own manifest: count values moved
    between spots, or genes dropped, in A2's count file stop the rerun in one line naming the
    file, before registration or features (--overwrite retrains)."""
    import gzip

    from asign_jax.errors import RunFolderError
    from asign_jax.runfolder import RunFolder

    m = RunFolder(block["out"] / "work").read("fold_0")
    assert m["complete"] and len(m["config"]["impute.genes"]) == 12
    counts = block["data"] / "ST-cnts" / "A2.tsv.gz"
    assert str(counts.resolve()) in m["files"]
    data, st = counts.read_bytes(), counts.stat()
    lines = gzip.decompress(data).decode().splitlines(keepends=True)
    rows = [l.split("\t", 1) for l in lines[1:]]
    moved = [f"{i}\t{v}" for (i, _), (_, v) in zip(rows, rows[1:] + rows[:1])]
    fewer = ["\t".join(l.rstrip("\n").split("\t")[:-5]) + "\n" for l in lines]
    where = f"run folder {block['out'] / 'work'} (checkpoints/fold_0/) was made "
    try:
        for edit, message in ((lines[:1] + moved, f"from {counts.resolve()} ("),
                              (fewer, "with impute.genes=<12 items: ")):
            counts.write_bytes(gzip.compress("".join(edit).encode()))
            with pytest.raises(RunFolderError) as e:
                impute_block(block["manifest"], block["out"], block["config"],
                             extractor=ColourFeatures(), spots_from=str(block["root"] / "spots"),
                             progress=False)
            assert str(e.value).startswith(where + message) and "\n" not in str(e.value)
            assert str(e.value).endswith("use a new --out or pass --overwrite")
        assert "whose content has changed" not in str(e.value)          # genes said first
        assert re.search(r"\(\d+ shared; only before: .*; only now: ", str(e.value))
    finally:
        _restore(counts, data, st)


def test_given_spots_off_tissue_or_at_another_pitch_are_refused(tmp_path, caplog):
    image = write_image(tmp_path / "s.png", size=256, radius=80)
    sec = load_section("S", image, 256)
    frames = virtual.BlockFrames(["M", "S"], 0, np.tile(np.eye(3), (2, 1, 1)), [sec, sec], {})
    lattice = Lattice("square", np.array([128.0, 128.0]), 16.0 * np.eye(2))
    k = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)), -1).reshape(-1, 2)
    good = lattice.points(k)
    virtual.check_given_spots(frames, 1, good, lattice, 0, good, "s.csv", 0.2)
    off = good + [0, 100]                          # most of the grid below the tissue disc
    with pytest.raises(DataError, match=r"^s.csv: spots_from of section 'S': \d+ % of its 49 "
                       r"spots lie off the tissue of section S \(the measured section M: 0 %"):
        virtual.check_given_spots(frames, 1, off, lattice, 0, good, "s.csv", 0.2)
    dense = 128 + (good - 128) / 2                 # pitch 8 px against the grid's 16
    with pytest.raises(DataError, match=r"its spot pitch is 8 px, the measured section's grid "
                                        r"in this image 16 px \(0.50x\).*--allow_unusual_spots"):
        virtual.check_given_spots(frames, 1, dense, lattice, 0, good, "s.csv", 0.2)
    with caplog.at_level("WARNING"):
        virtual.check_given_spots(frames, 1, off, lattice, 0, good, "s.csv", 0.2, allow=True)
    assert "imputing anyway (--allow_unusual_spots)" in caplog.text


def test_figure_genes_come_from_impute_plot_genes(caplog):
    from asign_jax.block.run import _plot_genes
    c = base_config()
    genes = ["ERBB2", "GNAS", "FASN", "ACTB"]
    c.train.eval_genes = ("GNAS",)
    assert _plot_genes(c, genes, None) == ["GNAS"]
    c.impute.plot_genes = ("ACTB", "NOPE")
    assert _plot_genes(c, genes, None) == ["ACTB"]
    assert "impute.plot_genes: NOPE not among the 4 imputed genes" in caplog.text
    assert _plot_genes(c, genes, ["FASN"]) == ["FASN"]
    with pytest.raises(ConfigError, match="--genes"):
        _plot_genes(c, genes, ["NOPE"])
