"""The validation role: its three designs, selection that reads validation only (poison tests
of parameters, chosen step, blend and a sweep's choice), and a replay of a diverging run.

Every training test here shares one tiny model and one padded shape (three random samples),
so the train step compiles once for the module.
"""

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from asign_jax import atomic, pipeline
from asign_jax.config import base_config
from asign_jax.errors import ConfigError
from asign_jax.evaluation import references, scoring
from asign_jax.graph import roles
from asign_jax.models import factory
from asign_jax.models.cli import fit_blend
from asign_jax.models.losses import asign_loss
from asign_jax.testing import random_sample_graph, tiny_model, tiny_sample_graph
from asign_jax.training import batches, folds, known, loop, selection
from conftest import load_config

ROOT = Path(__file__).resolve().parents[1]
G = 8


def tiny_config(**train):
    c = tiny_model(base_config())
    c.model.asign.blend = "validation"
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-2
    c.train.steps = 12
    c.train.log_every = 3
    c.train.checkpoint_every = 6
    c.train.val_every = 3
    c.train.select = "mse"
    c.train.val_samples = ("C",)
    c.train.folds = (("A",),)
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def graphs():
    return {s: tiny_sample_graph(i, s, G, spots_per_layer=9) for i, s in enumerate("ABC")}


@pytest.fixture(scope="module")
def model():
    return factory.build(tiny_config(), G)[0]


def poison(sample, layers, spot_value=np.nan, tile_value=1e30):
    """Labels of ``layers`` replaced by garbage in every scale (NaN spots, 1e30 tiles)."""
    new = {}
    for scale in roles.SCALES:
        g = sample.graph(scale)
        hit = np.isin(np.asarray(g.nodes["layer"]), layers)
        label = np.array(g.nodes["label"], copy=True)
        label[hit] = spot_value if scale == "spot" else tile_value
        new[scale] = g._replace(nodes={**g.nodes, "label": label})
    return sample.replace_graphs(new)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# ---- the designs ----------------------------------------------------------------------------

def test_validation_never_overlaps_test():
    n_layers = {"A": 3, "B": 4, "C": 2, "D": 3, "E": 1}
    designs = [dict(val_samples=("D",)), dict(inner_val=1), dict(inner_val=2),
               dict(val_known_fraction=0.3), dict(inner_val=1, rotate_known_layer=True)]
    for d in designs:
        c = base_config().train
        for k, v in d.items():
            c[k] = v
        c.extra_train_samples = ("E",)
        fs = folds.make_folds(c, n_layers, seed=3)
        assert fs and all(f.has_validation for f in fs)
        for f in fs:
            assert not set(f.val_samples) & set(f.test_samples), (d, f)
            assert not set(f.val_samples) & set(f.train_samples), (d, f)
            assert "E" not in f.val_samples + f.test_samples
            assert set(f.val_blocks) <= set(f.test_samples)
    # the inner split rotates: each sample validates some fold, never its own test fold
    c = base_config().train
    c.inner_val = 1
    fs = folds.make_folds(c, {"A": 3, "B": 3, "C": 3})
    assert [f.val_samples for f in fs] == [("B",), ("C",), ("A",)]
    c.inner_val = 3
    with pytest.raises(ConfigError, match="inner_val=3"):
        folds.make_folds(c, {"A": 3, "B": 3, "C": 3})
    c.inner_val, c.val_samples = 1, ("A",)
    with pytest.raises(ConfigError, match="alternatives"):
        folds.make_folds(c, {"A": 3, "B": 3, "C": 3})


