"""JAX ASIGN against the project's PyTorch port of the same model: a size sweep at equal work.

For each size (spots per 3D sample; 4 Visium-lattice sections, regions and global tiles from
the project's tiling, graph from the real builder: ``visium_block.make_block``), both
frameworks run, with the SAME weights (the PyTorch model is a functional mirror of
``asign_jax.models.ASIGN`` reading the Flax parameter tree):

* the training step: forward + loss + backward + SGD-momentum update;
* the CLI alone: ``cli.propagate`` (10 iterations) forward + backward w.r.t. the prediction
  and alpha, against the mirror's ``_propagate``.

Before timing, the eval-mode (no dropout) losses of the two models and the two CLI outputs are
compared (``equal`` in the table). Timings are INTERLEAVED (JAX, PyTorch, JAX, ...) so that
machine load hits both alike; each is the median of ``--steps`` after a warm-up (JAX's compile
is reported separately). Each size runs in its own process (peak RSS per size, large sizes one
at a time). Device-agnostic: JAX's default device, PyTorch on CUDA when available.

Beside the ratio it prints a roofline: the step's matmul FLOPs (the JAX jaxpr's, layers and
CLI iterations counted in full; ``roofline.matmul_flops``), XLA's FLOPs and bytes of the
compiled JAX step, the matmul / stream peak measured in the same process, and each
framework's achieved GFLOP/s and GB/s with those same counts (same model). ``--torch_compile
1`` also times the ``torch.compile``'d PyTorch step (inductor) and reports a failure in one
line. ``torch.set_num_threads`` = the CPU count, as JAX uses every core.

Writes ``<out>/results.json`` (default ``--out runs/experiments/bench_torch``).

    python experiments/bench_torch.py --sizes 1000,4000,15000,60000
    python experiments/bench_torch.py --sizes 1000 --dtype bfloat16

Skips cleanly (exit 0) when torch is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from types import SimpleNamespace

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:           # pragma: no cover - depends on the environment
    torch = None

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import roofline  # noqa: E402   experiments/ (the script's folder) is on sys.path

from asign_jax import atomic, entry  # noqa: E402
from asign_jax.config import base_config  # noqa: E402
from asign_jax.graph.contract import edge_mask, node_mask  # noqa: E402
from asign_jax.graph.padding import budget_for, pad_sample  # noqa: E402
from asign_jax.models import cli  # noqa: E402
from asign_jax.models.asign import ASIGN  # noqa: E402
from asign_jax.models.losses import asign_loss  # noqa: E402
from visium_block import make_block  # noqa: E402

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


def _mha(p, query, kv, idx, heads, drop, train):
    v = _dg_in(kv, p["value"])
    v = v if idx is None else v[idx]
    n, lq = query.shape[:2]
    if kv.shape[1] == 1:
        w = torch.ones(n, heads, lq, 1, dtype=v.dtype)
    else:
        q = _dg_in(query, p["query"])
        k = _dg_in(kv, p["key"])
        k = k if idx is None else k[idx]
        w = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / q.shape[-1] ** 0.5, -1)
    w = F.dropout(w, drop, train)
    return _dg_out(torch.einsum("nhqk,nkhd->nqhd", w, v), p["out"])


def _transformer(p, x, heads, drop, train):
    """The node token's output (N, 1, H) only, as ``TransformerLayer(outputs=1)``: the context
    tokens are keys/values; the same saving as the JAX model's (fair effort)."""
    y = _ln(x, p["ln_attn"])
    x = x[:, :1] + F.dropout(_mha(p["attn"], y[:, :1], y, None, heads, drop, train), drop, train)
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
    if ctx.shape[1]:
        ctx = ctx + p["context_embedding"]
    outs = []
    for layer in range(c.gat_layers):
        pl = _take(p["layers"], layer)
        if c.use_gat:
            with part("GAT other"):
                h = _gat(pl["gat"], h, g, c.heads, c.dropout, train)
        with part("node transformer"):
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
            f_r = _mha(p["cross_attn_region"], f_s[:, None], tg["region"]["tokens"], ridx,
                       c.heads, d, train)[:, 0]
            f_g = _mha(p["cross_attn_global"], f_s[:, None], tg["global"]["tokens"], gidx,
                       c.heads, d, train)[:, 0]
        with part("encoder dense"):
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
    with part("heads"):
        p_s, p_r = head(p["spot_head"], h_s), head(p["region_head"], h_r)
        p_g = head(p["global_head"], h_g)
    sp = tg["spot"]
    with part("CLI"):
        alpha_j = torch.sigmoid(_dense(h_s, p["cli"]["node_alpha"]))[:, 0]
        s, r, ew, _, em = sp["graph"]
        imputed = _propagate(p_s, sp["label"], sp["known"], s, r, ew, alpha_j, em,
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
        t = lambda a: torch.from_numpy(np.array(a)).to(dev)
        d = {k: (t(v).to(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else t(v))
             for k, v in g.nodes.items()}
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


# ---------------------------------------------------------------------------------------------

def make_sample(spots: int, a):
    """One padded Visium-like sample with ``spots`` spots over ``a.sections`` sections."""
    g = make_block(max(1, spots // a.sections), a.sections, a.genes, feat_dim=a.din,
                   n_tokens=a.tokens, seed=0)
    g = pad_sample(g, budget_for([g]))
    spot, region, glob = g.spot, g.region, g.global_
    n = int(spot.n_node[0])
    known = np.zeros(len(spot.nodes["layer"]), bool)
    known[:n] = np.random.default_rng(1).random(n) < 0.2
    return spot, region, glob, known


def interleaved(fns: dict, steps: int) -> dict:
    """Median seconds of each zero-argument function, called in turn ``steps`` times."""
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def build(spots: int, a) -> dict:
    """The sample, both models with the same weights, and their steps for one size.

    Returns a dict: ``j_step`` / ``t_step`` (one training step, blocking; the JAX state is
    donated and carried inside), ``compiled`` (the compiled JAX step, for its cost analysis),
    ``j_cli`` / ``t_cli`` (the CLI alone), the eval-mode losses and CLI outputs of both, sizes.
    """
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    jdt = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    tdt = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
    cfg = base_config()
    c, lc = cfg.model.asign, cfg.model.asign.loss
    c.hidden, c.heads = a.hidden, a.heads
    t0 = time.perf_counter()
    spot, region, glob, known = make_sample(spots, a)
    t_data = time.perf_counter() - t0
    cast = lambda t: jax.tree.map(lambda x: x.astype(jdt) if np.issubdtype(x.dtype, np.floating)
                                  else x, t)
    spot, region, glob = (cast(jax.tree.map(jnp.asarray, g)) for g in (spot, region, glob))
    model = ASIGN(c, a.genes)
    params = jax.jit(lambda k: model.init({"params": k}, spot, region, glob, known,
                                          train=False))(jax.random.key(0))
    params = cast(params)
    n_node, n_edge = int(spot.n_node[0]), int(spot.n_edge[0])
    spot_mask = spot.nodes["label_mask"] & ~known

    def loss_fn(p, key, train):
        out = model.apply(p, spot, region, glob, known, train=train, rngs={"dropout": key})
        return asign_loss(out, spot, region, glob, spot_mask, region.nodes["label_mask"],
                          glob.nodes["label_mask"], lc)[0]

    tx = optax.sgd(1e-4, momentum=0.9)

    # the params and optimiser state are donated: the update is written in place
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def jax_step(p, opt, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key, True)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    tp = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float32)).to(dev, tdt)
                      .requires_grad_(True), params["params"])
    tg = to_torch_sample(*(jax.tree.map(np.asarray, g) for g in (spot, region, glob)),
                         known, dev, tdt)
    with torch.no_grad():
        l_torch = float(torch_loss(torch_forward(tp, tg, c, False), tg, lc))
    l_jax = float(jax.jit(lambda p: loss_fn(p, jax.random.key(0), False))(params))

    # the CLI alone: 10 iterations, forward + backward w.r.t. the prediction and alpha
    rng = np.random.default_rng(2)
    pred = jnp.asarray(rng.normal(-5, 1, (len(known), a.genes)), jdt)
    alpha = jnp.asarray(rng.uniform(0.2, 0.8, len(known)), jdt)
    s, r, w = spot.senders, spot.receivers, spot.edges["weight"]
    em, nm = edge_mask(spot), node_mask(spot)

    @jax.jit
    def jax_cli(p, al, s, r, w, em, nm):
        def f(p, al):
            out, _ = cli.propagate(p, spot.nodes["label"], jnp.asarray(known), s, r, w, al, em,
                                   nm, c.cli_iterations)
            return jnp.sum(jnp.sin(out)), out
        (_, out), g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(p, al)
        return out, g
    tpred = torch.tensor(np.asarray(pred, np.float32)).to(dev, tdt).requires_grad_(True)
    talpha = torch.tensor(np.asarray(alpha, np.float32)).to(dev, tdt).requires_grad_(True)
    sp = tg["spot"]

    def torch_cli():
        tpred.grad = talpha.grad = None
        out = _propagate(tpred, sp["label"], sp["known"], *sp["graph"][:3], talpha,
                         sp["graph"][4], sp["node_mask"], c.cli_iterations)
        torch.sin(out).sum().backward()
        return out
    cli_args = (pred, alpha, s, r, w, em, nm)
    out_j = np.asarray(jax_cli(*cli_args)[0], np.float32)
    out_t = torch_cli().detach().float().cpu().numpy()

    key = jax.random.key(1)
    state = [params, tx.init(params)]
    mm_flops = roofline.matmul_flops(jax_step, state[0], state[1], key)
    compiled = jax_step.lower(state[0], state[1], key).compile()
    t0 = time.perf_counter()
    state[:] = jax_step(state[0], state[1], key)[:2]
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    torch_opt = torch.optim.SGD(jax.tree.leaves(tp), lr=1e-4, momentum=0.9)
    sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)

    def j_step():
        *state[:], loss = jax_step(state[0], state[1], key)
        jax.block_until_ready(loss)

    def t_loss():
        return torch_loss(torch_forward(tp, tg, c, True), tg, lc)

    def make_t_step(loss_fn):
        def t_step():
            torch_opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            torch_opt.step()
            sync()
        return t_step

    def j_cli():
        jax.block_until_ready(jax_cli(*cli_args))

    def t_cli():
        torch_cli()
        sync()
    return {"j_step": j_step, "t_step": make_t_step(t_loss), "make_t_step": make_t_step,
            "t_loss": t_loss, "j_cli": j_cli, "t_cli": t_cli, "compiled": compiled,
            "compile_s": compile_s, "matmul_flops": mm_flops, "l_jax": l_jax, "l_torch": l_torch, "out_j": out_j,
            "out_t": out_t, "nodes": n_node, "edges": n_edge, "regions": int(region.n_node[0]),
            "globals": int(glob.n_node[0]), "data_s": t_data, "tp": tp, "tg": tg, "c": c,
            "lc": lc}


