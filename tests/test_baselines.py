"""The paper's baselines: shapes, parameter counts against baselines.md's arithmetic, the
per-model inputs (retrieval never reads a test layer or the query's own section; counts are
masked; neighbour tables stay in their section), the similarity reference, and a two-row
paper table end to end.

The shared prepared data is hand-made (two samples x three sections of a 4 x 4 spot grid)
and POISONED: every count and label of sample A's test layers (1, 2) is NaN, so any path
that let them through would put NaN in a bank, an input or an output.
"""

import csv
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asign_jax import atomic, pipeline, stages
from asign_jax.config import base_config, cpu_baselines
from asign_jax.evaluation import references
from asign_jax.features.resnet import fixed_seed_variables
from asign_jax.graph import io as graph_io
from asign_jax.graph import roles
from asign_jax.models import factory
from asign_jax.preprocess.prepared import PreparedSample, PreparedSection
from asign_jax.preprocess.tiles import assign_tiles, region_global, tile_counts
from asign_jax.training import batches, folds, model_inputs
from asign_jax.training.state import count_params
from asign_jax.training.step import sample_loss, step_options
from conftest import load_config, load_module

ROOT = Path(__file__).resolve().parents[1]
G, D, T = 6, 8, 4
BASELINES = ("stnet", "egn", "histogene", "bleep", "his2st", "triplex")


# ---- hand-made prepared data ----------------------------------------------------------------

def _section(name, layer, rng, poison):
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2).astype(float)
    pix = 300.0 + grid * 224.0 + rng.normal(0, 5, grid.shape)
    counts = rng.poisson(4.0, (len(grid), G)).astype(np.float32)
    if poison:
        counts[:] = np.nan
    r_origin, s_region = assign_tiles(pix, 512)
    g_origin, s_global = assign_tiles(pix, 1024)
    lab = lambda c: np.log((c + 1) / (c + 1).sum(1, keepdims=True)).astype(np.float32)
    rc, gc = (tile_counts(counts, s, len(o)) for s, o in ((s_region, r_origin),
                                                          (s_global, g_origin)))
    return PreparedSection(
        name=name, layer=layer, spot_ids=np.array([f"{name}_{i}" for i in range(len(grid))]),
        array_xy=grid + 3, pixel_xy=pix, spot_counts=counts, spot_labels=lab(counts),
        region_origin=r_origin, region_counts=rc, region_labels=lab(rc), spot_region=s_region,
        global_origin=g_origin, global_counts=gc, global_labels=lab(gc), spot_global=s_global,
        region_global=region_global(r_origin, 512, g_origin, 1024),
        image_shape=np.array([1600, 1600]),
        spot_feats=rng.normal(size=(len(grid), D)).astype(np.float32),
        spot_tokens=rng.normal(size=(len(grid), T, D)).astype(np.float16),
        region_feats=rng.normal(size=(len(r_origin), D)).astype(np.float32),
        region_tokens=rng.normal(size=(len(r_origin), T, D)).astype(np.float16),
        global_feats=rng.normal(size=(len(g_origin), D)).astype(np.float32),
        global_tokens=rng.normal(size=(len(g_origin), T, D)).astype(np.float16))


def write_prepared(root: Path) -> None:
    rng = np.random.default_rng(0)
    genes = np.array([f"G{i}" for i in range(G)])
    for sid in ("A", "B"):
        secs = [_section(f"{sid}{l}", l, rng, poison=(sid == "A" and l > 0)) for l in range(3)]
        PreparedSample(sid, genes, secs).save(root)
    atomic.write_json(root / "prepared" / "index.json",
                      {"samples": ["A", "B"], "genes": list(genes), "normalization": "asign"})


def tiny_config(name="asign"):
    c = base_config()
    c.registration.enabled = False
    c.model.name = name
    c.model.asign.hidden, c.model.asign.heads, c.model.asign.gat_layers = 8, 2, 1
    cpu_baselines(c, dim=8, depth=1, heads=2)
    c.model.egn.update(n_exemplars=3, depth=2)      # one exemplar bridge (every 2nd layer)
    c.model.bleep.update(projection_dim=8, top_k=4)
    c.model.his2st.update(mixer_channels=4, mixer_out=2, gnn_layers=2, bake_passes=1)
    c.model.triplex.window = 3
    return c


FOLD = folds.Fold(index=0, test_samples=("A",), train_samples=("B",), known_layer={"A": 0})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(root)
    graph_io.build_all(root, tiny_config())             # hand-made prepared data: no manifests
    genes, graphs, _ = stages.read_inputs(tiny_config(), root)
    return root, genes, graphs


def build(name, data):
    root, genes, graphs = data
    cfg = tiny_config(name)
    model, loss_fn = factory.build(cfg, len(genes))
    return cfg, model, loss_fn, pipeline.fold_pool(cfg, model, graphs, FOLD, root)