def test_known_layer_blocks_hide_spots_and_their_tiles(graphs):
    c = base_config().train
    c.folds, c.val_known_fraction, c.val_block_px, c.known_layer = (("A",),), 0.3, 250.0, 1
    fold = folds.make_folds(c, {"A": 3, "B": 3})[0]
    g = graphs["A"]
    spot = roles.unpadded_nodes(g, "spot")
    hidden = fold.hidden_validation("A", spot["layer"], spot["xy"])
    assert np.array_equal(hidden, fold.hidden_validation("A", spot["layer"], spot["xy"]))
    assert hidden.any() and np.all(spot["layer"][hidden] == 1)          # known layer only
    n_known = (spot["layer"] == 1).sum()
    assert 0.3 * n_known <= hidden.sum() < n_known
    pool = batches.build_pool({"A": g, "B": graphs["B"]}, fold, seed=0)
    a = pool.sample_ids.index("A")
    lm = np.asarray(pool.arrays["spot"].nodes["label_mask"])[a][:len(hidden)]
    assert np.array_equal(lm, (spot["layer"] == 1) & ~hidden)
    for scale, field in (("region", "region_idx"), ("global", "global_idx")):
        tiles = np.unique(np.asarray(spot[field])[hidden])
        assert not np.asarray(pool.arrays[scale].nodes["label_mask"])[a][tiles].any()
    # the test view keeps the whole known layer known (the setting gives it); the validation
    # view hides the blocks
    test_view = roles.fold_view(g, fold, "test", with_validation=False)
    val_view = roles.fold_view(g, fold, "val")
    assert roles.unpadded_nodes(test_view, "spot")["known"].sum() == n_known
    assert roles.unpadded_nodes(val_view, "spot")["known"].sum() == n_known - hidden.sum()


def test_global_tile_blocks_share_no_tile_and_cut_view_reaches_them_across_layers():
    """val_block_unit="global_tile": whole global tiles are hidden, so no training spot of the
    known layer shares a tile with a validation spot; val_block_edges="cut": the scored view
    has no spot edge between a block and the rest of its section, keeps every other edge (the
    cross-layer ones, the block's own), and the test view is untouched."""
    from asign_jax.evaluation import scoring
    c = base_config().train
    c.folds, c.val_known_fraction, c.known_layer = (("A",),), 0.3, 1
    c.val_block_unit, c.val_block_edges = "global_tile", "cut"
    fold = folds.make_folds(c, {"A": 3, "B": 3})[0]
    g = random_sample_graph(3, n_layers=3, spots_per_layer=24, n_region=12, n_global=12,
                            n_genes=G, feat_dim=8, n_tokens=2, k=6, sample_id="A")
    spot = roles.unpadded_nodes(g, "spot")
    layer, tile = spot["layer"], spot["global_idx"]
    assert len(np.unique(tile[layer == 1])) >= 3
    with pytest.raises(ValueError, match="needs the spots' global_idx"):
        fold.hidden_validation("A", layer, spot["xy"])
    hidden = fold.hidden_validation("A", layer, spot["xy"], tile)
    assert hidden.any() and np.all(layer[hidden] == 1) and hidden.sum() < (layer == 1).sum()
    assert not set(tile[hidden]) & set(tile[(layer == 1) & ~hidden])
    (sid, view, scored), = scoring.role_views(fold, {"A": g}, "val")
    assert np.array_equal(scored, hidden)
    s0, r0 = np.asarray(g.spot.senders), np.asarray(g.spot.receivers)
    s1, r1 = np.asarray(view.spot.senders), np.asarray(view.spot.receivers)
    cut = (layer[s0] == layer[r0]) & (hidden[s0] != hidden[r0])
    assert cut.any() and int(np.asarray(view.spot.n_edge)[0]) == len(s1) == (~cut).sum()
    assert set(zip(s1.tolist(), r1.tolist())) == set(zip(s0[~cut].tolist(), r0[~cut].tolist()))
    assert np.array_equal(np.asarray(view.spot.edges["weight"]),
                          np.asarray(g.spot.edges["weight"])[~cut])
    assert (layer[s1] != layer[r1])[hidden[r1]].any()         # blocks reached across layers
    (_, test_view, _), = scoring.role_views(fold, {"A": g}, "test")
    assert len(np.asarray(test_view.spot.senders)) == len(s0)
    c.val_block_edges = "sever"
    with pytest.raises(ConfigError, match="train.val_block_edges='sever'"):
        folds.make_folds(c, {"A": 3, "B": 3})