def compile_torch_step(b: dict):
    """``torch.compile`` of the PyTorch forward + loss (inductor, default mode); returns
    (t_step, compile seconds, error line or None)."""
    fwd = torch.compile(lambda: torch_loss(torch_forward(b["tp"], b["tg"], b["c"], True),
                                           b["tg"], b["lc"]))
    t_step = b["make_t_step"](fwd)
    t0 = time.perf_counter()
    try:
        t_step()
    except Exception as e:  # noqa: BLE001 - reported, the eager numbers stand
        return None, time.perf_counter() - t0, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return t_step, time.perf_counter() - t0, None


def run_size(spots: int, a) -> dict:
    """Everything for one size; returns the table row."""
    b = build(spots, a)
    tol = 2e-2 if a.dtype == "bfloat16" else 1e-3
    equal = bool(np.isclose(b["l_jax"], b["l_torch"], rtol=tol, atol=tol))
    cli_equal = bool(np.allclose(b["out_j"], b["out_t"], rtol=tol, atol=10 * tol))
    b["t_step"]()                                          # torch warm-up
    steps = {"jax_step": b["j_step"], "torch_step": b["t_step"]}
    compiled_row = {}
    if getattr(a, "torch_compile", 0):
        t_comp, comp_s, err = compile_torch_step(b)
        compiled_row = {"torch_compile_s": round(comp_s, 1), "torch_compile_error": err}
        if t_comp is not None:
            steps["torchc_step"] = t_comp
    med = interleaved(steps, a.steps)
    med.update(interleaved({"jax_cli": b["j_cli"], "torch_cli": b["t_cli"]}, a.steps))
    peak = roofline.machine_peak()
    cost = roofline.step_cost(b["compiled"])
    roof = {}
    for k in [k for k in med if k.endswith("_step")]:
        ach = roofline.achieved(b["matmul_flops"], cost["bytes"], med[k], peak)
        roof[k[:-5] + "_gflops"] = round(ach["gflops"], 2)
        roof[k[:-5] + "_gbs"] = round(ach["gbs"], 2)
    if "torchc_step" in med:
        compiled_row["torchc_ratio"] = round(med["torchc_step"] / med["jax_step"], 2)
    return {"spots": spots, "nodes": b["nodes"], "edges": b["edges"],
            "regions": b["regions"], "globals": b["globals"],
            "loss_jax": b["l_jax"], "loss_torch": b["l_torch"], "equal_loss": equal,
            "cli_equal": cli_equal, "jax_compile_s": round(b["compile_s"], 1),
            **{k + "_ms": round(1e3 * v, 1) for k, v in med.items()},
            "step_ratio": round(med["torch_step"] / med["jax_step"], 2),
            "cli_ratio": round(med["torch_cli"] / med["jax_cli"], 2), **compiled_row,
            "step_gflop": round(b["matmul_flops"] / 1e9, 2),
            "xla_gflop": round(cost["flops"] / 1e9, 2), "step_gb": round(cost["bytes"] / 1e9, 2),
            "peak_gflops": round(peak["matmul_gflops"], 1), "peak_gbs": round(peak["stream_gbs"], 1),
            **roof, "load": round(os.getloadavg()[0], 1),
            "data_s": round(b["data_s"], 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def roof_table(rows) -> str:
    """Achieved GFLOP/s and GB/s of each framework's step against the measured peak."""
    lines = [f"{'nodes':>7} {'GFLOP':>7} {'XLA GFLOP':>9} {'GB':>6} {'peak GFLOP/s':>12} {'peak GB/s':>9}  "
             "framework: GFLOP/s (% peak) GB/s (% stream)"]
    for r in rows:
        cells = []
        for k, name in (("jax", "JAX"), ("torch", "PyTorch"), ("torchc", "PyTorch compiled")):
            if k + "_gflops" in r:
                cells.append(f"{name}: {r[k + '_gflops']:.1f} "
                             f"({100 * r[k + '_gflops'] / r['peak_gflops']:.1f}%) "
                             f"{r[k + '_gbs']:.2f} ({100 * r[k + '_gbs'] / r['peak_gbs']:.1f}%)")
        lines.append(f"{r['nodes']:>7} {r['step_gflop']:>7.1f} {r.get('xla_gflop', 0):>9.1f} {r['step_gb']:>6.2f} "
                     f"{r['peak_gflops']:>12.1f} {r['peak_gbs']:>9.1f}  " + "; ".join(cells))
    return "\n".join(lines)


def table(rows) -> str:
    head = (f"{'spots':>7} {'edges':>9} {'jax step':>10} {'torch step':>11} {'ratio':>6} "
            f"{'jax CLI':>9} {'torch CLI':>10} {'ratio':>6}  equal loss (jax / torch)  RSS")
    lines = [head]
    for r in rows:
        lines.append(f"{r['nodes']:>7} {r['edges']:>9} {r['jax_step_ms']:>8.0f}ms "
                     f"{r['torch_step_ms']:>9.0f}ms {r['step_ratio']:>6.2f} "
                     f"{r['jax_cli_ms']:>7.0f}ms {r['torch_cli_ms']:>8.0f}ms {r['cli_ratio']:>6.2f}"
                     f"  {str(r['equal_loss'] and r['cli_equal']):>5} ({r['loss_jax']:.4f} / "
                     f"{r['loss_torch']:.4f})  {r['peak_rss_gb']:.1f} GB  load {r.get('load', 0):.1f}")
        if "torch_compile_s" in r:
            lines.append(f"{'':>7} torch.compile: " + (
                f"step {r['torchc_step_ms']:.0f}ms, JAX ratio {r['torchc_ratio']:.2f} (compile "
                f"{r['torch_compile_s']:.0f}s)" if "torchc_step_ms" in r else
                f"failed ({r['torch_compile_error']})"))
    return "\n".join(lines)


FLAGS = dict(
    sizes=("1000,4000,15000,60000", "Spots per sample (comma-separated)."),
    sections=(4, "Sections."), din=(1024, "Feature dim D_in."),
    tokens=(16, "Tokens T."), genes=(250, "Genes G."),
    hidden=(256, "model.asign.hidden."), heads=(4, "model.asign.heads."),
    steps=(5, "Timed steps (median) after a warm-up."),
    dtype=("float32", "Compute dtype.", ("float32", "bfloat16")),
    torch_compile=(0, "1: also time the torch.compile'd PyTorch step (inductor)."),
    one=(0, "(internal) run one size in this process and print its row."))


def default_args(**kw) -> SimpleNamespace:
    """The sweep's default arguments (for profile_step.py), with overrides."""
    a = SimpleNamespace(**{k: v[0] for k, v in FLAGS.items()}, out="", verbose=False)
    vars(a).update(kw)
    return a


def main(a):
    if torch is None:
        print("torch is not installed: skipping the PyTorch comparison")
        return 0
    if a.one:
        torch.set_num_threads(os.cpu_count() or 1)      # JAX uses every core too
        print("ROW " + json.dumps(run_size(a.one, a)), flush=True)
        return 0
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
          f"({'cuda' if torch.cuda.is_available() else 'cpu'}); {os.cpu_count()} CPU threads; "
          f"D_in {a.din}, T {a.tokens}, G {a.genes}, hidden {a.hidden}, {a.dtype}; "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    print(table([]))
    for spots in [int(v) for v in a.sizes.split(",")]:
        args = [f"--{k}={v}" for k, v in vars(a).items() if k not in ("sizes", "out", "one", "verbose")]
        proc = subprocess.run([sys.executable, __file__, *args, "--one", str(spots)],
                              capture_output=True, text=True)
        row = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
        if proc.returncode or not row:
            print(f"{spots} spots: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(row[0][4:]))
        print(table(rows).splitlines()[-1], flush=True)
        atomic.write_json(Path(a.out) / "results.json",
                          {"args": vars(a), "jax": jax.__version__, "torch": torch.__version__,
                           "rows": rows})
    print("\n" + table(rows))
    print("\nRoofline, the same counts for both frameworks (same model): GFLOP = the matmul "
          "FLOPs of the JAX step's jaxpr (scan bodies x length; roofline.matmul_flops), XLA GFLOP "
          "and GB = XLA's cost analysis of the compiled step (loop bodies counted once, no FLOPs "
          "in the CSR custom calls); peak = this process's matmul / stream-scale "
          "micro-benchmark (experiments/roofline.py)")
    print(roof_table(rows))
    return 0


if __name__ == "__main__":
    entry.run_script(main, "bench_torch", config="none", **FLAGS)
