"""MSAGNet + CLI: shapes, real cross-attention, no node mixing, padding safety, gradients."""

from collections import deque

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from asign_jax.config import ConfigError, base_config
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, EDGE_SELF, node_mask
from asign_jax.models.asign import ASIGN
from asign_jax.models.attention import MultiHeadAttention, TransformerLayer
from asign_jax.models.gat import GATLayer, masked_segment_softmax
from asign_jax.models.losses import asign_loss

D_IN, GENES, TOKENS = 16, 5, 4
PER_LAYER = 20                     # spots per section; 2 sections + 1 isolated spot
N_SPOT = 2 * PER_LAYER + 1
CROSS_AT = (0, 7, 14)              # spot i of section 0 <-> spot i of section 1


def _graph(rng, nodes, pairs, types, pad_nodes, pad_edges):
    """Symmetric graph from (a, b) pairs (a == b: self loop), padded jraph-style."""
    s, r, t = [], [], []
    for (a, b), ty in zip(pairs, types):
        s += [a] if a == b else [a, b]
        r += [b] if a == b else [b, a]
        t += [ty] if a == b else [ty, ty]
    n, e = len(next(iter(nodes.values()))), len(s)
    edges = {"weight": rng.uniform(0.05, 1.5, e).astype(np.float32),
             "type": np.array(t, np.int32)}
    g = jraph.GraphsTuple(nodes=nodes, edges=edges, senders=np.array(s, np.int32),
                          receivers=np.array(r, np.int32), n_node=np.array([n]),
                          n_edge=np.array([e]), globals=None)
    return jraph.pad_with_graphs(g, n + pad_nodes, e + pad_edges)


def _spot_pairs():
    pairs, types = [], []
    for layer in range(2):
        o = layer * PER_LAYER
        pairs += [(o + i, o + i + 1) for i in range(PER_LAYER - 1)]
        types += [EDGE_INTRA] * (PER_LAYER - 1)
    pairs += [(i, PER_LAYER + i) for i in CROSS_AT]
    types += [EDGE_CROSS] * len(CROSS_AT)
    pairs.append((N_SPOT - 1, N_SPOT - 1))             # isolated spot: self loop only
    types.append(EDGE_SELF)
    return pairs, types


