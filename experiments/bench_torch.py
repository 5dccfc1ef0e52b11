"""JAX ASIGN against the project's PyTorch port of the same model: a size sweep at equal work.

For each size (spots per 3D sample; 4 Visium-lattice sections, regions and global tiles from
the project's tiling, graph from the real builder: ``visium_block.make_block``), both
frameworks run, with the SAME weights (the PyTorch model is a functional mirror of
``asign_jax.models.ASIGN`` reading the Flax parameter tree):

* the training step: forward + loss + backward + SGD-momentum update;
* the CLI alone: ``cli.propagate`` (10 iterations) forward + backward w.r.t. the prediction
  and alpha, against the mirror's ``torch_propagate``.

The PyTorch mirror is ``bench_torch_model.py``, the printed tables ``bench_torch_report.py``;
this script builds one size's steps and times them (``build``, ``run_size``).

Before timing, the eval-mode (no dropout) losses of the two models and the two CLI outputs are
compared (``equal`` in the table). Timings are INTERLEAVED (JAX, PyTorch, JAX, ...) so that
machine load hits both alike; each is the median of ``--steps`` after a warm-up (JAX's compile
is reported separately), and each timed step follows ``--warm`` untimed steps of the same
framework (``interleaved``). Each size runs in its own process (peak RSS per size, large sizes one
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
from asign_jax.training.sharding import compiler_options  # noqa: E402
from bench_torch_model import (to_torch_sample, torch_forward, torch_loss,  # noqa: E402
                               torch_propagate)
from bench_torch_report import roof_table, table  # noqa: E402
from visium_block import make_block  # noqa: E402


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


def interleaved(fns: dict, steps: int, warm: int = 1) -> dict:
    """Median seconds of each zero-argument function, called in turn ``steps`` times.

    Each timed call follows ``warm`` untimed calls of the same function: at 15k spots the
    first JAX step after PyTorch steps ran 1.2-1.5x slower than the next one (same page-fault
    count; cause not found; docs/performance.md), so a plain alternation timed a switch cost
    rather than the step."""
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, f in fns.items():
            for _ in range(warm):
                f()
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

    def step(p, opt, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key, True)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    # donated, so the update is written in place; the project's train step options
    # (training.sharding.compiler_options)
    jax_step = jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options())

    tp = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float32)).to(dev, tdt)
                      .requires_grad_(True), params["params"])
    tg = to_torch_sample(*(jax.tree.map(np.asarray, g) for g in (spot, region, glob)),
                         known, dev, tdt)
    with torch.no_grad():
        l_torch = float(torch_loss(torch_forward(tp, tg, c, False), tg, lc))
    l_jax = float(jax.jit(lambda p: loss_fn(p, jax.random.key(0), False))(params))

    j_cli, t_cli, out_j, out_t = _cli_pair(spot, known, tg, c, a, jdt, dev, tdt)

    key = jax.random.key(1)
    state = [params, tx.init(params)]
    mm_flops = roofline.matmul_flops(step, state[0], state[1], key)
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

    return {"j_step": j_step, "t_step": make_t_step(t_loss), "make_t_step": make_t_step,
            "t_loss": t_loss, "j_cli": j_cli, "t_cli": t_cli, "compiled": compiled,
            "compile_s": compile_s, "matmul_flops": mm_flops, "l_jax": l_jax, "l_torch": l_torch, "out_j": out_j,
            "out_t": out_t, "nodes": n_node, "edges": n_edge, "regions": int(region.n_node[0]),
            "globals": int(glob.n_node[0]), "data_s": t_data, "tp": tp, "tg": tg, "c": c,
            "lc": lc}


def _cli_pair(spot, known, tg: dict, c, a, jdt, dev: str, tdt):
    """The CLI alone in both frameworks, 10 iterations, forward + backward w.r.t. the
    prediction and alpha: (j_cli, t_cli) blocking timers and the two outputs (float32)."""
    rng = np.random.default_rng(2)
    pred = jnp.asarray(rng.normal(-5, 1, (len(known), a.genes)), jdt)
    alpha = jnp.asarray(rng.uniform(0.2, 0.8, len(known)), jdt)
    s, r, w = spot.senders, spot.receivers, spot.edges["weight"]
    em, nm = edge_mask(spot), node_mask(spot)

    @functools.partial(jax.jit, compiler_options=compiler_options())
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
        out = torch_propagate(tpred, sp["label"], sp["known"], *sp["graph"][:3], talpha,
                              sp["graph"][4], sp["node_mask"], c.cli_iterations)
        torch.sin(out).sum().backward()
        return out
    cli_args = (pred, alpha, s, r, w, em, nm)
    out_j = np.asarray(jax_cli(*cli_args)[0], np.float32)
    out_t = torch_cli().detach().float().cpu().numpy()

    sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)

    def j_cli():
        jax.block_until_ready(jax_cli(*cli_args))

    def t_cli():
        torch_cli()
        sync()
    return j_cli, t_cli, out_j, out_t


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
    med = interleaved(steps, a.steps, a.warm)
    med.update(interleaved({"jax_cli": b["j_cli"], "torch_cli": b["t_cli"]}, a.steps, a.warm))
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


FLAGS = dict(
    sizes=("1000,4000,15000,60000", "Spots per sample (comma-separated)."),
    sections=(4, "Sections."), din=(1024, "Feature dim D_in."),
    tokens=(16, "Tokens T."), genes=(250, "Genes G."),
    hidden=(256, "model.asign.hidden."), heads=(4, "model.asign.heads."),
    steps=(5, "Timed steps (median) after a warm-up."),
    warm=(1, "Untimed steps of the same framework before each timed one (interleaved)."),
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