def test_whole_layer_known_sets_in_training(graphs):
    """A 3D training sample (all layers labelled) gets one WHOLE layer as its CLI known set in
    training, as at evaluation; a sample with one labelled layer falls back to the fraction."""
    fold = folds.Fold(0, ("A",), ("B",), {"A": 0})
    pool = batches.build_pool(graphs, fold, seed=0)
    spot = pool.arrays["spot"]
    for i, (sid, role) in enumerate(zip(pool.sample_ids, pool.roles)):
        lm, layer = np.asarray(spot.nodes["label_mask"][i]), np.asarray(spot.nodes["layer"][i])
        for r in range(4):
            k = np.asarray(known.draw(jax.random.PRNGKey(r), lm, layer, 0.2, "layer"))
            if role == "train":
                assert len(np.unique(layer[k])) == 1
                assert k.sum() == (lm & (layer == layer[k][0])).sum()        # the whole layer
            else:
                assert k.sum() == round(0.2 * lm.sum())                     # fraction fallback
    c = load_config("synthetic")
    assert c.train.known_mode == "layer" and c.train.val_samples


# ---- selection reads validation only ---------------------------------------------------------

def _train(cfg, model, gs, fold, path):
    pool = batches.build_pool(gs, fold, seed=0)
    validator = selection.Validator(cfg, fold, gs, model, pool.pad)
    st = loop.train_fold(cfg, model, asign_loss, pool, 0, path, path / "log.jsonl",
                         progress=False, validate=validator)
    params, record = selection.load_selected(path)
    log = [json.loads(l) for l in (path / "log.jsonl").read_text().splitlines()]
    return jax.device_get(st.params), params, record, [r for r in log if r.get("split") == "val"]


@pytest.mark.parametrize("blend_score", ["in_sample", "crossfit"])
def test_poisoned_test_labels_change_no_parameter_step_or_blend(graphs, model, tmp_path,
                                                                blend_score):
    cfg = tiny_config(val_blend_score=blend_score)
    fold = folds.make_folds(cfg.train, {s: 3 for s in graphs})[0]
    assert fold.test_samples == ("A",) and fold.val_samples == ("C",)
    bad = {**graphs, "A": poison(graphs["A"], [1, 2])}          # A's test layers
    clean = _train(cfg, model, graphs, fold, tmp_path / "clean")
    dirty = _train(cfg, model, bad, fold, tmp_path / "dirty")
    assert _leaves_equal(clean[0], dirty[0])                     # final parameters
    assert _leaves_equal(clean[1], dirty[1])                     # selected params (blend in)
    assert clean[2] == dirty[2]                                  # step, score, metrics, alpha
    assert clean[3] == dirty[3] and len(clean[3]) == 4           # every validation pass
    assert all(np.isfinite(r["val_mse"]) for r in clean[3])
    assert clean[3][0]["val_mse_known_mean"] > 0
    # the test has teeth: poisoning the VALIDATION sample's hidden layers changes the choice
    vbad = {**graphs, "C": poison(graphs["C"], [1, 2], spot_value=50.0)}
    moved = _train(cfg, model, vbad, fold, tmp_path / "val")
    assert _leaves_equal(clean[0], moved[0])                     # training never read them
    assert moved[2]["metrics"] != clean[2]["metrics"] and moved[2]["alpha"] != clean[2]["alpha"]


@pytest.mark.parametrize("edges", ["keep", "cut"])
def test_known_layer_blocks_poison(graphs, model, tmp_path, edges):
    """The HER2ST design: validation = blocks of the test sample's known layer (their
    in-section edges kept or cut). Poisoned test layers or poisoned blocks leave what training
    sees bit-identical; the validation score moves with the blocks only."""
    cfg = tiny_config(val_samples=(), val_known_fraction=0.3, val_block_px=250.0,
                      val_block_edges=edges)
    fold = folds.make_folds(cfg.train, {s: 3 for s in graphs}, seed=0)[0]
    assert fold.val_blocks == ("A",) and not fold.val_samples
    spot = roles.unpadded_nodes(graphs["A"], "spot")
    hidden = fold.hidden_validation("A", spot["layer"], spot["xy"])
    g = graphs["A"]
    label = np.array(g.spot.nodes["label"], copy=True)
    label[hidden] = 50.0
    variants = {"clean": graphs, "test": {**graphs, "A": poison(g, [1, 2])},
                "blocks": {**graphs, "A": g.replace_graphs(
                    {"spot": g.spot._replace(nodes={**g.spot.nodes, "label": label})})}}
    pools = {k: batches.build_pool(v, fold, seed=0) for k, v in variants.items()}
    assert _leaves_equal(pools["clean"].arrays, pools["test"].arrays)
    assert _leaves_equal(pools["clean"].arrays, pools["blocks"].arrays)
    params, _, record, _ = _train(cfg, model, graphs, fold, tmp_path / "clean")
    scores = {k: selection.Validator(cfg, fold, v, model, pools[k].pad)(params)
              for k, v in variants.items()}
    assert scores["clean"].metrics == scores["test"].metrics
    assert np.array_equal(scores["clean"].alpha, scores["test"].alpha)
    assert scores["blocks"].metrics["val_mse"] > 100 * scores["clean"].metrics["val_mse"]
    assert record["step"] in (3, 6, 9, 12)