# ---- shapes, losses, parameter counts ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(factory.MODELS))
def test_forward_shapes_and_finite_loss_on_poisoned_data(name, data):
    """Every model: init, eval output shapes (``jax.eval_shape``, no compilation) on the hook's
    real inputs; every baseline: its jitted training loss and gradients, finite on the
    training sample B and on the held-out A whose test layers are NaN in the prepared data
    (ASIGN's own loss has its tests in test_model / test_training)."""
    cfg, model, loss_fn, pool = build(name, data)
    extra = pool.arrays.get("extra", {})
    assert set(factory.model_inputs(model)) <= set(model_inputs.INPUTS)
    ex = pool.example()
    init = lambda e: model.init({"params": jax.random.PRNGKey(0),
                                 "dropout": jax.random.PRNGKey(1)}, e["spot"], e["region"],
                                e["global"], e["spot"].nodes["known"], train=False,
                                **batches.model_extra(e))
    variables = jax.eval_shape(init, ex)
    n_pad = ex["spot"].nodes["feat"].shape[0]
    held = pool.pad(roles.mask_sample(data[2]["A"], "test", 0))
    out = jax.eval_shape(lambda v, s: model.apply(v, s["spot"], s["region"], s["global"],
                                                  s["spot"].nodes["known"], train=False,
                                                  **batches.model_extra(s)), variables, held)
    assert out["spot"].shape == (n_pad, G) and out["spot"].dtype == jnp.float32
    assert count_params(model, ex) == sum(x.size for x in jax.tree.leaves(variables["params"]))
    if name in BASELINES:
        assert "label_mean" in extra and np.isfinite(np.asarray(extra["label_mean"])).all()
    if name not in BASELINES:
        return
    variables = jax.jit(init)(ex)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, s: sample_loss(
        p, s, jax.random.PRNGKey(2), model=model, loss_fn=loss_fn, **step_options(cfg))[0]))
    for i in range(len(pool)):
        loss, grads = grad_fn(variables["params"], jax.tree.map(lambda a: a[i], pool.arrays))
        assert np.isfinite(float(loss)) and float(loss) > 0, (name, pool.sample_ids[i])
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads)), name


@pytest.mark.parametrize("name,weight,value", [("egn", "pcc", 2.0), ("bleep", "temperature", 0.1),
                                               ("his2st", "zinb", 2.0), ("his2st", "bake", 0.0),
                                               ("triplex", "alpha", 0.9)])
def test_each_baseline_loss_weight_changes_its_loss(name, weight, value, data):
    # model.<name>.loss.<weight> reaches the model's loss (and nothing else changes with it)
    cfg, model, loss_fn, pool = build(name, data)
    ex = pool.example()
    variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                           ex["spot"], ex["region"], ex["global"], ex["spot"].nodes["known"],
                           train=False, **batches.model_extra(ex))
    sample = jax.tree.map(lambda a: a[0], pool.arrays)
    losses = []
    for v in (cfg.model[name].loss[weight], value):
        c = cfg.copy_and_resolve_references()
        c.model[name].loss[weight] = v
        loss, _ = jax.jit(lambda p, s, o=step_options(c): sample_loss(
            p, s, jax.random.PRNGKey(2), model=model, loss_fn=loss_fn, **o))(
            variables["params"], sample)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[0] != pytest.approx(losses[1], rel=1e-4), losses


def _n(shapes, prefix=""):
    return sum(int(np.prod(x.shape)) for path, x in
               jax.tree_util.tree_flatten_with_path(shapes)[0]
               if jax.tree_util.keystr(path).startswith(prefix))


def _paper_params(name, n_spot_feat, spot_tokens, genes=250, n=6):
    """Parameter shapes of ``name`` at the base (paper) sizes on fake inputs of the given dims."""
    cfg = base_config()
    cfg.model.name = name
    model, _ = factory.build(cfg, genes)
    g = _fake_sample(n, n_spot_feat)
    extra = {"label_mean": jnp.zeros(genes), "spot_tokens": jnp.zeros((n,) + spot_tokens),
             "array_xy": jnp.zeros((n, 2), jnp.int32),
             "grid_adj": jnp.zeros((n, 4), jnp.int32), "grid_adj_mask": jnp.ones((n, 4), bool),
             "window": jnp.zeros((n, 25), jnp.int32), "window_mask": jnp.ones((n, 25), bool),
             "peg": jnp.zeros((n, 9), jnp.int32), "peg_mask": jnp.ones((n, 9), bool),
             "counts": jnp.zeros((n, genes)), "size_factor": jnp.ones(n),
             "exemplars": jnp.zeros((n, 8), jnp.int32), "exemplar_mask": jnp.ones((n, 8), bool),
             "self": jnp.int32(0),
             "bank": {"feat": jnp.zeros((64, n_spot_feat)), "label": jnp.zeros((64, genes)),
                      "sample": jnp.zeros(64, jnp.int32), "layer": jnp.zeros(64, jnp.int32),
                      "valid": jnp.ones(64, bool)}}
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, g, g, g,
        jnp.zeros(n, bool), extra, train=False))
    return shapes["params"]


