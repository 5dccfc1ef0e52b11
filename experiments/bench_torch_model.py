"""The PyTorch port of ``asign_jax.models.ASIGN`` that ``bench_torch.py`` times against JAX.

A functional mirror over the Flax parameter tree (the same weights, no ``nn.Module``):
``torch_forward`` (the three graph blocks, the heads and the CLI), ``torch_loss``
(``asign_jax.models.losses.asign_loss``), ``torch_propagate`` (``asign_jax.models.cli.propagate``)
and ``to_torch_sample`` (a padded sample's graphs as torch tensors). ``PROFILE = True`` labels
the forward's parts with ``record_function("part:<name>")`` ranges (``profile_step.py``).

Importable without torch (the names are defined; calling them needs torch).
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:           # pragma: no cover - depends on the environment
    torch = None

from asign_jax.graph.contract import edge_mask, node_mask  # noqa: E402

LN_EPS = 1e-6                  # flax LayerNorm default
PROFILE = False                # True: label the parts for torch.profiler (profile_step.py)


def part(name):
    """A ``record_function("part:<name>")`` range when profiling, else nothing."""
    return torch.profiler.record_function("part:" + name) if PROFILE else contextlib.nullcontext()


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


def _mha(p, query, sources, heads, drop, train):
    """``MultiHeadAttention`` over the keys of ``sources`` ((tokens (M_i, L_i, D), index or
    None), ...): each projected on its M_i sets, then gathered per node."""
    def per_node(name):                       # as attention._per_node: project, then gather
        out = []
        for kv, idx in sources:
            y = _dg_in(kv, p[name])
            out.append(y if idx is None else y[idx])
        return out
    v = per_node("value")
    n, lq = query.shape[:2]
    if sum(kv.shape[1] for kv, _ in sources) == 1:
        w = torch.ones(n, heads, lq, 1, dtype=v[0].dtype)
    else:
        q = _dg_in(query, p["query"])
        logits = torch.cat([torch.einsum("nqhd,nkhd->nhqk", q, k) for k in per_node("key")], -1)
        w = torch.softmax(logits / q.shape[-1] ** 0.5, -1)
    w = F.dropout(w, drop, train)
    out, start = 0.0, 0
    for v_i in v:
        out = out + torch.einsum("nhqk,nkhd->nqhd", w[..., start:start + v_i.shape[1]], v_i)
        start += v_i.shape[1]
    return _dg_out(out, p["out"])


def _transformer(p, x, context, heads, drop, train):
    """The node token's output (N, 1, H) only, as ``TransformerLayer(outputs=1)``: the context
    tokens ((rows (M_c, H), index), ...) are keys/values, normalised and projected on their
    M_c rows before the gather; the same savings as the JAX model's (fair effort)."""
    y = _ln(x, p["ln_attn"])
    sources = [(y, None)] + [(_ln(rows, p["ln_attn"])[:, None], idx) for rows, idx in context]
    x = x[:, :1] + F.dropout(_mha(p["attn"], y[:, :1], sources, heads, drop, train), drop, train)
    y = _dense(F.gelu(_dense(_ln(x, p["ln_mlp"]), p["mlp_in"]), approximate="tanh"), p["mlp_out"])
    return x + F.dropout(y, drop, train)


def _seg_softmax(logits, recv, n, mask):
    m = mask[:, None]
    logits = torch.where(m, logits, 0.0)
    idx = recv[:, None].expand_as(logits)
    mx = torch.full((n, logits.shape[1]), -torch.inf, dtype=logits.dtype).scatter_reduce(
        0, idx, torch.where(m, logits, -torch.inf), "amax", include_self=True)
    mx = torch.where(torch.isfinite(mx), mx, 0.0).detach()
    ex = torch.where(m, torch.exp(torch.where(m, logits - mx[recv], 0.0)), 0.0)
    den = torch.zeros(n, logits.shape[1], dtype=ex.dtype).index_add(0, recv, ex)
    return ex / torch.where(den > 0, den, 1.0)[recv]


def _gat(p, h, g, heads, drop, train):
    s, r, w, t, em = g
    n = h.shape[0]
    wh = torch.einsum("nd,dhk->nhk", h, p["W"]["kernel"])
    src = torch.einsum("nhk,hk->nh", wh, p["a_src"])
    dst = torch.einsum("nhk,hk->nh", wh, p["a_dst"])
    w = torch.where(em, w, 0.0)
    t = torch.where(em, t, 0)
    with part("GAT gather"):
        logits = F.leaky_relu(dst[r] + src[s], 0.2) + p["edge_bias"][t] * w[:, None]
    with part("GAT segment softmax"):
        alpha = F.dropout(_seg_softmax(logits, r, n, em), drop, train)
    with part("GAT scatter/aggregate"):
        msg = torch.where(em[:, None, None], alpha[..., None] * wh[s], 0.0)
        agg = torch.zeros_like(wh).index_add(0, r, msg).reshape(n, -1)
    return _ln(h + F.dropout(F.elu(agg), drop, train), p["ln"])