def test_sweep_choice_ignores_test_labels(graphs, tmp_path, monkeypatch):
    import sweep

    released = []      # jax's compile caches dropped after every run (sweep.release_compiled)
    monkeypatch.setattr(sweep.jax, "clear_caches", lambda: released.append(1))
    cfg = tiny_config(steps=6, checkpoint_every=6)
    genes = [f"g{i}" for i in range(G)]
    grid = {"train.select": ["last", "mse"]}
    bad = {**graphs, "A": poison(graphs["A"], [1, 2])}
    rec = {name: sweep.run_sweep(cfg, grid, tmp_path / name, inputs=(genes, gs, None),
                                 progress=False)
           for name, gs in (("clean", graphs), ("dirty", bad))}
    strip = lambda r: json.dumps(atomic.json_safe(      # NaN (known_mean pcc_gene) -> null
        [{k: v for k, v in c.items() if k not in ("folder", "seconds")}
         for c in r["candidates"]]))
    assert strip(rec["clean"]) == strip(rec["dirty"]) and len(rec["clean"]["candidates"]) == 2
    assert rec["clean"]["candidates"][0]["validation"] != rec["clean"]["candidates"][1]["validation"]
    assert rec["clean"]["chosen"] == rec["dirty"]["chosen"]
    assert len(released) == 2 * (2 + 1)        # 2 sweeps x (2 candidates + the test scoring)
    # only the chosen candidate was scored on test, once, after the choice was written
    chosen = Path(rec["clean"]["candidates"][rec["clean"]["chosen"]["index"]]["folder"])
    others = [Path(c["folder"]) for c in rec["clean"]["candidates"] if Path(c["folder"]) != chosen]
    assert (chosen / "metrics.json").exists() and not any((o / "metrics.json").exists()
                                                          for o in others)
    saved = json.loads((tmp_path / "clean" / "sweep.json").read_text())
    assert saved["chosen"] == rec["clean"]["chosen"]
    assert np.isfinite(rec["clean"]["test"]["asign"]["mean"]["mse"])
    assert not np.isfinite(rec["dirty"]["test"]["asign"]["mean"]["mse"])   # test read once
    # a first stage (--noscore_test) makes the same choice and scores no test at all
    stage = sweep.run_sweep(cfg, grid, tmp_path / "stage", inputs=(genes, graphs, None),
                            progress=False, score_test=False)
    assert stage["chosen"] == rec["clean"]["chosen"] and "test" not in stage
    assert not list((tmp_path / "stage").rglob("metrics.json"))


# ---- references and the blend ---------------------------------------------------------------

def test_ridge_reference_chooses_its_penalty_inside_the_known_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 30))
    w = np.zeros((30, 4))
    w[:3] = rng.normal(size=(3, 4))
    y = x @ w - 5.0 + 0.1 * rng.normal(size=(120, 4))
    pred, pen = references.ridge(x[:80], y[:80], x[80:])
    assert np.mean((pred - y[80:]) ** 2) < 0.05 < np.mean((y[80:] - y[:80].mean(0)) ** 2)
    noise = rng.normal(size=(80, 4)) - 5.0                       # no signal: heavy penalty
    _, pen_noise = references.ridge(x[:80], noise, x[80:])
    assert pen_noise > pen


