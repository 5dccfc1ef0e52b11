"""The benchmark scripts under experiments/ run end to end at a tiny size.

They are not timed here (no wall-clock asserts); the point is that a change to the pipeline's
data structures (e.g. a new field ``build_sample_graph`` reads) cannot silently break the
scripts the README's performance numbers come from.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest


def test_visium_block_builds_a_labelled_3d_graph():
    from visium_block import make_block
    timings = {}
    g = make_block(150, n_sections=3, n_genes=12, feat_dim=16, n_tokens=2, timings=timings)
    layer = np.asarray(g.spot.nodes["layer"])
    assert int(g.spot.n_node[0]) == 450 and np.bincount(layer).tolist() == [150, 150, 150]
    assert np.asarray(g.spot.nodes["label_mask"]).all()
    assert g.spot.nodes["label"].shape == (450, 12)
    assert g.stats["spot"]["n_cross"] > 0 and g.stats["spot"]["n_intra"] > 0
    assert set(timings) == {"data", "graph"}


def _args(**kw):
    return argparse.Namespace(**kw)


def test_bench_scale_trains_tiles_and_imputes_a_tiny_block(monkeypatch):
    import bench_scale
    import visium_block
    from asign_jax.config import base_config
    from asign_jax.testing import tiny_model

    def small_config():          # a small model, and a radius-limited (tileable) 3D graph
        c = tiny_model(base_config())
        c.graph.cosine_all_max_nodes = 0
        return c
    monkeypatch.setattr(bench_scale, "base_config", small_config)
    monkeypatch.setattr(visium_block, "base_config", small_config)
    # max_nodes below the block's 4 x 150 spots: the epoch and the imputation run in tiles
    a = _args(sections=4, genes=8, din=16, tokens=2, max_nodes=400, no_train=False,
              remat=True, dtype="float32")
    row = bench_scale.run_size(150, a)
    assert row["spots"] == 600 and row["tiles_train"] > 1 and row["tiles_impute"] > 1
    assert all(np.isfinite(row["train_loss"]))
    assert row["imputed_finite"] and row["epoch_s"] > 0 and row["peak_rss_gb"] > 0


def test_bench_torch_row_has_equal_losses_at_a_tiny_size():
    pytest.importorskip("torch", reason="torch is optional (pip install torch==2.13.0)")
    import bench_torch
    a = _args(sections=2, din=16, tokens=2, genes=8, hidden=16, heads=2, steps=1, warm=1,
              dtype="float32")
    row = bench_torch.run_size(100, a)
    assert row["equal_loss"] and row["cli_equal"], row
    assert np.isclose(row["loss_jax"], row["loss_torch"], rtol=1e-3)
    assert row["jax_step_ms"] > 0 and row["torch_step_ms"] > 0


def test_bench_torch_times_each_step_after_an_untimed_one_of_the_same_framework():
    """The interleaving warms each framework up again after the other's steps (first step
    after a framework switch is not timed)."""
    import bench_torch
    calls = []
    med = bench_torch.interleaved({"j": lambda: calls.append("j"),
                                   "t": lambda: calls.append("t")}, 2, warm=1)
    assert calls == ["j", "j", "t", "t"] * 2 and set(med) == {"j", "t"}
    calls.clear()
    bench_torch.interleaved({"j": lambda: calls.append("j"), "t": lambda: calls.append("t")}, 2,
                            warm=0)
    assert calls == ["j", "t"] * 2


def test_bench_torch_sample_crosses_to_torch_in_bfloat16():
    """``--dtype bfloat16``: the bfloat16 sample (ml_dtypes floats, which numpy does not call
    np.floating and torch cannot read) reaches the PyTorch port as the same bfloat16 values."""
    torch = pytest.importorskip("torch", reason="torch is optional (pip install torch==2.13.0)")
    import jax
    import ml_dtypes
    import bench_torch
    import bench_torch_model
    spot, region, glob, known = bench_torch.make_sample(40, _args(sections=2, din=8, tokens=2,
                                                                   genes=4))
    bf = lambda g: jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16)
                                if np.asarray(x).dtype.kind == "f" else x, g)
    spot, region, glob = bf(spot), bf(region), bf(glob)
    tg = bench_torch_model.to_torch_sample(spot, region, glob, known, "cpu", torch.bfloat16)
    feat = tg["spot"]["feat"]
    assert feat.dtype == torch.bfloat16 and tg["spot"]["graph"][2].dtype == torch.bfloat16
    np.testing.assert_array_equal(feat.float().numpy(), np.asarray(spot.nodes["feat"], np.float32))
    assert tg["spot"]["graph"][0].dtype == torch.int64


def test_graph_choice_scores_validation_rows_only():
    """experiments/graph_choice.py's scorer: the parameter-free propagation and the references
    on the validation blocks (cut view), per section; poisoned test layers change nothing."""
    import graph_choice
    from asign_jax.config import base_config
    from asign_jax.training import folds
    from asign_jax.testing import random_sample_graph
    c = base_config()
    c.train.folds, c.train.val_known_fraction, c.train.known_layer = (("A",),), 0.3, 1
    c.train.val_block_unit, c.train.val_block_edges = "global_tile", "cut"
    g = random_sample_graph(3, n_layers=3, spots_per_layer=24, n_region=12, n_global=12,
                            n_genes=5, feat_dim=8, n_tokens=2, k=6, sample_id="A")
    fold = folds.make_folds(c.train, {"A": 3})[0]
    lab = np.array(g.spot.nodes["label"], copy=True)
    lab[np.asarray(g.spot.nodes["layer"]) != 1] = np.nan
    bad = g.replace_graphs({"spot": g.spot._replace(nodes={**g.spot.nodes, "label": lab})})
    out = [graph_choice.propagation_scores(c, {"A": x}, fold) for x in (g, bad)]
    assert [s["layer"] for s in out[0]] == [1]                    # the known layer's blocks
    assert set(out[0][0]["methods"]) >= {"propagation", "known_mean", "ridge", "overlap"}
    assert np.isfinite(out[0][0]["methods"]["propagation"]["mse"])
    assert json.dumps(out[0]) == json.dumps(out[1])               # NaN-safe equality