def _fake_sample(n, d):
    import jraph
    return jraph.GraphsTuple(
        nodes={"feat": jnp.zeros((n, d)), "label": jnp.zeros((n, 250)),
               "label_mask": jnp.ones(n, bool), "layer": jnp.zeros(n, jnp.int32)},
        edges={}, senders=jnp.zeros(0, jnp.int32), receivers=jnp.zeros(0, jnp.int32),
        globals=None, n_node=jnp.array([n - 1, 1]), n_edge=jnp.array([0, 0]))


def _vit_layer(d, mlp, heads=16, head_dim=64):
    """Pre-LN ViT layer of baselines.md: 2 LN, Q/K/V without bias, out with bias, FF."""
    inner = heads * head_dim
    return 4 * d + 3 * d * inner + inner * d + d + d * mlp + mlp + mlp * d + d


def test_parameter_counts_match_baselines_md():
    """Head + fusion parts against the closed-form arithmetic of docs/baselines.md
    (within 10 %), with inputs of the originals' dimensions; where the input embedding can be
    made the original's (pixels as a flat feature), the total against baselines.md's total."""
    lin = lambda i, o: i * o + o
    # ST-Net: Linear(1024 -> 250) head, "0.26M"
    p = _paper_params("stnet", 1024, (1, 1024))
    assert abs(_n(p) - lin(1024, 250)) <= 0.1 * lin(1024, 250)
    # HisToGene: 8 ViT layers (1024, MLP 2048) + pos (2 x 64 x 1024) + LN/Linear head;
    # with the flattened 112 px crop as input (37632) the total is baselines.md's ~106M
    p = _paper_params("histogene", 37632, (1, 8))
    vit = 8 * _vit_layer(1024, 2048) + 2 * 64 * 1024 + 2 * 1024 + lin(1024, 250)
    assert abs((_n(p) - _n(p, "['patch_embedding']")) - vit) <= 0.1 * vit
    assert abs(_n(p) - 106e6) <= 0.1 * 106e6
    # EGN (TRIPLEX-copy defaults, 250 genes, mdim 1024): 49 tokens of 32x32x3 pixels -> ~220M
    p = _paper_params("egn", 1024, (49, 3072))
    assert abs(_n(p) - 220e6) <= 0.1 * 220e6
    # BLEEP: projection heads Linear(2048->256)+Linear(256->256)+LN and the same from 250 genes
    head = lambda i: lin(i, 256) + lin(256, 256) + 2 * 256
    p = _paper_params("bleep", 2048, (1, 2048))
    assert abs(_n(p) - (head(2048) + head(250))) <= 0.1 * (head(2048) + head(250))
    # His2ST: 8 layers (1024, MLP 1024), 4 GraphSAGE 1024^2, 2-layer LSTM(1024), pos, heads;
    # with 16 x 16 tokens of 7 x 7 x 3 pixels the total is baselines.md's ~73.6M
    p = _paper_params("his2st", 8, (256, 147))
    body = (8 * _vit_layer(1024, 1024) + 4 * 1024 * 1024 + 2 * 4 * (2 * 1024 * 1024 + 1024)
            + 2 * 64 * 1024 + 2 * 1024 + 4 * lin(1024, 250) + lin(1024, 1024) + lin(1024, 1))
    assert abs(_n(p) - body) <= 0.1 * body and abs(_n(p) - 73.6e6) <= 0.1 * 73.6e6
    # TRIPLEX BC1 (emb 512; global 5 / neighbour 4 / fusion 1 layers, ratio 4): everything
    # but the ResNet18 trunk (11.18M of the 43.2M)
    p = _paper_params("triplex", 512, (49, 512))
    layer = _vit_layer(512, 2048, heads=1, head_dim=512)
    expect = 10 * layer + 4 * 25 + 512 * 9 + 512 + 4 * 1024 + 4 * lin(512, 250) + lin(512, 512)
    assert abs(_n(p) - expect) <= 0.1 * expect
    assert abs(_n(p) + 11.18e6 - 43.2e6) <= 0.1 * 43.2e6


