"""Folds, label masking, the training step, checkpoint resume, damaged and foreign checkpoints,
and the non-finite loss stop (the end-to-end run is in test_runfolder.py).

Every training test shares one tiny model object and one padded shape, so the train step is
compiled once for the whole module.
"""

import json
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.errors import ConfigError, TrainingError
from asign_jax.graph import roles
from asign_jax.models import factory
from asign_jax.models.losses import asign_loss
from asign_jax.testing import tiny_model, tiny_sample_graph
from asign_jax.training import (batches, checkpoint, folds, known, loop, standardize,
                                state as state_lib, step)

G = 8


def tiny_config():
    c = tiny_model(base_config())
    c.train.steps = 12
    c.train.log_every = 3
    c.train.checkpoint_every = 4
    c.train.samples_per_step = 2
    c.train.learning_rate = 1e-2
    return c


CFG = tiny_config()


@pytest.fixture(scope="module")
def model():
    return factory.build(CFG, G)[0]


def make_graph(seed, sid, n_layers=3):
    return tiny_sample_graph(seed, sid, G, n_layers)


@pytest.fixture(scope="module")
def graphs():
    return {"A": make_graph(0, "A"), "B": make_graph(1, "B")}


def fold_A():
    return folds.Fold(index=0, test_samples=("A",), train_samples=("B",), known_layer={"A": 0})


def poison(sample, known_layer, spot_value=np.nan, tile_value=1e30):
    """Test-layer labels of every scale replaced by garbage (NaN for spots, 1e30 for tiles)."""
    new = {}
    for scale in roles.SCALES:
        g = sample.graph(scale)
        test = np.asarray(g.nodes["layer"]) != known_layer
        label = np.array(g.nodes["label"], copy=True)
        label[test] = spot_value if scale == "spot" else tile_value
        new[scale] = g._replace(nodes={**g.nodes, "label": label})
    return sample.replace_graphs(new)


# ---- folds ----------------------------------------------------------------------------------

def test_default_folds_leave_one_sample_out():
    c = base_config().train
    fs = folds.make_folds(c, {"B": 3, "A": 2, "X": 1})
    assert [f.test_samples for f in fs] == [("A",), ("B",)]          # X has one layer: never held out
    assert fs[0].train_samples == ("B", "X") and fs[1].train_samples == ("A", "X")
    assert fs[0].known_layer == {"A": 0} and fs[1].name == "fold_1"


def test_explicit_folds_extra_samples_and_rotation():
    c = base_config().train
    c.folds = (("C",),)
    c.extra_train_samples = ("B",)
    fs = folds.make_folds(c, {"C": 5, "B": 1, "D": 2})
    assert len(fs) == 1 and fs[0].train_samples == ("B", "D") and fs[0].role("B") == "train"
    c.known_layer = -1
    assert folds.make_folds(c, {"C": 5, "B": 1})[0].known_layer == {"C": 4}
    c.known_layer = 0
    c.rotate_known_layer = True
    fs = folds.make_folds(c, {"C": 3, "B": 1})
    assert [f.known_layer["C"] for f in fs] == [0, 1, 2] and [f.index for f in fs] == [0, 1, 2]
    c.extra_train_samples = ()
    c.folds = ()
    assert folds.make_folds(c, {"C": 2, "B": 1})[0].test_samples == ("C",)


@pytest.mark.parametrize("folds_cfg,extra,known,msg", [
    ((("Z",),), (), 0, "unknown sample"),
    ((("B",),), (), 0, "1 layer"),
    ((("C",),), ("C",), 0, "extra_train_samples"),
    ((("C",),), (), 3, "known_layer=3"),
])
def test_fold_errors(folds_cfg, extra, known, msg):
    c = base_config().train
    c.folds, c.extra_train_samples, c.known_layer = folds_cfg, extra, known
    with pytest.raises(ConfigError, match=msg):
        folds.make_folds(c, {"C": 3, "B": 1})


# ---- masking --------------------------------------------------------------------------------

def test_mask_sample_replaces_test_labels_in_every_scale(graphs):
    src = graphs["A"]
    bad = poison(src, known_layer=1)
    for scale in roles.SCALES:
        bad.graph(scale).nodes["extra_counts"] = np.ones(len(bad.graph(scale).nodes["layer"]))
    m = roles.mask_sample(bad, "test", known_layer=1)
    for scale in roles.SCALES:
        nodes, orig = m.graph(scale).nodes, src.graph(scale).nodes
        known = np.asarray(orig["layer"]) == 1
        assert "extra_counts" not in nodes                    # non-contract fields are dropped
        assert np.all(nodes["label"][~known] == 0.0)          # replaced, NaN/1e30 gone
        np.testing.assert_array_equal(nodes["label"][known], orig["label"][known])
        np.testing.assert_array_equal(nodes["label_mask"], known)
        np.testing.assert_array_equal(nodes["known"], known)
        np.testing.assert_array_equal(nodes["feat"], orig["feat"])
    assert np.isnan(bad.spot.nodes["label"]).any()           # the input was not modified
    t = roles.mask_sample(src, "train")
    assert t.spot.nodes["label_mask"].all() and not t.spot.nodes["known"].any()