def _make_sample(seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    layer = np.array([0] * PER_LAYER + [1] * PER_LAYER + [1])
    pos = np.array(list(range(PER_LAYER)) * 2 + [PER_LAYER - 1])
    spot_nodes = {"feat": f32(N_SPOT, D_IN), "label": f32(N_SPOT, GENES) - 5,
                  "label_mask": np.ones(N_SPOT, bool), "known": layer == 0,
                  "region_idx": (3 * layer + np.minimum(pos // 7, 2)).astype(np.int32),
                  "global_idx": layer.astype(np.int32)}
    spot = _graph(rng, spot_nodes, *_spot_pairs(), pad_nodes=3, pad_edges=5)
    region_nodes = {"feat": f32(6, D_IN), "tokens": f32(6, TOKENS, D_IN),
                    "label": f32(6, GENES), "label_mask": np.ones(6, bool),
                    "global_idx": np.array([0, 0, 0, 1, 1, 1], np.int32)}
    region_pairs = [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5)]
    region = _graph(rng, region_nodes, region_pairs, [0, 0, 0, 0, 1, 1, 1], 2, 3)
    glob_nodes = {"feat": f32(3, D_IN), "tokens": f32(3, TOKENS, D_IN), "label": f32(3, GENES),
                  "label_mask": np.ones(3, bool)}       # node 2: a global tile with no spot
    glob = _graph(rng, glob_nodes, [(0, 1), (1, 2), (0, 2)], [EDGE_CROSS, 0, 0], 1, 1)
    known = np.concatenate([layer == 0, np.zeros(3, bool)]) & (np.arange(N_SPOT + 3) % 2 == 0)
    return spot, region, glob, known


def _hops(source, max_hops):
    """Nodes within max_hops of source in the (real) spot graph, by BFS."""
    adj = {i: set() for i in range(N_SPOT)}
    for a, b in _spot_pairs()[0]:
        adj[a].add(b)
        adj[b].add(a)
    dist, todo = {source: 0}, deque([source])
    while todo:
        u = todo.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                todo.append(v)
    return {v for v, d in dist.items() if d <= max_hops}


def _cfg(**kw):
    cfg = base_config().model.asign
    cfg.hidden, cfg.heads = 32, 2
    cfg.update(kw)
    return cfg


_CAPTURE = ("fusion", "cross_attn_region")
# cheap XLA CPU compilation: these tests need the numbers, not a fast binary (halves the time)
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    model = ASIGN(cfg, GENES)
    spot, region, glob, known = _make_sample()
    key = jax.random.key(0)
    params = _compile(lambda k: model.init({"params": k}, spot, region, glob, known,
                                           train=False), key)(key)

    def fwd(params, spot, region, glob, known):
        out, state = model.apply(params, spot, region, glob, known, train=False,
                                 capture_intermediates=lambda m, meth: m.name in _CAPTURE,
                                 mutable=["intermediates"])
        inter = state["intermediates"]
        return out, {"F": inter["fusion"]["__call__"][0],
                     "f_r": inter["cross_attn_region"]["__call__"][0],
                     "attn": inter["cross_attn_region"]["attention_weights"][0]}

    fwd = _compile(fwd, params, spot, region, glob, known)
    return model, params, fwd, (spot, region, glob, known)


def _with_spot_feat(spot, node, delta):
    feat = spot.nodes["feat"].copy()
    feat[node] += delta
    return spot._replace(nodes={**spot.nodes, "feat": feat})


def _changed_rows(a, b):
    return set(np.flatnonzero(np.any(np.asarray(a) != np.asarray(b), axis=-1)).tolist())


def test_outputs_shapes_and_known_rows(setup):
    model, params, fwd, (spot, region, glob, known) = setup
    out, inter = fwd(params, spot, region, glob, known)
    n_s, n_r, n_q = N_SPOT + 3, 8, 4
    shapes = {"spot": (n_s, GENES), "spot_model": (n_s, GENES), "imputed": (n_s, GENES),
              "region": (n_r, GENES), "global": (n_q, GENES), "alpha": (GENES,),
              "reached": (n_s,), "node_alpha": (n_s,)}
    assert {k: v.shape for k, v in out.items()} == shapes
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
    # known rows of the propagation are exactly the labels; eq. 6 blend with alpha on p_s
    np.testing.assert_array_equal(out["imputed"][known], spot.nodes["label"][known])
    a = out["alpha"]
    np.testing.assert_allclose(out["spot"], a * out["spot_model"] + (1 - a) * out["imputed"],
                               rtol=1e-6, atol=1e-6)
    assert out["reached"][known].all() and not out["reached"][N_SPOT - 1]   # isolated spot
    np.testing.assert_array_equal(out["spot"][N_SPOT - 1], out["spot_model"][N_SPOT - 1])
    assert inter["attn"].shape == (n_s, 2, 1, TOKENS)                       # T keys, not one


def test_spot_feature_changes_fusion_and_nothing_beyond_gat_hops(setup):
    model, params, fwd, (spot, region, glob, known) = setup
    node = PER_LAYER + 10                              # middle of section 1
    out0, in0 = fwd(params, spot, region, glob, known)
    out1, in1 = fwd(params, _with_spot_feat(spot, node, 0.5), region, glob, known)

    # cross-attention really uses the query: the region/global tokens are the same, yet the
    # attention weights, f'_s and F of that spot change (and only of that spot)
    assert _changed_rows(in0["attn"].reshape(N_SPOT + 3, -1),
                         in1["attn"].reshape(N_SPOT + 3, -1)) == {node}
    assert _changed_rows(in0["f_r"].reshape(N_SPOT + 3, -1),
                         in1["f_r"].reshape(N_SPOT + 3, -1)) == {node}
    assert _changed_rows(in0["F"], in1["F"]) == {node}

    # only GAT message passing mixes nodes: exactly the gat_layers-hop ball changes
    ball = _hops(node, model.cfg.gat_layers)
    assert ball < set(range(N_SPOT)) and _hops(node, 1) < ball
    assert _changed_rows(out0["spot_model"], out1["spot_model"]) == ball
    np.testing.assert_array_equal(out0["region"], out1["region"])
    np.testing.assert_array_equal(out0["global"], out1["global"])
    # the CLI adds at most cli_iterations more hops
    far = _hops(node, model.cfg.gat_layers + model.cfg.cli_iterations)
    assert _changed_rows(out0["spot"], out1["spot"]) <= far


def test_padding_garbage_does_not_change_real_outputs(setup):
    model, params, fwd, (spot, region, glob, known) = setup
    out0, _ = fwd(params, spot, region, glob, known)

    def poison(g):
        real = np.asarray(jraph.get_node_padding_mask(g))
        real_e = np.asarray(jraph.get_edge_padding_mask(g))
        nodes = {k: (np.where(real.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.nan)
                     .astype(v.dtype) if v.dtype.kind == "f" else v)
                 for k, v in g.nodes.items()}
        edges = {**g.edges, "weight": np.where(real_e, g.edges["weight"], np.nan)
                 .astype(np.float32)}
        return g._replace(nodes=nodes, edges=edges)

    out1, _ = fwd(params, poison(spot), poison(region), poison(glob), known)
    for key, n_real in (("spot", N_SPOT), ("spot_model", N_SPOT), ("imputed", N_SPOT),
                        ("region", 6), ("global", 3)):
        np.testing.assert_array_equal(out1[key][:n_real], out0[key][:n_real], err_msg=key)


def test_training_gradients_reach_every_part(setup):
    model, params, _, (spot, region, glob, known) = setup
    loss_cfg = base_config().model.asign.loss
    label_mask = spot.nodes["label_mask"]

    def step(params, key):
        def f(p):
            out = model.apply(p, spot, region, glob, known, train=True, rngs={"dropout": key})
            return asign_loss(out, spot, region, glob, label_mask & ~known,
                              region.nodes["label_mask"], glob.nodes["label_mask"], loss_cfg)[0]
        return jax.value_and_grad(f)(params)

    step = _compile(step, params, jax.random.key(1))
    l1, g = step(params, jax.random.key(1))
    l2, _ = step(params, jax.random.key(2))
    assert np.isfinite(l1) and l1 != l2                       # dropout is active in training
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(g["params"])}
    assert all(np.isfinite(v).all() for v in flat.values())
    # every parameter gets a gradient (no dead parameters), including those that got exactly
    # zero in the official code: spot projection, cross-attention query, GAT attention
    dead = [name for name, v in flat.items() if not np.abs(v).sum() > 0]
    assert not dead, dead
    assert "cross_attn_region/query/kernel" in flat and "spot_block/layers/gat/a_src" in flat


def test_remat_gives_the_same_loss_and_gradients(setup):
    """model.asign.remat recomputes the graph layers in the backward pass: same parameters (tree
    and values), same loss and gradients, dropout included."""
    model, params, _, (spot, region, glob, known) = setup
    loss_cfg = base_config().model.asign.loss
    label_mask = spot.nodes["label_mask"]
    remat = ASIGN(_cfg(remat=True), GENES)
    assert jax.tree.structure(jax.eval_shape(lambda: remat.init(
        jax.random.key(0), spot, region, glob, known, train=False))) == jax.tree.structure(params)

    def grads(m):
        def f(p):
            out = m.apply(p, spot, region, glob, known, train=True,
                          rngs={"dropout": jax.random.key(3)})
            return asign_loss(out, spot, region, glob, label_mask & ~known,
                              region.nodes["label_mask"], glob.nodes["label_mask"], loss_cfg)[0]
        return _compile(jax.value_and_grad(f), params)(params)
    (l0, g0), (l1, g1) = grads(model), grads(remat)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("switch,absent", [("use_cross_attention", "cross_attn_region"),
                                           ("use_gat", "gat"), ("use_cli", "cli")])
def test_ablation_switches(setup, switch, absent):
    _, _, _, (spot, region, glob, known) = setup
    model = ASIGN(_cfg(**{switch: False}), GENES)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), spot, region, glob, known,
                                               train=False))
    paths = ["/".join(str(getattr(k, "key", k)) for k in p)
             for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert not any(f"/{absent}/" in f"/{p}/" for p in paths)
    out = jax.eval_shape(lambda p: model.apply(p, spot, region, glob, known, train=False), params)
    assert out["spot"].shape == (N_SPOT + 3, GENES)


def test_zero_spot_head_starts_at_the_image_path_plus_offset(setup):
    # spot_head_init=zeros: p_s at init is the spot head's bias (0) + the linear image path +
    # the known-mean offset, so the network starts from them and learns a correction
    _, default_params, _, (spot, region, glob, known) = setup
    assert np.abs(np.asarray(default_params["params"]["spot_head"]["out"]["kernel"])).min() > 0
    model = ASIGN(_cfg(spot_head_init="zeros", image_skip=True, spot_offset="known"), GENES)
    key = jax.random.key(0)
    params = _compile(lambda k: model.init(k, spot, region, glob, known, train=False), key)(key)
    assert not np.any(np.asarray(params["params"]["spot_head"]["out"]["kernel"]))
    w = jax.random.normal(jax.random.key(1), params["params"]["image_skip"]["kernel"].shape)
    params["params"]["image_skip"]["kernel"] = w
    out = _compile(lambda p: model.apply(p, spot, region, glob, known, train=False), params)(params)
    usable = np.asarray(known & spot.nodes["label_mask"] & node_mask(spot))
    offset = np.asarray(spot.nodes["label"])[usable].mean(0)
    np.testing.assert_allclose(out["spot_model"], np.asarray(spot.nodes["feat"]) @ np.asarray(w)
                               + params["params"]["image_skip"]["bias"] + offset,
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="model.asign.spot_head_init"):
        jax.eval_shape(lambda: ASIGN(_cfg(spot_head_init="ones"), GENES).init(
            jax.random.key(0), spot, region, glob, known, train=False))


def test_vmaps_over_a_sample_axis(setup):
    # the training code vmaps over samples: no Python control flow on array values
    model, params, _, sample = setup
    batch = jax.tree.map(lambda *x: np.stack(x), sample, _make_sample(seed=1))
    out = jax.eval_shape(jax.vmap(lambda s, r, g, k: model.apply(params, s, r, g, k,
                                                                 train=False)), *batch)
    assert out["spot"].shape == (2, N_SPOT + 3, GENES) and out["alpha"].shape == (2, GENES)


def test_attention_over_tokens_depends_on_query():
    rng = np.random.default_rng(5)
    mha = MultiHeadAttention(hidden=32, heads=2)
    q = rng.normal(size=(3, 1, 32)).astype(np.float32)
    kv = rng.normal(size=(2, TOKENS, D_IN)).astype(np.float32)
    idx = np.array([0, 1, 0], np.int32)
    params = mha.init(jax.random.key(0), q, kv, idx, train=False)
    out, st = mha.apply(params, q, kv, idx, train=False, mutable=["intermediates"])
    w = np.asarray(st["intermediates"]["attention_weights"][0])        # (3, 2, 1, T)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert not np.allclose(w[0], w[2])          # same key/value tile, different query
    assert not np.allclose(out[0], out[2])
    # gather-after-projection == attending over the pre-gathered token sets
    out_g = mha.apply(params, q, kv[idx], train=False)
    np.testing.assert_allclose(out, out_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 3])