def test_backbone_train_mode_puts_a_trainable_resnet50_under_the_head():
    """model.backbone.mode="train": the model reads the spot patches and its parameters include the
    ResNet-50 trunk (23.5M), starting from the features' fixed-seed initialisation (shapes only:
    the mode is for a GPU)."""
    cfg = base_config()
    cfg.model.name = "stnet"
    cfg.model.backbone.mode = "train"
    model, _ = factory.build(cfg, 250)
    assert factory.model_inputs(model) == ("label_mean", "patches")
    n = 4
    g = _fake_sample(n, 2048)
    extra = {"label_mean": jnp.zeros(250), "patches": jnp.zeros((n, 32, 32, 3), jnp.uint8),
             "backbone_stats": fixed_seed_variables(0)["batch_stats"]}
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, g, g, g,
        jnp.zeros(n, bool), extra, train=False))
    trunk = _n(shapes["params"], "['spot_encoder']")
    assert abs(trunk - 23.5e6) < 0.05e6 and _n(shapes["params"]) == trunk + 2048 * 250 + 250
    out = jax.eval_shape(lambda v: model.apply(v, g, g, g, jnp.zeros(n, bool), extra,
                                               train=True, rngs={"dropout": jax.random.PRNGKey(2)}),
                         shapes)
    assert out["spot"].shape == (n, 250)


@pytest.mark.parametrize("name", ["asign2d", "histogene", "his2st", "triplex"])
def test_2d_methods_never_mix_layers(name, data):
    """A 2D method's prediction for a section does not move when another section's images do."""
    root, genes, graphs = data
    cfg, model, _, pool = build(name, data)
    ex = pool.example()
    params = jax.jit(lambda e: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, e["spot"],
        e["region"], e["global"], e["spot"].nodes["known"], train=False,
        **batches.model_extra(e)))(ex)
    run = jax.jit(lambda s: model.apply(params, s["spot"], s["region"], s["global"],
                                        s["spot"].nodes["known"], train=False,
                                        **batches.model_extra(s))["spot"])
    s = pool.pad(roles.mask_sample(graphs["B"], "train"))
    before = np.asarray(run(s))
    rng = np.random.default_rng(3)
    nodes = dict(s["spot"].nodes)
    nodes["feat"] = np.array(nodes["feat"])
    nodes["feat"][:16] += rng.normal(0, 3, nodes["feat"][:16].shape)  # section B0's images
    for scale in ("region", "global"):                                   # and its tiles
        g = s[scale]
        f = np.array(g.nodes["feat"])
        layer0 = np.asarray(g.nodes["layer"]) == 0
        f[layer0] += 3.0
        s[scale] = g._replace(nodes={**g.nodes, "feat": f})
    extra = dict(s["extra"]) if "extra" in s else None
    if extra is not None and "spot_tokens" in extra:
        t = np.array(extra["spot_tokens"], np.float32)
        t[:16] += 3.0
        extra["spot_tokens"] = t.astype(np.float16)
        s["extra"] = extra
    s["spot"] = s["spot"]._replace(nodes=nodes)
    after = np.asarray(run(s))
    np.testing.assert_allclose(after[16:48], before[16:48], rtol=1e-5, atol=1e-5)
    assert np.abs(after[:16] - before[:16]).max() > 1e-4


def test_asign2d_is_asign_without_cross_layer_edges_and_cli():
    model, loss = factory.build(tiny_config("asign2d"), G)
    assert not model.cfg.use_cli and not model.cfg.cross_layer_edges
    assert loss is factory.MODELS["asign"][1]


# ---- retrieval, masking, neighbour tables -----------------------------------------------------

def _eval(model, params, pool, sample):
    s = pool.pad(sample)
    return np.asarray(model.apply(params, s["spot"], s["region"], s["global"],
                                  s["spot"].nodes["known"], train=False,
                                  **batches.model_extra(s))["spot"])


