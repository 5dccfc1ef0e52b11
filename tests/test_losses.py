"""Losses (eq. 7-9): per-gene PCC, masks that really hide labels, the weighted total."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.models.losses import asign_loss, masked_mse, pcc_loss


def _np_pcc_loss(p, t):
    r = [np.corrcoef(p[:, g], t[:, g])[0, 1] for g in range(p.shape[1])]
    return 1.0 - np.mean(r)


def test_pcc_matches_numpy_per_gene_over_masked_nodes():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    t[:, :3] += 2 * p[:, :3]
    mask = rng.random(50) < 0.6
    got = pcc_loss(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(mask))
    np.testing.assert_allclose(got, _np_pcc_loss(p[mask], t[mask]), atol=1e-4)
    # per gene across nodes: invariant to a per-gene affine map of the prediction
    p2 = 3.0 * p + rng.normal(size=(1, 6)) * 10
    got2 = pcc_loss(jnp.asarray(p2, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(mask))
    np.testing.assert_allclose(got2, got, atol=1e-4)
    assert float(pcc_loss(jnp.asarray(t), jnp.asarray(t), jnp.ones(50, bool))) < 1e-5


@pytest.mark.parametrize("case", ["constant", "all_masked", "one_node"])
def test_pcc_degenerate_inputs_are_finite(case):
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
    mask = jnp.ones(20, bool)
    if case == "constant":
        p, t = jnp.full((20, 4), -5.0), jnp.full((20, 4), 3.0)
    elif case == "all_masked":
        mask = jnp.zeros(20, bool)
    else:
        mask = jnp.arange(20) == 3
    loss, (gp, gt) = jax.value_and_grad(pcc_loss, argnums=(0, 1))(p, t, mask)
    assert np.isfinite(loss) and np.isfinite(gp).all() and np.isfinite(gt).all()
    np.testing.assert_allclose(loss, 1.0, atol=1e-6)           # r = 0 there
    if case != "constant":
        assert (np.asarray(gp) == 0).all()


def test_masked_values_have_no_influence():
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.normal(size=(30, 5)), jnp.float32)
    t = rng.normal(size=(30, 5)).astype(np.float32)
    mask = rng.random(30) < 0.5
    ref = jax.value_and_grad(lambda q: pcc_loss(q, t, mask) + masked_mse(q, t, mask))(p)
    for bad in (np.nan, 1e30, -np.inf):
        t_bad = np.where(mask[:, None], t, bad).astype(np.float32)
        got = jax.value_and_grad(lambda q: pcc_loss(q, t_bad, mask) + masked_mse(q, t_bad, mask))(p)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    assert (np.asarray(ref[1])[~mask] == 0).all()


def _graph(nodes, n_pad=2):
    """One graph with nodes dict and a single self-loop edge per node, padded jraph-style."""
    n = next(iter(nodes.values())).shape[0]
    g = jraph.GraphsTuple(nodes=nodes, edges={"weight": np.ones(n, np.float32)},
                          senders=np.arange(n, dtype=np.int32),
                          receivers=np.arange(n, dtype=np.int32), n_node=np.array([n]),
                          n_edge=np.array([n]), globals=None)
    return jraph.pad_with_graphs(g, n + n_pad, n + 1)


def _sample(rng, ns=24, nr=6, nq=2, genes=5):
    spot = _graph({"label": rng.normal(size=(ns, genes)).astype(np.float32),
                   "region_idx": (np.arange(ns) % nr).astype(np.int32),
                   "global_idx": (np.arange(ns) % nq).astype(np.int32)})
    region = _graph({"label": rng.normal(size=(nr, genes)).astype(np.float32)})
    glob = _graph({"label": rng.normal(size=(nq, genes)).astype(np.float32)}, n_pad=1)
    out = {"spot": rng.normal(size=(ns + 2, genes)).astype(np.float32),
           "region": rng.normal(size=(nr + 2, genes)).astype(np.float32),
           "global": rng.normal(size=(nq + 1, genes)).astype(np.float32)}
    masks = (np.arange(ns + 2) < ns // 2, np.arange(nr + 2) < 4, np.arange(nq + 1) < 2)
    return out, spot, region, glob, masks


def test_asign_loss_combines_terms():
    rng = np.random.default_rng(3)
    out, spot, region, glob, (ms, mr, mg) = _sample(rng)
    out["spot_model"] = rng.normal(size=out["spot"].shape).astype(np.float32)
    cfg = base_config().model.asign.loss
    cfg.gamma_1, cfg.gamma_2 = 0.7, 1.3
    ys = spot.nodes["label"]
    real = np.arange(26) < 24
    pr_s = out["region"][spot.nodes["region_idx"]]
    pg_s = out["global"][spot.nodes["global_idx"]]
    spot_terms = {k: np.mean((p[ms] - ys[ms]) ** 2) + 0.75 * _np_pcc_loss(p[ms], ys[ms])
                  for k, p in (("final", out["spot"]), ("model", out["spot_model"]))}
    rest = (0.5 * _np_pcc_loss(out["region"][mr], region.nodes["label"][mr])
            + 0.5 * _np_pcc_loss(out["global"][mg], glob.nodes["label"][mg]))
    # consistency: the MODEL prediction p_s, every REAL spot (no labels involved)
    pm = out["spot_model"]
    l_c = 0.25 * _np_pcc_loss(pm[real], pr_s[real]) + 0.25 * _np_pcc_loss(pm[real], pg_s[real])
    expected = {"both": spot_terms["final"] + spot_terms["model"], **spot_terms}
    for mode, s_terms in expected.items():
        cfg.spot_supervision = mode
        loss, t = asign_loss(out, spot, region, glob, ms, mr, mg, cfg)
        np.testing.assert_allclose(t["mse"], np.mean((out["spot"][ms] - ys[ms]) ** 2), rtol=1e-5)
        np.testing.assert_allclose(t["mse_model"], np.mean((pm[ms] - ys[ms]) ** 2), rtol=1e-5)
        np.testing.assert_allclose(t["L_p"], s_terms + rest, rtol=1e-4)
        np.testing.assert_allclose(t["L_c"], l_c, rtol=1e-4)
        np.testing.assert_allclose(loss, 0.7 * (s_terms + rest) + 1.3 * l_c, rtol=1e-4)
        assert t["loss"] is loss
    # the CLI side learns only through p'_s: "model" alone gives it no gradient
    cfg.spot_supervision = "model"
    g = jax.grad(lambda o: asign_loss(o, spot, region, glob, ms, mr, mg, cfg)[0])(out)
    assert not np.asarray(g["spot"]).any() and np.asarray(g["spot_model"]).any()
    cfg.spot_supervision = "nonsense"
    with pytest.raises(ValueError, match="spot_supervision"):
        asign_loss(out, spot, region, glob, ms, mr, mg, cfg)

    cfg.spot_supervision = "both"
    cfg.consistency_spots = "labelled"
    _, t2 = asign_loss(out, spot, region, glob, ms, mr, mg, cfg)
    l_c2 = (0.25 * _np_pcc_loss(pm[ms], pr_s[ms]) + 0.25 * _np_pcc_loss(pm[ms], pg_s[ms]))
    np.testing.assert_allclose(t2["L_c"], l_c2, rtol=1e-4)


def test_asign_loss_ignores_labels_outside_masks():
    rng = np.random.default_rng(4)
    out, spot, region, glob, (ms, mr, mg) = _sample(rng)
    cfg = base_config().model.asign.loss

    def loss_and_grad(sp, rg, gl):
        f = lambda o: asign_loss(o, sp, rg, gl, ms, mr, mg, cfg)[0]
        return jax.value_and_grad(f)(out)

    ref_l, ref_g = loss_and_grad(spot, region, glob)
    for bad in (np.nan, 1e30):
        poison = lambda g, m: g._replace(nodes={**g.nodes, "label": np.where(
            m[:, None], g.nodes["label"], bad).astype(np.float32)})
        l, g = loss_and_grad(poison(spot, ms), poison(region, mr), poison(glob, mg))
        np.testing.assert_array_equal(l, ref_l)
        for k in ref_g:
            np.testing.assert_array_equal(g[k], ref_g[k])
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(ref_g))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