def test_pool_order_is_a_pure_function_of_step(graphs):
    pool = batches.build_pool(graphs, fold_A(), seed=3)
    assert pool.sample_ids == ("A", "B") and pool.roles == ("test", "train")
    epoch = np.concatenate([pool.step_indices(s, 1) for s in range(2)])
    assert sorted(epoch) == [0, 1]                             # each sample once per epoch
    np.testing.assert_array_equal(pool.step_indices(5, 3), pool.step_indices(5, 3))
    assert len(pool.step_indices(0, 5)) == 5                   # S > P repeats samples
    b = pool.take(np.array([1, 0, 1]))
    assert b["spot"].nodes["label"].shape[0] == 3
    a = pool.arrays["spot"].nodes
    assert not a["label_mask"][0][np.asarray(a["layer"][0]) > 0].any()


def test_draw_known_is_exact_and_only_labelled():
    mask = jnp.asarray(np.arange(50) % 5 != 0)                 # 40 labelled
    k = known.draw_known(jax.random.PRNGKey(0), mask, 0.2)
    assert int(k.sum()) == 8 and not bool((k & ~mask).any())
    k2 = known.draw_known(jax.random.PRNGKey(1), mask, 0.2)
    assert not bool((k == k2).all())


def test_draw_known_layer_picks_one_whole_labelled_layer():
    layer = jnp.asarray(np.repeat(np.arange(4), 10))
    mask = jnp.asarray(np.repeat([True, True, False, True], 10))     # layer 2 unlabelled
    seen = set()
    for seed in range(30):
        k = np.asarray(known.draw_known_layer(jax.random.PRNGKey(seed), mask, layer, 0.2))
        layers = set(np.asarray(layer)[k].tolist())
        assert len(layers) == 1 and k.sum() == 10 and not (k & ~np.asarray(mask)).any()
        seen |= layers
    assert seen == {0, 1, 3}
    # one labelled layer only (a held-out sample, a 2D section): falls back to the fraction
    one = jnp.asarray(np.repeat([True, False, False, False], 10))
    k = np.asarray(known.draw_known_layer(jax.random.PRNGKey(0), one, layer, 0.2))
    assert k.sum() == 2 and (k <= np.asarray(one)).all()