@pytest.mark.parametrize("name", ["egn", "bleep"])
def test_retrieval_never_reads_a_test_layer_or_the_own_section(name, data):
    root, genes, graphs = data
    cfg, model, _, pool = build(name, data)
    bank = jax.tree.map(lambda a: np.asarray(a[0]), pool.arrays["extra"]["bank"])
    v = bank["valid"]
    a = pool.sample_ids.index("A")
    # the bank: labelled spots only -- A's known layer yes, A's (NaN) test layers never
    assert np.isfinite(bank["label"][v]).all()
    assert not (v & (bank["sample"] == a) & (bank["layer"] != 0)).any()
    assert (v & (bank["sample"] == a) & (bank["layer"] == 0)).sum() == 16
    if name == "egn":   # exemplars never come from the query's own section
        ex = pool.arrays["extra"]
        for p in range(len(pool)):
            idx, lay = ex["exemplars"][p], np.asarray(pool.arrays["spot"].nodes["layer"][p])
            own = (bank["sample"][idx] == p) & (bank["layer"][idx] == lay[:, None])
            assert not own[:48].any()
    ex = pool.example()
    params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                        ex["spot"], ex["region"], ex["global"], ex["spot"].nodes["known"],
                        train=False, **batches.model_extra(ex))
    held = roles.mask_sample(graphs["A"], "test", 0)
    out_a = _eval(model, params, pool, held)
    assert np.isfinite(out_a[:48]).all()
    # new labels in training section B1 change what other sections retrieve, never what B1's
    # own spots get (the label_mean offset, which every label moves, is held fixed)
    sl = slice(16, 32)                                           # section B1 = rows 16..31
    g = graphs["B"]
    label = np.array(g.spot.nodes["label"])
    label[sl] += np.random.default_rng(0).normal(0, 1, label[sl].shape)
    graphs2 = dict(graphs, B=g.replace_graphs({"spot": g.spot._replace(
        nodes={**g.spot.nodes, "label": label})}))
    pool2 = pipeline.fold_pool(cfg, model, graphs2, FOLD, root)
    pool2.arrays["extra"]["label_mean"] = pool.arrays["extra"]["label_mean"]
    before = _eval(model, params, pool, roles.mask_sample(graphs["B"], "train"))
    after = _eval(model, params, pool2, roles.mask_sample(graphs2["B"], "train"))
    np.testing.assert_allclose(after[sl], before[sl], rtol=1e-5, atol=1e-5)
    changed = np.abs(after - before).max(1) > 1e-4
    assert changed[:16].any() or changed[32:48].any(), "B1's labels should reach others"


def test_inputs_mask_counts_and_stay_in_their_section(data):
    root, genes, graphs = data
    cfg = tiny_config("his2st")
    pool = batches.build_pool(graphs, FOLD, seed=0)
    names = ("counts", "grid_adj", "window", "peg", "array_xy", "spot_tokens", "label_mean")
    extra = model_inputs.attach(cfg, names, root, pool).arrays["extra"]
    a = pool.sample_ids.index("A")
    counts = extra["counts"][a]
    assert np.isfinite(counts).all() and (counts[16:48] == 0).all() and counts[:16].sum() > 0
    assert np.isfinite(extra["spot_tokens"]).all() and np.isfinite(extra["label_mean"]).all()
    layer = np.asarray(pool.arrays["spot"].nodes["layer"])
    for key in ("grid_adj", "window", "peg"):
        idx, ok = extra[key], extra[f"{key}_mask"]
        for p in range(len(pool)):
            rows = np.arange(48)
            same = layer[p][idx[p][rows]] == layer[p][rows][:, None]
            assert same[ok[p][rows]].all(), key
    # a 4 x 4 grid: a corner's 4 nearest are at distances 1, 1, 1.41, 2 (all kept, <= 2);
    # with grid_max_dist 1 only the 2 direct neighbours; a 3 x 3 window's centre is the spot
    assert extra["grid_adj_mask"][a][0].sum() == 4
    xy = np.asarray(extra["array_xy"][a], float)
    _, tight = model_inputs.grid_adjacency(xy, layer[a], 48, xy.shape[0], 4, 1.0)
    assert tight[0].sum() == 2 and tight[5].sum() == 4
    assert (extra["window"][a][:48, 4] == np.arange(48)).all()
    assert extra["peg_mask"][a][0].sum() == 4 and extra["peg_mask"][a][5].sum() == 9


def test_similarity_matches_brute_force():
    rng = np.random.default_rng(1)
    kf, kl, qf = rng.normal(size=(30, 5)), rng.normal(size=(30, 4)), rng.normal(size=(17, 5))
    got = references.similarity(kf, kl, qf, k=7, chunk=5)
    for i in range(len(qf)):
        cos = [kf[j] @ qf[i] / np.linalg.norm(kf[j]) / np.linalg.norm(qf[i]) for j in range(30)]
        top = sorted(range(30), key=lambda j: -cos[j])[:7]
        np.testing.assert_allclose(got[i], kl[top].mean(0), rtol=1e-5)
    np.testing.assert_allclose(references.similarity(kf, kl, qf, k=100), np.broadcast_to(
        kl.mean(0), (17, 4)), rtol=1e-5)


# ---- the tables end to end -------------------------------------------------------------------

_load = load_module