def test_transformer_first_token_only_equals_the_full_layer(length):
    """``TransformerLayer(outputs=1)`` (the rewritten kernel: queries, residual and MLP on the
    node token only) against the reference: the full layer's first token, outputs and
    gradients w.r.t. the parameters and every token."""
    rng = np.random.default_rng(11)
    tokens = jnp.asarray(rng.normal(size=(5, length, 16)).astype(np.float32))
    full, first = TransformerLayer(16, 2), TransformerLayer(16, 2, outputs=1)
    params = full.init(jax.random.key(0), tokens, train=False)
    assert jax.tree.map(jnp.shape, first.init(jax.random.key(0), tokens, train=False)) == \
        jax.tree.map(jnp.shape, params)

    def loss(layer):
        return lambda p, x: jnp.sum(jnp.sin(3.0 * layer.apply(p, x, train=False)[:, 0]))
    np.testing.assert_allclose(first.apply(params, tokens, train=False)[:, 0],
                               full.apply(params, tokens, train=False)[:, 0],
                               rtol=1e-5, atol=1e-6)
    g_ref = jax.grad(loss(full), argnums=(0, 1))(params, tokens)
    g_new = jax.grad(loss(first), argnums=(0, 1))(params, tokens)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("outputs", [None, 1])
def test_transformer_context_rows_equal_appended_tokens(outputs):
    """``TransformerLayer(context=((rows, index), ...))`` (the rewritten kernel: LayerNorm and
    K/V projections on the M_c distinct context rows, then gathered) against the reference:
    the same layer on tokens with the gathered rows appended. Outputs and gradients w.r.t. the
    parameters, the node tokens and the rows (which collect the gathered copies' gradients)."""
    rng = np.random.default_rng(12)
    n, hidden = 7, 16
    node = jnp.asarray(rng.normal(size=(n, 1, hidden)).astype(np.float32))
    rows = [jnp.asarray(rng.normal(size=(m, hidden)).astype(np.float32)) for m in (3, 2)]
    index = [jnp.asarray(rng.integers(0, m, n).astype(np.int32)) for m in (3, 2)]
    layer = TransformerLayer(hidden, 2, outputs=outputs)
    appended = lambda x, r: jnp.concatenate([x] + [r_i[i][:, None] for r_i, i in zip(r, index)],
                                            axis=1)                       # (N, 3, H)
    params = layer.init(jax.random.key(0), appended(node, rows), train=False)
    assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), node, train=False,
                                              context=tuple(zip(rows, index)))) == \
        jax.tree.map(jnp.shape, params)

    def ref(p, x, r):
        return layer.apply(p, appended(x, r), train=False)[:, 0]

    def new(p, x, r):
        return layer.apply(p, x, train=False, context=tuple(zip(r, index)))[:, 0]
    np.testing.assert_allclose(new(params, node, rows), ref(params, node, rows),
                               rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda p, x, r: jnp.sum(jnp.sin(3.0 * f(p, x, r)))
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(params, node, rows)
    g_new = jax.grad(loss(new), argnums=(0, 1, 2))(params, node, rows)
    assert float(jnp.max(jnp.abs(g_ref[2][0]))) > 1e-3      # the rows do get gradient
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_sources_equal_pregathered_keys():
    """``MultiHeadAttention`` over two sources (per-node tokens and gathered tile tokens)
    equals attending over the concatenated, pre-gathered token sets."""
    rng = np.random.default_rng(13)
    mha = MultiHeadAttention(hidden=16, heads=2)
    q = jnp.asarray(rng.normal(size=(4, 1, 16)).astype(np.float32))
    own = jnp.asarray(rng.normal(size=(4, 2, 16)).astype(np.float32))
    tiles = jnp.asarray(rng.normal(size=(3, 5, 16)).astype(np.float32))
    idx = jnp.asarray([2, 0, 2, 1], jnp.int32)
    joined = jnp.concatenate([own, tiles[idx]], axis=1)                  # (4, 7, 16)
    params = mha.init(jax.random.key(0), q, joined, train=False)
    np.testing.assert_allclose(mha.apply(params, q, ((own, None), (tiles, idx)), train=False),
                               mha.apply(params, q, joined, train=False), rtol=1e-5, atol=1e-6)


def test_gat_layer_matches_hand_computation():
    rng = np.random.default_rng(6)
    n, hidden, heads = 5, 8, 2
    h = rng.normal(size=(n, hidden)).astype(np.float32)
    s = np.array([1, 2, 3, 0, 4, 0], np.int32)             # edges into node 0 from 1, 2, 3
    r = np.array([0, 0, 0, 1, 4, 4], np.int32)             # last edge is padding
    w = np.array([0.2, 1.0, 0.7, 1.0, 1.0, np.nan], np.float32)
    t = np.array([EDGE_INTRA, EDGE_CROSS, EDGE_CROSS, EDGE_INTRA, EDGE_SELF, 0], np.int32)
    m = np.array([True] * 5 + [False])
    layer = GATLayer(hidden, heads)
    params = layer.init(jax.random.key(0), h, s, r, w, t, m, train=False)
    p = jax.tree.map(np.asarray, params["params"])
    p["edge_bias"] = rng.normal(size=p["edge_bias"].shape).astype(np.float32)
    out = np.asarray(layer.apply({"params": p}, h, s, r, w, t, m, train=False))

    wh = np.einsum("nd,dkc->nkc", h, p["W"]["kernel"])      # (n, heads, 4)
    lrelu = lambda x: np.where(x > 0, x, 0.2 * x)
    agg = []
    for k in range(heads):
        e = np.array([lrelu(wh[0, k] @ p["a_dst"][k] + wh[j, k] @ p["a_src"][k])
                      + p["edge_bias"][t[i], k] * w[i] for i, j in enumerate(s[:3])])
        a = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        agg.append((a[:, None] * wh[s[:3], k]).sum(0))
    upd = np.concatenate(agg)
    upd = np.where(upd > 0, upd, np.expm1(upd))            # ELU
    x = h[0] + upd
    ref = (x - x.mean()) / np.sqrt(x.var() + 1e-6) * p["ln"]["scale"] + p["ln"]["bias"]
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-5)
    # node 2 receives nothing: update 0, output = LayerNorm(h_2)
    assert np.isfinite(out).all()

    alpha = masked_segment_softmax(jnp.asarray(rng.normal(size=(6, 2))), r, n, m)
    sums = jax.ops.segment_sum(alpha, r, n)
    np.testing.assert_allclose(sums[np.array([0, 1, 4])], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(alpha[5], 0.0)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
