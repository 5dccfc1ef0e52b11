"""Cross-layer Imputation: label propagation (eq. 5) and the eq.-6 blend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asign_jax.models import cli as imputation
from asign_jax.models.cli import CrossLayerImputation, blend, propagate, propagate_jit


def _undirected(pairs, weights):
    """Both directions of each (a, b) pair, with the same weight."""
    s = [a for a, b in pairs] + [b for a, b in pairs]
    r = [b for a, b in pairs] + [a for a, b in pairs]
    w = list(weights) + list(weights)
    return np.array(s, np.int32), np.array(r, np.int32), np.array(w, np.float32)


@pytest.fixture(params=[True, False], ids=["dense", "segment"], autouse=True)
def dense_mode(request, monkeypatch):
    """Every test runs with both forms of the propagation (``propagate(dense=...)``)."""
    monkeypatch.setattr(imputation, "DENSE_MAX_NODES", 1 << 30 if request.param else 0)
    return request.param


def _run(pred, labels, known, s, r, w, alpha, n_iter=10, edge_mask=None, node_mask=None):
    n, e = pred.shape[0], s.shape[0]
    edge_mask = np.ones(e, bool) if edge_mask is None else edge_mask
    node_mask = np.ones(n, bool) if node_mask is None else node_mask
    out, reached = propagate_jit(jnp.asarray(pred), jnp.asarray(labels), jnp.asarray(known),
                                 s, r, jnp.asarray(w), jnp.asarray(alpha), edge_mask, node_mask,
                                 n_iter=n_iter)
    return np.asarray(out), np.asarray(reached)


def test_chain_hand_computed_weighted_average():
    # chain 0 - 1 - 2, node 0 known; e(0,1) = 0.5, e(1,2) = 2.0
    s, r, w = _undirected([(0, 1), (1, 2)], [0.5, 2.0])
    alpha = np.array([0.8, 0.3, 0.6], np.float32)
    pred = np.array([[9.0], [-1.0], [4.0]], np.float32)
    labels = np.array([[2.0], [np.nan], [np.nan]], np.float32)   # unknown labels never read
    known = np.array([True, False, False])

    out1, reached1 = _run(pred, labels, known, s, r, w, alpha, n_iter=1)
    # t=1: node 1 is reached through node 0: average of y0 (w = .8*.5) and p2 = 4 (w = .6*2)
    p1 = (0.8 * 0.5 * 2.0 + 0.6 * 2.0 * 4.0) / (0.8 * 0.5 + 0.6 * 2.0)
    np.testing.assert_allclose(out1[:, 0], [2.0, p1, 4.0], rtol=1e-6)
    np.testing.assert_array_equal(reached1, [True, True, False])

    out2, reached2 = _run(pred, labels, known, s, r, w, alpha, n_iter=2)
    # t=2: node 2's only in-neighbour is node 1 -> its t=1 value; node 1 sees p2 still 4
    np.testing.assert_allclose(out2[:, 0], [2.0, p1, p1], rtol=1e-6)
    np.testing.assert_array_equal(reached2, [True, True, True])

    out3, _ = _run(pred, labels, known, s, r, w, alpha, n_iter=3)
    p1_3 = (0.8 * 0.5 * 2.0 + 0.6 * 2.0 * p1) / (0.8 * 0.5 + 0.6 * 2.0)
    np.testing.assert_allclose(out3[:, 0], [2.0, p1_3, p1], rtol=1e-6)


def _random_graph(rng, n=30, n_known=6):
    """Random symmetric graph on n nodes, plus nodes 25..29 as a separate component."""
    pairs = [(i, i + 1) for i in range(24)] + [(int(a), int(b)) for a, b in
                                               rng.integers(0, 25, (20, 2)) if a != b]
    pairs += [(25, 26), (26, 27), (27, 28), (28, 29)]
    s, r, w = _undirected(pairs, rng.uniform(0.05, 2.0, len(pairs)))
    pred = rng.normal(-5, 1, (n, 7)).astype(np.float32)
    labels = rng.normal(-5, 1, (n, 7)).astype(np.float32)
    known = np.zeros(n, bool)
    known[rng.choice(25, n_known, replace=False)] = True
    alpha = rng.uniform(0.05, 0.95, n).astype(np.float32)
    return pred, labels, known, s, r, w, alpha


def test_known_fixed_and_unreachable_keeps_prediction():
    pred, labels, known, s, r, w, alpha = _random_graph(np.random.default_rng(0))
    out, reached = _run(pred, labels, known, s, r, w, alpha)
    np.testing.assert_array_equal(out[known], labels[known])          # bit-identical
    np.testing.assert_array_equal(out[25:], pred[25:])                # no path to a known node
    assert not reached[25:].any() and reached[known].all()
    assert not np.allclose(out[:25][~known[:25]], pred[:25][~known[:25]])


def test_beyond_n_iter_hops_keeps_prediction():
    # chain 0..14, only node 0 known: after 10 iterations nodes 1..10 are reached, 11..14 not
    s, r, w = _undirected([(i, i + 1) for i in range(14)], np.ones(14))
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(15, 3)).astype(np.float32)
    labels = rng.normal(size=(15, 3)).astype(np.float32)
    known = np.arange(15) == 0
    out, reached = _run(pred, labels, known, s, r, w, np.full(15, 0.5, np.float32), n_iter=10)
    np.testing.assert_array_equal(reached, np.arange(15) <= 10)
    np.testing.assert_array_equal(out[11:], pred[11:])
    assert not np.allclose(out[1:11], pred[1:11])


def test_padding_garbage_does_not_leak():
    rng = np.random.default_rng(2)
    pred, labels, known, s, r, w, alpha = _random_graph(rng)
    n, e = pred.shape[0], s.shape[0]
    # pad: 4 nodes and 6 edges of garbage at the end (padded edges join padded nodes)
    pad_n, pad_e = 4, 6
    node_mask = np.arange(n + pad_n) < n
    edge_mask = np.arange(e + pad_e) < e
    s_p = np.concatenate([s, np.full(pad_e, n, np.int32)])
    r_p = np.concatenate([r, np.array([n, n + 1, n + 2, n + 3, n, n + 1], np.int32)])

    def padded(x, fill):
        return np.concatenate([x, np.full((pad_n,) + x.shape[1:], fill, x.dtype)])

    outs = []
    for fill in (0.0, np.nan, 1e30):
        w_p = np.concatenate([w, np.full(pad_e, fill, np.float32)])
        known_p = np.concatenate([known, np.ones(pad_n, bool)])  # padded "known" is ignored
        out, reached = _run(padded(pred, fill), padded(labels, fill), known_p, s_p, r_p, w_p,
                            padded(alpha, fill), edge_mask=edge_mask, node_mask=node_mask)
        assert np.isfinite(out).all() and not reached[n:].any()
        outs.append(out[:n])
    ref, _ = _run(pred, labels, known, s, r, w, alpha)
    for out in outs:
        np.testing.assert_array_equal(out, ref)

    # gradients with respect to the prediction and alpha stay finite with NaN padding
    w_p = np.concatenate([w, np.full(pad_e, np.nan, np.float32)])

    def f(p, a):
        out, _ = propagate(p, padded(labels, np.nan), np.concatenate([known, np.ones(pad_n, bool)]),
                           s_p, r_p, w_p, a, edge_mask, node_mask, 10)
        return jnp.sum(out ** 2)

    gp, ga = jax.jit(jax.grad(f, argnums=(0, 1)))(padded(pred, np.nan), padded(alpha, np.nan))
    assert np.isfinite(gp).all() and np.isfinite(ga).all()
    assert np.abs(ga[:n]).sum() > 0 and (np.asarray(gp[n:]) == 0).all()


def test_jit_compiles_once_and_loops():
    traces = []

    def f(*args):
        traces.append(1)
        return propagate(*args, n_iter=10)

    jf = jax.jit(f)
    for seed in range(3):
        args = _random_graph(np.random.default_rng(seed))
        pred, labels, known, s, r, w, alpha = args
        # same padded shapes, different values and graphs
        jf(pred, labels, known, s[:40], r[:40], w[:40], alpha, np.ones(40, bool),
           np.ones(30, bool))
    assert len(traces) == 1
    jaxpr = str(jax.make_jaxpr(f)(pred, labels, known, s[:40], r[:40], w[:40], alpha,
                                  np.ones(40, bool), np.ones(30, bool)))
    # lax.fori_loop with static bounds lowers to one scan of length 10 (reverse-differentiable),
    # not 10 unrolled copies
    assert jaxpr.count("scan[") == 1 and "length=10" in jaxpr


def test_dense_and_segment_forms_agree_with_gradients():
    rng = np.random.default_rng(5)
    pred, labels, known, s, r, w, alpha = _random_graph(rng)

    def f(p, a, dense):
        out, reached = propagate(p, labels, known, s, r, w, a, np.ones(s.shape[0], bool),
                                 np.ones(30, bool), 10, dense=dense)
        return jnp.sum(jnp.sin(out)), (out, reached)

    results = [jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True),
                       static_argnums=2)(pred, alpha, d) for d in (True, False)]
    (_, (out_d, reached_d)), (gp_d, ga_d) = results[0]
    (_, (out_s, reached_s)), (gp_s, ga_s) = results[1]
    np.testing.assert_array_equal(reached_d, reached_s)
    np.testing.assert_allclose(out_d, out_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out_d)[known], labels[known])
    np.testing.assert_allclose(gp_d, gp_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ga_d, ga_s, rtol=1e-4, atol=1e-5)
    assert np.abs(ga_d).sum() > 0


def test_vanishing_trust_keeps_gradients_finite(dense_mode):
    """Learned alpha_j = sigmoid(.) can underflow toward 0 for every in-neighbour of a node
    (it did: ASIGN without GAT on the synthetic demo). Such a node keeps its value, and the
    loss and every gradient stay finite; nodes with normal trust are unchanged."""
    rng = np.random.default_rng(7)
    pred, labels, known, s, r, w, alpha = _random_graph(rng)
    node = int(np.flatnonzero(~known[:25])[0])
    tiny = alpha.copy()
    tiny[s[r == node]] = 1e-20            # all senders into ``node``: denom^2 underflows
    assert not np.isin(node, s[r == node])

    def f(p, a):
        out, _ = propagate(p, labels, known, s, r, w, a, np.ones(s.shape[0], bool),
                           np.ones(30, bool), 10, dense=dense_mode)
        return jnp.sum(jnp.sin(out)), out

    (loss, out), (gp, ga) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        pred, tiny)
    assert np.isfinite(loss) and np.isfinite(gp).all() and np.isfinite(ga).all()
    np.testing.assert_array_equal(np.asarray(out)[node], pred[node])
    assert np.isfinite(np.asarray(out)).all()


def test_blend_puts_alpha_on_model_prediction():
    pred = jnp.full((2, 3), 1.0)
    imputed = jnp.full((2, 3), -1.0)
    theta = jnp.array([-30.0, 0.0, 30.0])
    out, alpha = blend(pred, imputed, theta)
    np.testing.assert_allclose(alpha, [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0], [-1.0, 0.0, 1.0], atol=1e-6)   # alpha -> 1 = model


def test_cli_module_init_and_alpha():
    pred, labels, known, s, r, w, _ = _random_graph(np.random.default_rng(3))
    h = np.random.default_rng(4).normal(size=(30, 8)).astype(np.float32)
    mod = CrossLayerImputation(n_iter=10)
    args = (h, pred, labels, known, s, r, w, np.ones(s.shape[0], bool), np.ones(30, bool))
    params = mod.init(jax.random.key(0), *args)
    np.testing.assert_array_equal(params["params"]["theta"], np.zeros(7))
    assert set(params["params"]) == {"theta", "node_alpha"}
    out = mod.apply(params, *args)
    np.testing.assert_allclose(out["alpha"], 0.5)
    # at init every alpha_j = 0.5, so the propagation is the plain e_ij-weighted average
    ref, _ = _run(pred, labels, known, s, r, w, np.full(30, 0.5, np.float32))
    np.testing.assert_allclose(out["imputed"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["spot"], 0.5 * pred + 0.5 * ref, rtol=1e-5, atol=1e-5)


def test_known_mean_start_takes_the_network_out_of_the_propagation():
    """model.asign.cli_start="known_mean": the propagation starts every unknown node at the known
    spots' mean, so p_i does not depend on p_s at all (p_s reaches p'_s through eq. 6 only);
    "model" (the paper) starts at p_s. NaN labels outside the known set never enter."""
    pred, labels, known, s, r, w, _ = _random_graph(np.random.default_rng(5))
    labels = np.where(known[:, None], labels, np.nan).astype(np.float32)
    h = np.zeros((30, 8), np.float32)
    tail = (s, r, w, np.ones(s.shape[0], bool), np.ones(30, bool))
    mod = CrossLayerImputation(n_iter=3, node_alpha="fixed", start="known_mean")
    params = mod.init(jax.random.key(0), h, pred, labels, known, *tail)
    a = mod.apply(params, h, pred, labels, known, *tail)
    b = mod.apply(params, h, pred + 5.0, labels, known, *tail)
    np.testing.assert_allclose(a["imputed"], b["imputed"], rtol=1e-6)
    assert np.isfinite(np.asarray(a["imputed"])).all()
    mean = np.nanmean(np.where(known[:, None], labels, np.nan), 0)
    ref, _ = _run(np.broadcast_to(mean, pred.shape).astype(np.float32),
                  np.nan_to_num(labels), known, s, r, w, np.ones(30, np.float32), n_iter=3)
    np.testing.assert_allclose(a["imputed"], ref, rtol=1e-5, atol=1e-5)
    paper = CrossLayerImputation(n_iter=3, node_alpha="fixed")
    c = paper.apply(params, h, pred + 5.0, labels, known, *tail)
    assert not np.allclose(c["imputed"], b["imputed"])
    with pytest.raises(ValueError, match="model.asign.cli_start"):
        imputation.start_value(pred, labels, known, "zeros")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