def _take(tree, i):
    """Layer i of a nested dict of stacked tensors (plain Python, so torch.compile traces it)."""
    return {k: _take(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}


def _block(p, h, ctx, g, c, train):
    """``SpatialGraphBlock``; ctx: ((rows (M_c, H), index (N,)), ...), the context tokens."""
    ctx = [(rows + p["context_embedding"][i], idx) for i, (rows, idx) in enumerate(ctx)]
    outs = []
    for layer in range(c.gat_layers):
        pl = _take(p["layers"], layer)
        if c.use_gat:
            with part("GAT other"):
                h = _gat(pl["gat"], h, g, c.heads, c.dropout, train)
        with part("node transformer"):
            h = _transformer(pl["transformer"], h[:, None], ctx, c.heads, c.dropout, train)[:, 0]
        outs.append(h)
    return torch.einsum("l,lnh->nh", torch.softmax(p["layer_weights"], 0), torch.stack(outs))


def torch_propagate(pred, labels, known, s, r, ew, alpha, em, nm, n_iter):
    n = pred.shape[0]
    known = known & nm
    valid = em & nm[s] & nm[r] & torch.isfinite(ew) & (ew > 0)
    alpha = torch.where(nm, alpha, 0.0)
    w = torch.where(valid, alpha[s] * torch.where(valid, ew, 0.0), 0.0)
    den = torch.zeros(n, dtype=w.dtype).index_add(0, r, w)
    has_in = den > 0
    den = torch.where(has_in, den, 1.0)
    pred = torch.where(nm[:, None], pred, 0.0)
    labels = torch.where(known[:, None], labels, 0.0)
    p, reached = torch.where(known[:, None], labels, pred), known
    adj = torch.sparse_coo_tensor(torch.stack([r, s]), w, (n, n),          # A[i, j] = w_ij
                                  check_invariants=False).coalesce()
    for _ in range(n_iter):
        avg = torch.sparse.mm(adj, p) / den[:, None]
        r_in = torch.zeros(n, dtype=w.dtype).index_add(0, r, (valid & reached[s]).to(w.dtype)) > 0
        reached = reached | r_in
        p = torch.where((reached & ~known & has_in)[:, None], avg, p)
        p = torch.where(known[:, None], labels, p)
    return torch.where(nm[:, None], p, 0.0)


def torch_forward(p, tg, c, train):
    """tg: dict of torch arrays of the three graphs + masks; returns the output dict."""
    d = c.dropout
    drop = lambda x: F.dropout(x, d, train)
    with part("encoder dense"):
        r_feat = _dense(tg["region"]["feat"], p["region_proj"])
        g_feat = _dense(tg["global"]["feat"], p["global_proj"])
        f_s = _dense(tg["spot"]["feat"], p["spot_proj"])
    ridx, gidx = tg["spot"]["region_idx"], tg["spot"]["global_idx"]
    if c.use_cross_attention:
        with part("cross-attention"):
            f_r = _mha(p["cross_attn_region"], f_s[:, None], [(tg["region"]["tokens"], ridx)],
                       c.heads, d, train)[:, 0]
            f_g = _mha(p["cross_attn_global"], f_s[:, None], [(tg["global"]["tokens"], gidx)],
                       c.heads, d, train)[:, 0]
        with part("encoder dense"):
            fused = _dense(torch.cat([f_s, f_r, f_g], -1), p["fusion"])
    else:
        fused = f_s
    spot_ctx = [(r_feat, ridx), (g_feat, gidx)]
    region_ctx = [(g_feat, tg["region"]["global_idx"])]
    glob_ctx = []
    h_s = _block(p["spot_block"], drop(fused), spot_ctx, tg["spot"]["graph"], c, train)
    h_r = _block(p["region_block"], drop(r_feat), region_ctx, tg["region"]["graph"], c, train)
    h_g = _block(p["global_block"], drop(g_feat), glob_ctx, tg["global"]["graph"], c, train)
    head = lambda q, x: _dense(_ln(x, q["ln"]), q["out"])
    with part("heads"):
        p_s, p_r = head(p["spot_head"], h_s), head(p["region_head"], h_r)
        p_g = head(p["global_head"], h_g)
    sp = tg["spot"]
    with part("CLI"):
        alpha_j = torch.sigmoid(_dense(h_s, p["cli"]["node_alpha"]))[:, 0]
        s, r, ew, _, em = sp["graph"]
        imputed = torch_propagate(p_s, sp["label"], sp["known"], s, r, ew, alpha_j, em,
                                  sp["node_mask"], c.cli_iterations)
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
    """``asign_jax.models.losses.asign_loss`` in torch (spot terms on p'_s and/or p_s, L_c on p_s)."""
    with part("losses"):
        return _torch_loss(out, tg, lc)


def _torch_loss(out, tg, lc):
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


def to_torch_sample(spot, region, glob, known, dev, dtype):
    def conv(g, extra=None):
        nm, em = np.asarray(node_mask(g)), np.asarray(edge_mask(g))
        # bfloat16 arrays (ml_dtypes) are floats that np.floating does not include and torch
        # cannot read: every float crosses as float32 and is cast on the torch side
        is_float = lambda a: jnp.issubdtype(np.asarray(a).dtype, jnp.floating)
        t = lambda a: torch.from_numpy(np.asarray(a, np.float32) if is_float(a)
                                       else np.array(a)).to(dev)
        d = {k: (t(v).to(dtype) if is_float(v) else t(v)) for k, v in g.nodes.items()}
        d["node_mask"], d["graph"] = t(nm), (
            t(g.senders.astype(np.int64)), t(g.receivers.astype(np.int64)),
            t(g.edges["weight"]).to(dtype), t(g.edges["type"].astype(np.int64)), t(em))
        for k in ("region_idx", "global_idx"):
            if k in d:
                d[k] = d[k].long()
        d.update(extra or {})
        return d
    return {"spot": conv(spot, {"known": torch.from_numpy(known & spot.nodes["label_mask"]).to(dev)}),
            "region": conv(region), "global": conv(glob)}
