"""Spatial tiles (training/subgraph.py): exact tiled imputation, label hygiene of training tiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.graph import roles
from asign_jax.graph.contract import SCALES
from asign_jax.graph.padding import budget_for, pad_sample
from asign_jax.models import factory
from asign_jax.testing import spatial_sample_graph, tiny_model
from asign_jax.training import batches, folds, state as state_lib, step, subgraph


def _config():
    c = tiny_model(base_config())
    c.train.max_graph_nodes = 150
    return c


@pytest.mark.parametrize("whole_graph_cli,start", [(False, "model"), (True, "model"),
                                                    (True, "known_mean")],
                         ids=["exact_halo", "network_tiles", "network_tiles_mean_start"])
def test_tiled_imputation_equals_full_graph(whole_graph_cli, start):
    """Both tiled paths give the full graph's outputs: exact tiles (halo gat_layers +
    cli_iterations, every model) and ASIGN's network tiles (halo gat_layers) + one propagation
    over the whole graph (``tiled_eval``'s choice for ASIGN), with either start of the
    propagation (``model.asign.cli_start``)."""
    c = _config()
    c.model.asign.cli_start = start
    g = spatial_sample_graph(0, side=10, sample_id="S")            # 3 x 100 spots
    masked = roles.mask_sample(g, "test", known_layer=1)
    model = factory.build(c, 6)[0]
    full = {s: pad_sample(masked, budget_for([masked])).graph(s) for s in SCALES}
    st = state_lib.create_train_state(model, c.train, full, jax.random.PRNGKey(0))
    # a trained-looking CLI: per-node trust and per-gene blend away from their 0.5 init
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda x: x, st.params)
    params["cli"]["node_alpha"]["kernel"] = jnp.asarray(rng.normal(0, 0.5, params["cli"][
        "node_alpha"]["kernel"].shape), jnp.float32)
    params["cli"]["theta"] = jnp.asarray(rng.normal(0, 1.0, 6), jnp.float32)
    fn = step.make_eval_fn(model)
    eval_fn = lambda s: fn(params, s)
    ref = {k: np.asarray(v) for k, v in eval_fn(full).items()}
    assert np.ptp(ref["node_alpha"][:300]) > 0.01

    exact = factory.graph_hops(c, exact=True)
    assert exact == 3                                              # 1 GAT layer + 2 CLI hops
    halo = factory.graph_hops(c, exact=False) if whole_graph_cli else exact
    tiles = subgraph.tiles_of(masked, 150, halo, hide_halo_labels=False)
    assert len(tiles) > 1 and max(len(t.nodes["spot"]) for t in tiles) <= 150
    cores = np.concatenate([t.nodes["spot"][t.core["spot"]] for t in tiles])
    assert np.array_equal(np.sort(cores), np.arange(300))          # each spot core once
    if whole_graph_cli:
        out = subgraph.tiled_eval(eval_fn, c)(masked)               # ASIGN's default
    else:
        out = subgraph.impute_tiled(eval_fn, masked, 150, exact)
    n = subgraph.sizes(masked)
    for key in ("spot", "spot_model", "imputed", "region", "global", "node_alpha"):
        scale = {"region": "region", "global": "global"}.get(key, "spot")
        np.testing.assert_allclose(out[key], ref[key][:n[scale]], rtol=2e-5, atol=2e-5,
                                   err_msg=key)
    np.testing.assert_array_equal(out["reached"], ref["reached"][:n["spot"]])
    np.testing.assert_allclose(out["alpha"], ref["alpha"], rtol=1e-6)
    # the known layer's labels pass through unchanged and the test layers were imputed
    known = np.asarray(masked.spot.nodes["known"])
    np.testing.assert_array_equal(out["imputed"][known], np.asarray(masked.spot.nodes["label"])[known])
    assert out["reached"][~known].any()
    if whole_graph_cli:        # the small halo alone would NOT be exact inside the tiles
        plain = subgraph.impute_tiled(eval_fn, masked, 150, halo)
        assert not np.allclose(plain["imputed"], ref["imputed"][:300], atol=2e-5)


def test_training_tiles_one_sample_each_and_no_test_labels():
    a = spatial_sample_graph(1, side=10, sample_id="A")
    b = spatial_sample_graph(2, side=10, sample_id="B")
    # tag each sample's features (mixing would show) and poison B's test layers' labels
    for g, off in ((a, 100.0), (b, -100.0)):
        for s in SCALES:
            g.graph(s).nodes["feat"][:] += off
    for s in SCALES:
        nodes = b.graph(s).nodes
        test = np.asarray(nodes["layer"]) != 0
        nodes["label"][test] = np.nan
        nodes["label"][test & (np.arange(len(test)) % 2 == 0)] = 1e30
    fold = folds.Fold(index=0, test_samples=("B",), train_samples=("A",), known_layer={"B": 0})
    pool = batches.build_pool({"A": a, "B": b}, fold, seed=0, max_nodes=150, halo=1)
    assert pool.tiled and len(pool) > 2
    assert {i.split("#")[0] for i in pool.sample_ids} == {"A", "B"}
    labelled = {"A": 0, "B": 0}
    for k, sid in enumerate(pool.sample_ids):
        item = jax.tree.map(lambda x: x[k], pool.arrays)
        owner = sid.split("#")[0]
        for s in SCALES:
            g = item[s]
            n = int(g.n_node[0])
            feat = np.asarray(g.nodes["feat"])[:n]
            assert (feat > 50).all() if owner == "A" else (feat < -50).all(), (sid, s)
            label, mask = np.asarray(g.nodes["label"]), np.asarray(g.nodes["label_mask"])
            assert np.isfinite(label).all() and np.abs(label).max() < 1e3, (sid, s)
            if owner == "B":
                assert not mask[:n][np.asarray(g.nodes["layer"])[:n] != 0].any()
            if s == "spot":
                labelled[owner] += int(mask.sum())
    # each labelled spot is a core (loss) node of exactly one tile
    assert labelled == {"A": 300, "B": 100}
    assert pool.roles[pool.sample_ids.index(next(i for i in pool.sample_ids if i[0] == "B"))] == "test"


def test_training_halo_is_train_subgraph_halo_or_gat_layers():
    c = base_config()
    c.train.max_graph_nodes = 500
    assert subgraph.pool_options(c) == {"max_nodes": 500, "halo": c.model.asign.gat_layers}
    c.train.subgraph_halo = 1
    assert subgraph.pool_options(c)["halo"] == 1
    c.model.asign.use_gat, c.train.subgraph_halo = False, -1
    assert subgraph.pool_options(c)["halo"] == 0


def test_tile_halo_is_the_chosen_models_own_hops():
    """The halo comes from the model being trained: ASIGN's gat_layers (+ cli_iterations for
    exact tiles); a per-spot baseline reads no edges (0), whatever ASIGN's block says."""
    c = base_config()
    c.model.asign.gat_layers, c.model.asign.cli_iterations = 3, 5
    assert factory.graph_hops(c) == 3 and factory.graph_hops(c, exact=True) == 8
    c.model.asign.use_cli = False
    assert factory.graph_hops(c, exact=True) == 3
    c.model.name = "asign2d"
    assert factory.graph_hops(c) == 3
    for name in ("stnet", "triplex", "egn"):
        c.model.name = name
        assert factory.graph_hops(c, exact=True) == 0
        assert subgraph.pool_options(c)["halo"] == 0