def test_fit_blend_recovers_the_weight():
    rng = np.random.default_rng(1)
    p_i = rng.normal(size=(400, 5))
    p_s = rng.normal(size=(400, 5))
    y = 0.3 * p_s + 0.7 * p_i
    np.testing.assert_allclose(fit_blend(p_s, p_i, y, shrinkage=0.0), 0.3, atol=1e-6)
    assert np.all(fit_blend(p_s, p_i, p_i + 5 * (p_s - p_i)) == 1.0)     # clipped to [0, 1]


# ---- the diverging run of issue 8, replayed small ----------------------------------------------

def test_long_training_divergence_is_noticed(graphs, tmp_path, caplog):
    """Issue 8: configs/test.py trained 3,000 steps ended at ASIGN MSE 3.59 against 0.59 for
    known_mean, silently. Replayed small: the tiny model on samples whose labels carry no
    learnable signal (all a model can do there is overfit, as one trained far too long does),
    lr 5e-2, 60 steps, the paper's learned blend. The blend drifts toward the network and ASIGN
    ends worse than known_mean on validation: the run warns, metrics.json records it, and
    validation selection keeps the least bad step instead of the last."""
    genes = [f"g{i}" for i in range(G)]
    cfg = tiny_config(learning_rate=5e-2, steps=60, val_every=10, log_every=10,
                      checkpoint_every=30, select="last")
    cfg.model.asign.blend = "learned"
    with caplog.at_level(logging.WARNING):
        pipeline.train_and_evaluate(cfg, tmp_path / "last", inputs=(genes, graphs, None),
                                    progress=False)
    assert "WORSE than known_mean on validation" in caplog.text
    last = json.loads((tmp_path / "last" / "metrics.json").read_text())
    sel = last["validation"]["folds"][0]["selection"]
    assert sel["worse_than_known_mean"] and sel["step"] == 60
    val = [json.loads(l) for l in (tmp_path / "last" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r.get("split") == "val"]
    assert [r["step"] for r in val] == [10, 20, 30, 40, 50, 60]
    assert val[-1]["val_alpha_mean"] > val[0]["val_alpha_mean"]        # the blend drifted
    assert val[-1]["val_mse"] > val[-1]["val_mse_known_mean"]
    cfg.train.select = "mse"
    pipeline.train_and_evaluate(cfg, tmp_path / "best", inputs=(genes, graphs, None),
                                progress=False)
    best = json.loads((tmp_path / "best" / "metrics.json").read_text())
    kept = best["validation"]["folds"][0]["selection"]
    assert kept["step"] == min(val, key=lambda r: r["val_mse"])["step"] < 60
    assert kept["metrics"]["val_mse"] < sel["metrics"]["val_mse"]


def test_crossfit_blend_scores_each_group_with_a_blend_fit_elsewhere():
    """train.val_blend_score='crossfit': each validation spot's blend comes from the other
    groups' (global tiles') spots, and a network half of pure noise does not read as a gain."""
    from types import SimpleNamespace
    from asign_jax.evaluation.metrics import section_metrics
    from asign_jax.models.cli import mix
    rng = np.random.default_rng(0)
    n, g = 60, 40
    signal = rng.normal(size=(n, g))
    truth = signal + rng.normal(size=(n, g))
    prop = signal + 0.8 * rng.normal(size=(n, g))
    noise = rng.normal(size=(n, g))                  # a network half that carries nothing
    tiles = np.repeat(np.arange(6), 10)
    make = lambda: SimpleNamespace(
        preds={"asign_model": noise.astype(np.float32), "asign_propagation": prop.astype(
            np.float32), "asign": np.zeros((n, g), np.float32)},
        scored=np.ones(n, bool), truth=truth, spot={"global_idx": tiles, "layer": np.zeros(n)})
    p = make()
    scoring.crossfit_blend([p])
    for t in range(6):
        rows = tiles == t
        a = fit_blend(noise[~rows], prop[~rows], truth[~rows])
        np.testing.assert_allclose(p.preds["asign"][rows], mix(noise, prop, a)[rows], rtol=1e-5,
                                   atol=1e-5)
    score = lambda x: section_metrics(x, truth)[0]["pcc_gene"]
    assert score(p.preds["asign"]) < score(prop)
    one = make()
    one.spot["global_idx"] = np.zeros(n, int)
    with pytest.raises(ConfigError, match="val_blend_score"):
        scoring.crossfit_blend([one])