@pytest.mark.slow
def test_two_row_table_end_to_end(tmp_path, monkeypatch):
    sys.argv = sys.argv[:1]
    tables = _load(ROOT / "experiments" / "paper_tables.py")
    config = load_config("test")
    config.registration.enabled = False                # keep the data stage short
    # ASIGN's own options, as the shipped configs set them: a baseline row must ignore them
    config.model.asign.image_skip, config.model.asign.spot_offset = True, "known"
    out = tables.make_tables(config, tmp_path, [1], only_rows=["stnet", "bleep"])[1]
    assert set(out) == {"stnet", "bleep"}
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert "| ST-Net | cached |" in md and "| BLEEP | cached |" in md and "0.663" in md
    csv_rows = (tmp_path / "tables" / "table1.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("table,dataset,row")
    for r in ("stnet", "bleep"):
        assert np.isfinite(out[r]["per_fold"]["mse"]).all() and out[r]["n_folds"] == 2
        metrics = json.loads((Path(out[r]["run"]) / "metrics.json").read_text())
        assert metrics["method"] == r and "similarity" in metrics["baselines"]
        assert metrics["n_params"] == out[r]["n_params"] > 0
    assert (tmp_path / "tables" / "table1_pcc_spot.png").exists()
    # resumable: a finished row is read back, never recomputed
    monkeypatch.setattr(tables.pipeline, "train_and_evaluate",
                        lambda *a, **k: pytest.fail("a finished row was recomputed"))
    again = tables.make_tables(config, tmp_path, [1], only_rows=["stnet", "bleep"])[1]
    assert again["stnet"]["per_fold"]["mse"].tolist() == out["stnet"]["per_fold"]["mse"].tolist()


def test_a_diverged_row_is_reported_as_failed_and_not_retried(tmp_path, monkeypatch):
    from asign_jax.errors import TrainingError

    sys.argv = sys.argv[:1]
    tables = _load(ROOT / "experiments" / "paper_tables.py")
    config = tables.row_config(load_config("test"),
                               tables.ROWS["stnet"][1])
    msg = "fold 1: training loss is nan at step 6 (mse=nan)"

    def diverge(*a, **k):
        raise TrainingError(msg)
    monkeypatch.setattr(tables.pipeline, "train_and_evaluate", diverge)
    d = tables.run_row(config, tmp_path, tmp_path / "data", "stnet")
    failed = tables.read_row(d, "stnet")
    assert failed["failed"] == msg and np.isnan(failed["per_fold"]["mse"]).all()
    monkeypatch.setattr(tables.pipeline, "train_and_evaluate",
                        lambda *a, **k: pytest.fail("a failed row was retried"))
    assert tables.run_row(config, tmp_path, tmp_path / "data", "stnet") == d
    ok = {"per_fold": {m: np.array([0.3, 0.31]) for m in tables.METRICS},
          "sections": {m: np.array([0.3, 0.31, 0.29]) for m in tables.METRICS}, "n_folds": 2,
          "n_params": 10, "seconds": 1.0, "encoder": "cached"}
    results = {"asign": ok, "stnet": {**failed, "encoder": "cached"}}
    tables.write_table(tmp_path / "tables", 1, "test", "HER2", results, True)
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert "| ST-Net | cached | - | - | failed | failed | failed | failed |" in md
    assert f"Failed rows (training stopped; no number is reported): ST-Net: {msg}" in md


def test_row_folder_ignores_a_field_added_at_its_as_before_value(monkeypatch):
    """A config field added to ``runfolder.ADDED`` later does not rename (retrain) the rows
    while it holds its "as before" value; another value, or any other field, does. The ADDED
    fields that were hashed before keep being hashed (their rows keep their folders)."""
    from asign_jax import runfolder

    tables = _tables()
    rows = sys.modules["paper_tables_rows"]
    config = load_config("test")
    before = tables.row_dir(Path("w"), config)
    assert rows.row_hash_text(config) == config.to_json(sort_keys=True)
    with config.unlocked():
        config.train.new_knob = 0.0                     # a field a later commit adds
    assert tables.row_dir(Path("w"), config) != before  # not declared: it is hashed
    monkeypatch.setitem(runfolder.ADDED, "train.new_knob", 0.0)
    assert tables.row_dir(Path("w"), config) == before
    config.train.new_knob = 0.5
    assert tables.row_dir(Path("w"), config) != before
    config.train.new_knob = 0.0
    config.train.steps += 1
    assert tables.row_dir(Path("w"), config) != before
    config.train.steps -= 1
    field = "model.asign.blend_shrinkage"
    assert field in rows.HASHED_ADDED and runfolder.ADDED[field] == 1.0
    assert '"blend_shrinkage": 1.0' in rows.row_hash_text(config)


# ---- --tune: every learned row tuned on validation under one budget ---------------------------

def _tables():
    sys.argv = sys.argv[:1]
    return _load(ROOT / "experiments" / "paper_tables.py")


def test_tune_grid_is_one_budget_for_every_learned_row():
    """Every learned model gets the same fields (its own dropout field(s)), values and number
    of candidates; candidate 0 is the row's own config, the others the half fraction."""
    tables = _tables()
    import sweep

    cfg = load_config("synthetic")
    counts = set()
    for name in sorted(factory.MODELS):
        c = tables.row_config(cfg, {"model.name": name})
        grid = tables.tune_grid(c)
        drop = tables.dropout_field(name)
        assert drop in grid and len(grid) == len(tables.TUNE_GRID)
        for f in drop.split("+"):                                  # a real float field
            assert isinstance(sweep._get(c, f), float), (name, f)
        assert grid["train.learning_rate"] == [1e-3, 9e-3]          # x 1/3, x 3 of 3e-3
        cands = sweep.candidates(grid, "half", c)
        counts.add(len(cands))
        assert cands[0] == {} and len({json.dumps(o, sort_keys=True) for o in cands}) == 9
        # a half fraction: every combination of values of any three fields appears once
        for f3 in [list(grid)[:3], list(grid)[1:]]:
            combos = {tuple(o[f] for f in f3) for o in cands[1:]}
            assert len(combos) == 8
    assert counts == {9}
    assert tables.dropout_field("asign2d") == "model.asign.dropout"
    tri = sweep.apply(cfg, {tables.dropout_field("triplex"): 0.05}).model.triplex
    assert tri.dropout_fusion == tri.dropout_global == tri.dropout_neighbor == 0.05
    assert tables.tune_fields("lr,dropout") == ["train.learning_rate", tables.DROPOUT]
    for bad in ("lr,momentum", "lr"):              # one field: no half fraction to draw
        with pytest.raises(Exception, match="--tune_fields"):
            tables.tune_fields(bad)
    with pytest.raises(Exception, match="two or more"):
        sweep.candidates({"train.learning_rate": [1e-3, 1e-2]}, "half")


def test_sweep_ranks_guarded_and_diverged_candidates_last(tmp_path):
    """The choice: the best validation score of the config's model among the candidates not
    worse than known_mean on validation MSE; a diverged candidate ranks last and is not
    retried."""
    import sweep
    from asign_jax.errors import TrainingError

    cfg = tiny_config("stnet")
    grid = {"train.learning_rate": [1e-3, 1e-2], "train.weight_decay": [0.0, 0.1]}
    agg = lambda pcc, mse: {"stnet": {"mean": {"pcc_gene": pcc, "mse": mse}},
                            "known_mean": {"mean": {"pcc_gene": None, "mse": 1.0}}}
    scores = {(1e-3, 0.0): agg(0.9, 1.5), (1e-3, 0.1): agg(0.3, 0.8),   # best pcc, bad MSE
              (1e-2, 0.0): None, (1e-2, 0.1): agg(0.2, 0.9)}              # None: diverges
    calls = []

    def train(c, folder, *, score_test, **_):
        key = (float(c.train.learning_rate), float(c.train.weight_decay))
        calls.append((key, score_test))
        if scores[key] is None:
            raise TrainingError("loss is nan")
        return scores[key]
    rec = sweep.run_sweep(cfg, grid, tmp_path, inputs=("fake",), train=train, progress=False)
    assert rec["chosen"]["index"] == 1 and rec["method"] == "stnet"
    assert [c["key"][:2] for c in rec["candidates"]] == [[True, False], [True, True],
                                                         [False, False], [True, True]]
    assert rec["candidates"][2]["failed"] == "loss is nan"
    assert rec["budget"] == {"candidates": 4, "steps": int(cfg.train.steps)}
    assert calls[-1] == ((1e-3, 0.1), True) and sum(t for _, t in calls) == 1
    calls.clear()
    sweep.run_sweep(cfg, grid, tmp_path, inputs=("fake",), train=train, progress=False)
    assert ((1e-2, 0.0), False) not in calls                     # failed.json: not retried
    # half mode: the base, then 2^(k-1) candidates
    assert sweep.candidates(grid, "half") == [
        {}, {"train.learning_rate": 1e-3, "train.weight_decay": 0.0},
        {"train.learning_rate": 1e-2, "train.weight_decay": 0.1}]


def _poison_test_layers(monkeypatch, tables, sample="A", layers=(1, 2)):
    """Every scale's labels of ``sample``'s test ``layers`` -> NaN spots / 1e30 tiles, as the
    run folders' graphs are read (``stages.read_inputs``)."""
    read = stages.read_inputs

    def poisoned(config, workdir):
        genes, graphs, oracle = read(config, workdir)
        new = {}
        for scale in roles.SCALES:
            g = graphs[sample].graph(scale)
            hit = np.isin(np.asarray(g.nodes["layer"]), layers)
            label = np.array(g.nodes["label"], copy=True)
            label[hit] = np.nan if scale == "spot" else 1e30
            new[scale] = g._replace(nodes={**g.nodes, "label": label})
        return genes, {**graphs, sample: graphs[sample].replace_graphs(new)}, oracle
    monkeypatch.setattr(stages, "read_inputs", poisoned)


TUNE_FIELDS = ["train.learning_rate", "train.feature_norm"]   # 3 candidates: a CPU test


def _tune_config():
    config = load_config("test")
    config.registration.enabled = False
    config.train.folds = (("A",),)        # one fold: A's layers 1, 2 are test, never training
    return config


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tables = _tables()
    out = tmp_path_factory.mktemp("tuned")
    res = tables.make_tables(_tune_config(), out, [1], only_rows=["bleep", "asign"], tune=True,
                             fields=TUNE_FIELDS)[1]
    return tables, out, res


def _sweep(out, row):
    return json.loads((out / "tables" / "synthetic" / row / "sweep.json").read_text())


@pytest.mark.slow
def test_tuned_two_method_table_end_to_end(tuned, monkeypatch):
    tables, out, res = tuned
    assert set(res) == {"bleep", "asign"}
    recs = {r: _sweep(out, r) for r in ("bleep", "asign")}
    for r, rec in recs.items():
        # the same budget for both; ASIGN's own config is one candidate among them
        assert rec["budget"] == {"candidates": 3, "steps": 8} and len(rec["candidates"]) == 3
        assert rec["candidates"][0]["overrides"] == {} and rec["mode"] == "half"
        assert set(rec["grid"]) == set(TUNE_FIELDS)
        # the chosen candidate is the best validation score (recomputed from the record)
        keys = [(c["validation"][r]["mean"]["mse"] <= c["validation"]["known_mean"]["mean"]["mse"],
                 c["validation"][r]["mean"]["pcc_gene"]) for c in rec["candidates"]]
        best = max(range(3), key=lambda i: (keys[i], -i))
        assert rec["chosen"]["index"] == best == res[r]["tuned"]["chosen"]
        assert len({k[1] for k in keys}) == 3                     # the candidates differ
        # test scored once, for the chosen candidate only, in its run folder
        folders = [Path(c["folder"]) for c in rec["candidates"]]
        assert [(f / "metrics.json").exists() for f in folders] == [i == best for i in range(3)]
        assert res[r]["run"] == str(folders[best]) and np.isfinite(res[r]["per_fold"]["mse"]).all()
        assert res[r]["tuned"]["val"] == pytest.approx(keys[best][1])
    md = (out / "tables" / "table1.md").read_text()
    assert "| chosen on validation | val pcc_gene | budget | test mse |" in md
    for r, label in (("bleep", "BLEEP"), ("asign", "ASIGN 3D")):
        t = res[r]["tuned"]
        assert (f"| {label} | cached |" in md and f"| {t['label']} | " in md
                and "| 3 x 8 steps |" in md and f"{t['val']:.3f}" in md)
    assert "0.743" in md and "0.363" in md                         # the paper's numbers stay
    rows = list(csv.DictReader(open(out / "tables" / "table1.csv")))
    assert [r["row"] for r in rows] == ["bleep", "asign"]
    assert all(r["budget_candidates"] == "3" and r["budget_steps"] == "8" for r in rows)
    assert {r["row"]: int(r["tuned_candidate"]) for r in rows} == {
        r: recs[r]["chosen"]["index"] for r in recs}
    assert (out / "tables" / "table1_pcc_gene.png").exists()
    # resumable: a finished sweep is read back, never recomputed
    monkeypatch.setattr(tables.pipeline, "train_and_evaluate",
                        lambda *a, **k: pytest.fail("a finished sweep was recomputed"))
    again = tables.make_tables(_tune_config(), out, [1], only_rows=["bleep", "asign"],
                               tune=True, fields=TUNE_FIELDS)[1]
    assert again["bleep"]["tuned"] == res["bleep"]["tuned"]


@pytest.mark.slow
def test_tuned_row_ignores_poisoned_test_labels(tuned, tmp_path, monkeypatch):
    """BLEEP (its prediction retrieves labelled training spots) tuned again with its fold's
    test layers' labels poisoned: the same validation scores of every candidate, the same
    choice; only the test score, read once, sees the poison."""
    tables, out, res = tuned
    _poison_test_layers(monkeypatch, tables)
    dirty = tables.make_tables(_tune_config(), tmp_path, [1], only_rows=["bleep"], tune=True,
                               fields=TUNE_FIELDS)[1]["bleep"]
    clean_rec, dirty_rec = _sweep(out, "bleep"), _sweep(tmp_path, "bleep")
    strip = lambda r: json.dumps(atomic.json_safe(
        [{k: v for k, v in c.items() if k not in ("folder", "seconds")}
         for c in r["candidates"]]))
    assert strip(clean_rec) == strip(dirty_rec)
    assert clean_rec["chosen"] == dirty_rec["chosen"] and dirty["tuned"] == res["bleep"]["tuned"]
    assert np.isfinite(res["bleep"]["per_fold"]["mse"]).all()
    assert not np.isfinite(dirty["per_fold"]["mse"]).any()         # the poison reached test