def test_standardize_features_per_sample(graphs):
    g = graphs["A"]
    z = standardize.standardize_features(g, "sample")
    for scale in roles.SCALES:
        before, after = g.graph(scale).nodes, z.graph(scale).nodes
        f = np.asarray(after["feat"], np.float64)
        np.testing.assert_allclose(f.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(f.std(0), 1.0, atol=0.05)          # eps 1e-3 in the std
        raw = np.asarray(before["feat"], np.float64)
        if "tokens" in before:                                       # same statistics as feat
            t = (np.asarray(before["tokens"], np.float64) - raw.mean(0)) / (raw.std(0) + 1e-3)
            np.testing.assert_allclose(np.asarray(after["tokens"], np.float64), t, atol=2e-3)
        np.testing.assert_array_equal(after["label"], before["label"])
    assert standardize.standardize_features(g, "none") is g
    with pytest.raises(ValueError, match="feature_norm"):
        standardize.standardize_features(g, "global")


def test_output_bias_starts_at_the_training_label_mean(graphs, model):
    pool = batches.build_pool(graphs, fold_A(), seed=0)
    st = state_lib.create_train_state(model, CFG.train, pool.example(), jax.random.PRNGKey(0))
    st = loop.init_output_bias(st, pool)
    a, b = (roles.unpadded_nodes(graphs[s], "spot") for s in ("A", "B"))
    usable = np.concatenate([b["label"], a["label"][a["layer"] == 0]])   # A: known layer only
    np.testing.assert_allclose(st.params["spot_head"]["out"]["bias"], usable.mean(0), rtol=1e-5)
    # test-layer labels cannot move it
    bad = batches.build_pool({"A": poison(graphs["A"], 0), "B": graphs["B"]}, fold_A(), seed=0)
    for scale, m in loop.label_means(bad).items():
        np.testing.assert_array_equal(m, loop.label_means(pool)[scale])


def test_optimizer_matches_paper_schedule_and_weight_decay():
    c = base_config().train
    c.steps = 100
    sched = state_lib.make_schedule(c)
    assert float(sched(0)) == pytest.approx(1e-4)
    assert float(sched(100)) == pytest.approx(1e-6)           # final_lr_fraction 0.01
    assert float(sched(50)) == pytest.approx(1e-4 * (0.01 + 0.99 * 0.5))
    tx = state_lib.make_optimizer(c)
    p = {"w": jnp.full((3,), 2.0)}
    s = tx.init(p)
    u, s = tx.update({"w": jnp.zeros(3)}, s, p)                # zero gradient: only decay
    np.testing.assert_allclose(u["w"], -1e-4 * 1e-4 * 2.0, rtol=1e-6)
    u, s = tx.update({"w": jnp.zeros(3)}, s, p)                # momentum 0.9 accumulates
    np.testing.assert_allclose(u["w"], -float(sched(1)) * 1.9 * 1e-4 * 2.0, rtol=1e-5)
    c.optimizer = "nope"
    with pytest.raises(ConfigError):
        state_lib.make_optimizer(c)


def test_cli_parameters_get_the_learning_rate_multiplier():
    c = base_config()
    c.train.optimizer, c.train.learning_rate, c.model.asign.cli_lr_multiplier = "adam", 1e-3, 10.0
    params = {"cli": {"theta": jnp.zeros(3)}, "spot_head": {"out": {"bias": jnp.zeros(3)}},
              "image_skip": {"kernel": jnp.zeros(3)}}
    model, _ = factory.build(c, n_genes=3)
    tx = state_lib.make_optimizer(c.train, model.lr_multipliers())
    u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["spot_head"]["out"]["bias"], -1e-3, rtol=1e-3)
    np.testing.assert_allclose(u["cli"]["theta"], -1e-2, rtol=1e-3)
    np.testing.assert_allclose(u["image_skip"]["kernel"], 0.0)     # skip_lr_multiplier 0
    c.model.asign.cli_lr_multiplier, c.model.asign.skip_lr_multiplier = 1.0, 0.5
    model, _ = factory.build(c, n_genes=3)
    tx = state_lib.make_optimizer(c.train, model.lr_multipliers())
    u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["cli"]["theta"], -1e-3, rtol=1e-3)
    np.testing.assert_allclose(u["image_skip"]["kernel"], -5e-4, rtol=1e-3)
    # ASIGN's own factor scales every module, the CLI and image path on top of theirs
    c.model.asign.lr_multiplier = 0.1
    model, _ = factory.build(c, n_genes=3)
    tx = state_lib.make_optimizer(c.train, model.lr_multipliers())
    u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["spot_head"]["out"]["bias"], -1e-4, rtol=1e-3)
    np.testing.assert_allclose(u["cli"]["theta"], -1e-4, rtol=1e-3)
    np.testing.assert_allclose(u["image_skip"]["kernel"], -5e-5, rtol=1e-3)


# ---- training: leakage and resume -----------------------------------------------------------

def _log(path):
    return [{k: v for k, v in json.loads(l).items() if k != "seconds"}
            for l in Path(path).read_text().splitlines()]


def _equal_trees(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_poisoned_test_labels_leave_training_bit_identical(graphs, model, tmp_path):
    cfg = tiny_config()
    bad = {"A": poison(graphs["A"], known_layer=0), "B": graphs["B"]}
    runs = {}
    for name, gs in (("clean", graphs), ("poisoned", bad)):
        pool = batches.build_pool(gs, fold_A(), seed=0)
        st = loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / name, tmp_path / f"{name}.jsonl",
                             progress=False)
        out = step.make_eval_fn(model)(st.params, pool.pad(roles.mask_sample(gs["A"], "test", 0)))
        runs[name] = (jax.device_get(st.params), _log(tmp_path / f"{name}.jsonl"),
                      np.asarray(out["spot"]))
    (p1, l1, o1), (p2, l2, o2) = runs["clean"], runs["poisoned"]
    assert _equal_trees(p1, p2)
    assert l1 == l2 and all(np.isfinite(r["loss"]) for r in l1)
    np.testing.assert_array_equal(o1, o2)
    # the test has teeth: the same poison WITHOUT the mask wrecks the step
    unmasked = roles.mask_sample(bad["A"], "train")
    pool = batches.build_pool(graphs, fold_A(), seed=0)
    leaky = jax.tree.map(lambda *a: np.stack(a), *[pool.pad(unmasked)] * 2)
    st = state_lib.create_train_state(model, cfg.train, pool.example(), jax.random.PRNGKey(0))
    _, metrics = step.make_train_step(model, asign_loss, cfg)(st, leaky, jax.random.PRNGKey(0))
    assert not np.isfinite(float(metrics["loss"]))


