"""Train-step time of the JAX ASIGN against a PyTorch re-implementation of the same model.

Both run one training step (forward + loss + backward + SGD-momentum update) on the same
random padded sample, with the SAME weights: the PyTorch model is a functional mirror of
``asign_jax.models.ASIGN`` that reads the Flax parameter tree, and the script first checks that
both give the same loss (eval mode, no dropout) before timing. Timings are medians over
``--steps`` steps after a warm-up (JAX: the jit compile, reported separately).

    python experiments/bench_torch.py                     # HER2-like sample, hidden 256
    python experiments/bench_torch.py --hidden 1024 --steps 3

Skips cleanly (exit 0) when torch is not installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import torch
    import torch.nn.functional as F
except ImportError:           # pragma: no cover - depends on the environment
    torch = None

import jax
import jraph
import optax

from asign_jax.config import base_config
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA
from asign_jax.training.losses import asign_loss
from asign_jax.models.asign import ASIGN

LN_EPS = 1e-6                  # flax LayerNorm default


# ---------------------------------------------------------------------------------------------
# The sample
# ---------------------------------------------------------------------------------------------

def _graph(rng, nodes, n, k_intra, k_cross, layer):
    """Random 3D-like graph: each node receives k_intra same-layer and k_cross other-layer edges."""
    snd, rcv, typ = [], [], []
    for i in range(n):
        same = np.flatnonzero((layer == layer[i]) & (np.arange(n) != i))
        other = np.flatnonzero(layer != layer[i])
        for pool, k, t in ((same, k_intra, EDGE_INTRA), (other, k_cross, EDGE_CROSS)):
            if len(pool):
                j = rng.choice(pool, min(k, len(pool)), replace=False)
                snd += j.tolist()
                rcv += [i] * len(j)
                typ += [t] * len(j)
    e = len(snd)
    edges = {"weight": rng.uniform(0.05, 1.5, e).astype(np.float32),
             "type": np.array(typ, np.int32)}
    g = jraph.GraphsTuple(nodes=nodes, edges=edges, senders=np.array(snd, np.int32),
                          receivers=np.array(rcv, np.int32), n_node=np.array([n]),
                          n_edge=np.array([e]), globals=None)
    return jraph.pad_with_graphs(g, n + 1, e + 1)


def make_sample(a, seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)
    sections = a.sections
    s_layer = np.arange(a.spots) * sections // a.spots
    r_layer = np.arange(a.regions) * sections // a.regions
    q_layer = np.arange(a.globals) * sections // a.globals
    pick = lambda layer, own: np.array([rng.choice(np.flatnonzero(own == l)) for l in layer],
                                       np.int32)
    spot = _graph(rng, {"feat": f32(a.spots, a.din), "label": f32(a.spots, a.genes) - 5,
                        "label_mask": np.ones(a.spots, bool),
                        "region_idx": pick(s_layer, r_layer),
                        "global_idx": pick(s_layer, q_layer)},
                  a.spots, 8, 12, s_layer)
    region = _graph(rng, {"feat": f32(a.regions, a.din), "tokens": f32(a.regions, a.tokens, a.din),
                          "label": f32(a.regions, a.genes), "label_mask": np.ones(a.regions, bool),
                          "global_idx": pick(r_layer, q_layer)},
                    a.regions, 8, 4, r_layer)
    glob = _graph(rng, {"feat": f32(a.globals, a.din), "tokens": f32(a.globals, a.tokens, a.din),
                        "label": f32(a.globals, a.genes), "label_mask": np.ones(a.globals, bool)},
                  a.globals, 8, 2, q_layer)
    known = np.concatenate([rng.random(a.spots) < 0.2, [False]])
    return spot, region, glob, known


def _masks(g):
    return (np.asarray(jraph.get_node_padding_mask(g)), np.asarray(jraph.get_edge_padding_mask(g)))


# ---------------------------------------------------------------------------------------------
# PyTorch mirror of asign_jax.models.ASIGN (functional, over the Flax parameter tree)
# ---------------------------------------------------------------------------------------------

def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _dg_in(x, p):                                  # DenseGeneral (..., D) -> (..., h, d)
    return torch.einsum("...d,dhk->...hk", x, p["kernel"]) + p["bias"]


def _dg_out(x, p):                                 # DenseGeneral (..., h, d) -> (..., H)
    return torch.einsum("...hk,hkH->...H", x, p["kernel"]) + p["bias"]


def _ln(x, p):
    return F.layer_norm(x, x.shape[-1:], p["scale"], p["bias"], LN_EPS)


def _mha(p, query, kv, idx, heads, drop, train):
    v = _dg_in(kv, p["value"])
    v = v if idx is None else v[idx]
    n, lq = query.shape[:2]
    if kv.shape[1] == 1:
        w = torch.ones(n, heads, lq, 1)
    else:
        q = _dg_in(query, p["query"])
        k = _dg_in(kv, p["key"])
        k = k if idx is None else k[idx]
        w = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / q.shape[-1] ** 0.5, -1)
    w = F.dropout(w, drop, train)
    return _dg_out(torch.einsum("nhqk,nkhd->nqhd", w, v), p["out"])


def _transformer(p, x, heads, drop, train):
    y = _ln(x, p["ln_attn"])
    x = x + F.dropout(_mha(p["attn"], y, y, None, heads, drop, train), drop, train)
    y = _dense(F.gelu(_dense(_ln(x, p["ln_mlp"]), p["mlp_in"]), approximate="tanh"), p["mlp_out"])
    return x + F.dropout(y, drop, train)


def _seg_softmax(logits, recv, n, mask):
    m = mask[:, None]
    logits = torch.where(m, logits, 0.0)
    idx = recv[:, None].expand_as(logits)
    mx = torch.full((n, logits.shape[1]), -torch.inf).scatter_reduce(
        0, idx, torch.where(m, logits, -torch.inf), "amax", include_self=True)
    mx = torch.where(torch.isfinite(mx), mx, 0.0).detach()
    ex = torch.where(m, torch.exp(torch.where(m, logits - mx[recv], 0.0)), 0.0)
    den = torch.zeros(n, logits.shape[1]).index_add(0, recv, ex)
    return ex / torch.where(den > 0, den, 1.0)[recv]


def _gat(p, h, g, heads, drop, train):
    s, r, w, t, em = g
    n = h.shape[0]
    wh = torch.einsum("nd,dhk->nhk", h, p["W"]["kernel"])
    src = torch.einsum("nhk,hk->nh", wh, p["a_src"])
    dst = torch.einsum("nhk,hk->nh", wh, p["a_dst"])
    w = torch.where(em, w, 0.0)
    t = torch.where(em, t, 0)
    logits = F.leaky_relu(dst[r] + src[s], 0.2) + p["edge_bias"][t] * w[:, None]
    alpha = F.dropout(_seg_softmax(logits, r, n, em), drop, train)
    msg = torch.where(em[:, None, None], alpha[..., None] * wh[s], 0.0)
    agg = torch.zeros_like(wh).index_add(0, r, msg).reshape(n, -1)
    return _ln(h + F.dropout(F.elu(agg), drop, train), p["ln"])


def _block(p, h, ctx, g, c, train):
    if ctx.shape[1]:
        ctx = ctx + p["context_embedding"]
    outs = []
    for layer in range(c.gat_layers):
        pl = jax.tree.map(lambda a: a[layer], p["layers"])
        if c.use_gat:
            h = _gat(pl["gat"], h, g, c.heads, c.dropout, train)
        tokens = torch.cat([h[:, None], ctx], 1)
        h = _transformer(pl["transformer"], tokens, c.heads, c.dropout, train)[:, 0]
        outs.append(h)
    return torch.einsum("l,lnh->nh", torch.softmax(p["layer_weights"], 0), torch.stack(outs))


def _propagate(pred, labels, known, s, r, ew, alpha, em, nm, n_iter):
    n = pred.shape[0]
    known = known & nm
    valid = em & nm[s] & nm[r] & torch.isfinite(ew) & (ew > 0)
    alpha = torch.where(nm, alpha, 0.0)
    w = torch.where(valid, alpha[s] * torch.where(valid, ew, 0.0), 0.0)
    den = torch.zeros(n).index_add(0, r, w)
    has_in = den > 0
    den = torch.where(has_in, den, 1.0)
    pred = torch.where(nm[:, None], pred, 0.0)
    labels = torch.where(known[:, None], labels, 0.0)
    p, reached = torch.where(known[:, None], labels, pred), known
    adj = torch.sparse_coo_tensor(torch.stack([r, s]), w, (n, n),          # A[i, j] = w_ij
                                  check_invariants=False).coalesce()
    for _ in range(n_iter):
        avg = torch.sparse.mm(adj, p) / den[:, None]
        r_in = torch.zeros(n).index_add(0, r, (valid & reached[s]).float()) > 0
        reached = reached | r_in
        p = torch.where((reached & ~known & has_in)[:, None], avg, p)
        p = torch.where(known[:, None], labels, p)
    return torch.where(nm[:, None], p, 0.0)


def torch_forward(p, tg, c, train):
    """tg: dict of torch arrays of the three graphs + masks; returns the output dict."""
    d = c.dropout
    drop = lambda x: F.dropout(x, d, train)
    r_feat = _dense(tg["region"]["feat"], p["region_proj"])
    g_feat = _dense(tg["global"]["feat"], p["global_proj"])
    f_s = _dense(tg["spot"]["feat"], p["spot_proj"])
    ridx, gidx = tg["spot"]["region_idx"], tg["spot"]["global_idx"]
    if c.use_cross_attention:
        f_r = _mha(p["cross_attn_region"], f_s[:, None], tg["region"]["tokens"], ridx, c.heads,
                   d, train)[:, 0]
        f_g = _mha(p["cross_attn_global"], f_s[:, None], tg["global"]["tokens"], gidx, c.heads,
                   d, train)[:, 0]
        fused = _dense(torch.cat([f_s, f_r, f_g], -1), p["fusion"])
    else:
        fused = f_s
    spot_ctx = torch.stack([r_feat[ridx], g_feat[gidx]], 1)
    region_ctx = g_feat[tg["region"]["global_idx"]][:, None]
    glob_ctx = g_feat.new_zeros(g_feat.shape[0], 0, g_feat.shape[1])
    h_s = _block(p["spot_block"], drop(fused), spot_ctx, tg["spot"]["graph"], c, train)
    h_r = _block(p["region_block"], drop(r_feat), region_ctx, tg["region"]["graph"], c, train)
    h_g = _block(p["global_block"], drop(g_feat), glob_ctx, tg["global"]["graph"], c, train)
    head = lambda q, x: _dense(_ln(x, q["ln"]), q["out"])
    p_s, p_r, p_g = head(p["spot_head"], h_s), head(p["region_head"], h_r), head(p["global_head"], h_g)
    sp = tg["spot"]
    alpha_j = torch.sigmoid(_dense(h_s, p["cli"]["node_alpha"]))[:, 0]
    s, r, ew, _, em = sp["graph"]
    imputed = _propagate(p_s, sp["label"], sp["known"], s, r, ew, alpha_j, em, sp["node_mask"],
                         c.cli_iterations)
    a = torch.sigmoid(p["cli"]["theta"])
    return {"spot": a * p_s + (1 - a) * imputed, "spot_model": p_s, "region": p_r, "global": p_g}


def _pcc(pred, target, mask, eps=1e-6):
    m = mask[:, None]
    pred, target = torch.where(m, pred, 0.0), torch.where(m, target, 0.0)
    n = mask.sum().clamp(min=1)
    pc = torch.where(m, pred - pred.sum(0) / n, 0.0)
    tc = torch.where(m, target - target.sum(0) / n, 0.0)
    r = (pc * tc).sum(0) / n / torch.sqrt(((pc * pc).sum(0) / n + eps)
                                          * ((tc * tc).sum(0) / n + eps))
    return 1 - r.mean()


def torch_loss(out, tg, lc):
    """``asign_jax.training.losses.asign_loss`` in torch (spot terms on p'_s and/or p_s, L_c on p_s)."""
    sp, rg, gl = tg["spot"], tg["region"], tg["global"]
    ms = sp["label_mask"] & ~sp["known"] & sp["node_mask"]
    m = ms[:, None]

    def spot_terms(pred):
        diff = torch.where(m, pred, 0.0) - torch.where(m, sp["label"], 0.0)
        mse = (diff * diff).sum() / (ms.sum() * diff.shape[1]).clamp(min=1)
        return mse + lc.lambda_s * _pcc(pred, sp["label"], ms)

    which = lc.get("spot_supervision", "both")
    s = {"final": spot_terms(out["spot"]), "model": spot_terms(out["spot_model"])}
    l_p = ((s["final"] + s["model"] if which == "both" else s[which])
           + lc.lambda_r * _pcc(out["region"], rg["label"], rg["label_mask"] & rg["node_mask"])
           + lc.lambda_g * _pcc(out["global"], gl["label"], gl["label_mask"] & gl["node_mask"]))
    real = sp["node_mask"]
    p_s = out["spot_model"]
    l_c = (lc.lambda_1 * _pcc(p_s, out["region"][sp["region_idx"]], real)
           + lc.lambda_2 * _pcc(p_s, out["global"][sp["global_idx"]], real))
    return lc.gamma_1 * l_p + lc.gamma_2 * l_c


def to_torch_sample(spot, region, glob, known):
    def conv(g, extra=None):
        nm, em = _masks(g)
        d = {k: torch.from_numpy(np.array(v)) for k, v in g.nodes.items()}
        d["node_mask"], d["graph"] = torch.from_numpy(nm.copy()), (
            torch.from_numpy(g.senders.astype(np.int64)),
            torch.from_numpy(g.receivers.astype(np.int64)),
            torch.from_numpy(g.edges["weight"].copy()), torch.from_numpy(g.edges["type"].astype(np.int64)),
            torch.from_numpy(em.copy()))
        for k in ("region_idx", "global_idx"):
            if k in d:
                d[k] = d[k].long()
        d.update(extra or {})
        return d
    return {"spot": conv(spot, {"known": torch.from_numpy(known & spot.nodes["label_mask"])}),
            "region": conv(region), "global": conv(glob)}


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spots", type=int, default=2300)
    ap.add_argument("--regions", type=int, default=300)
    ap.add_argument("--globals", type=int, default=80)
    ap.add_argument("--sections", type=int, default=6)
    ap.add_argument("--din", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--genes", type=int, default=250)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    if torch is None:
        print("torch is not installed: skipping the PyTorch comparison")
        return 0
    torch.set_num_threads(os.cpu_count() or 1)

    cfg = base_config()
    c, lc = cfg.model, cfg.loss
    c.hidden, c.heads = a.hidden, a.heads
    spot, region, glob, known = make_sample(a)
    model = ASIGN(c, a.genes)
    params = jax.jit(lambda k: model.init({"params": k}, spot, region, glob, known,
                                          train=False))(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"sample: {a.spots} spots, {a.regions} regions, {a.globals} globals, "
          f"{spot.senders.size} spot edges; D_in {a.din}, T {a.tokens}, G {a.genes}; "
          f"hidden {a.hidden}, heads {a.heads}, {n_params / 1e6:.2f}M params; "
          f"{os.cpu_count()} CPU threads; jax {jax.__version__}, torch {torch.__version__}")

    spot_mask = spot.nodes["label_mask"] & ~known

    def loss_fn(p, key, train):
        out = model.apply(p, spot, region, glob, known, train=train, rngs={"dropout": key})
        return asign_loss(out, spot, region, glob, spot_mask, region.nodes["label_mask"],
                          glob.nodes["label_mask"], lc)[0]

    tx = optax.sgd(1e-4, momentum=0.9)

    @jax.jit
    def jax_step(p, opt, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key, True)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    # torch mirror with the same weights; check the eval-mode loss first
    tp = jax.tree.map(lambda x: torch.tensor(np.array(x), requires_grad=True), params["params"])
    tg = to_torch_sample(spot, region, glob, known)
    with torch.no_grad():
        l_torch = float(torch_loss(torch_forward(tp, tg, c, False), tg, lc))
    l_jax = float(jax.jit(lambda p: loss_fn(p, jax.random.key(0), False))(params))
    print(f"eval-mode loss: jax {l_jax:.6f}  torch {l_torch:.6f}  (|diff| {abs(l_jax - l_torch):.1e})")
    if not np.isclose(l_jax, l_torch, rtol=1e-3, atol=1e-4):
        print("WARNING: the PyTorch mirror does not match the JAX model")

    opt = tx.init(params)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    params_j, opt, loss = jax_step(params, opt, key)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        params_j, opt, loss = jax_step(params_j, opt, jax.random.fold_in(key, i))
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    jax_s = statistics.median(times)

    torch_opt = torch.optim.SGD(jax.tree.leaves(tp), lr=1e-4, momentum=0.9)
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        torch_opt.zero_grad(set_to_none=True)
        loss_t = torch_loss(torch_forward(tp, tg, c, True), tg, lc)
        loss_t.backward()
        torch_opt.step()
        times.append(time.perf_counter() - t0)
    torch_s = statistics.median(times[1:])
    print(f"train step (fwd + bwd + SGD), median of {a.steps}:")
    print(f"  jax (jit)  {jax_s * 1e3:9.1f} ms   (first call incl. compile {compile_s:.1f} s)")
    print(f"  torch      {torch_s * 1e3:9.1f} ms   (eager)")
    print(f"  ratio torch/jax = {torch_s / jax_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