def test_resume_after_interruption_matches_uninterrupted_run(graphs, model, tmp_path):
    cfg = tiny_config()                                        # 12 steps, checkpoint every 4
    pool = batches.build_pool(graphs, fold_A(), seed=0)
    full = loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "full", tmp_path / "full.jsonl",
                           progress=False)
    assert loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "cut", tmp_path / "cut.jsonl",
                           stop_after=6, progress=False) is None
    mngr = checkpoint.checkpoint_manager(tmp_path / "cut")
    assert mngr.latest_step() == 4                             # steps 5-6 were lost
    mngr.close()
    resumed = loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "cut", tmp_path / "cut.jsonl",
                              progress=False)
    assert int(resumed.step) == int(full.step) == 12
    assert _equal_trees(jax.device_get(full.params), jax.device_get(resumed.params))
    assert _equal_trees(jax.device_get(full.opt_state), jax.device_get(resumed.opt_state))
    log, cut = _log(tmp_path / "full.jsonl"), _log(tmp_path / "cut.jsonl")
    assert [r["step"] for r in log] == [r["step"] for r in cut] == [3, 6, 9, 12]   # no duplicates
    # each line is the mean over the steps since the previous line; after the resume at step 4
    # the step-6 line averages steps 5-6 only, every other window is recomputed identically
    assert [log[i] for i in (0, 2, 3)] == [cut[i] for i in (0, 2, 3)]
    assert log[-1]["loss"] < 0.85 * log[0]["loss"]             # it learns (from a mean-label start)
    assert log[0]["lr"] == pytest.approx(float(state_lib.make_schedule(cfg.train)(2)))
    # a finished fold restores its final params
    fresh = state_lib.create_train_state(model, cfg.train, pool.example(), jax.random.PRNGKey(0))
    restored, at = checkpoint.restore_params(fresh, tmp_path / "cut")
    assert at == 12 and _equal_trees(jax.device_get(full.params), restored)


# ---- damaged and foreign checkpoints, non-finite loss ------------------------------------------

def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(graphs, model, tmp_path,
                                                                  caplog):
    cfg = tiny_config()                                        # 12 steps, checkpoint every 4
    pool = batches.build_pool(graphs, fold_A(), seed=0)
    full = loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "full", None,
                           progress=False)
    assert loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "cut", None,
                           stop_after=10, progress=False) is None          # kept: steps 4, 8
    for f in (tmp_path / "cut" / "8" / "state").rglob("d/*"):              # damage step 8
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        resumed = loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path / "cut", None,
                                  progress=False)
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].startswith(f"{(tmp_path / 'cut').absolute()}/8: checkpoint cannot be read")
    assert (tmp_path / "cut" / "damaged_8").is_dir()           # set aside, not deleted
    assert int(resumed.step) == 12                            # replayed steps 5-12 from step 4
    assert _equal_trees(jax.device_get(full.params), jax.device_get(resumed.params))


def test_resume_with_another_model_or_optimiser_is_refused(graphs, model, tmp_path):
    cfg = tiny_config()
    pool = batches.build_pool(graphs, fold_A(), seed=0)
    assert loop.train_fold(cfg, model, asign_loss, pool, 0, tmp_path, None, stop_after=4,
                           progress=False) is None
    wider = tiny_config()
    wider.model.asign.hidden = 32
    other, _ = factory.build(wider, G)
    with pytest.raises(ConfigError) as e:
        loop.train_fold(wider, other, asign_loss, pool, 0, tmp_path, None, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path.absolute()}/4: checkpoint of another "
                                              "model or optimiser (")
    assert re.search(r"\(params/\S+ is float32\[[\d, ]*16[\d, ]*\] there, "
                     r"float32\[[\d, ]*32[\d, ]*\] now\)", msg), msg
    adam = tiny_config()
    adam.train.optimizer = "adam"                              # trained with SGD + momentum
    st = state_lib.create_train_state(model, adam.train, pool.example(), jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="checkpoint of another model or optimiser "
                                          r"\(opt_state/"):
        checkpoint.restore_params(st, tmp_path)


def test_non_finite_loss_stops_the_fold_at_once(graphs, model, tmp_path):
    cfg = tiny_config()
    bad = {"A": graphs["A"], "B": poison(graphs["B"], known_layer=0)}  # NaN training labels
    pool = batches.build_pool(bad, fold_A(), seed=0)
    with pytest.raises(TrainingError) as e:
        loop.train_fold(cfg, model, asign_loss, pool, 3, tmp_path / "f", tmp_path / "log.jsonl",
                        progress=False)
    msg = str(e.value)
    assert msg.startswith("fold 3: training loss is nan at step 1 (") and "\n" not in msg
    assert "no checkpoint yet" in msg and not (tmp_path / "log.jsonl").exists()
