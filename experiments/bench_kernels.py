"""The CLI propagation's kernels: dense (N, N) matmul vs. CSR product vs. gather + segment sum.

Times ``cli.propagate`` (10 iterations, forward + backward w.r.t. the prediction and alpha,
G = 250) on 3D Visium-lattice spot graphs (``visium_block``: 4 sections, the real graph
builder, ~22 in-edges per node) at several node counts, with ``dense=True`` (one (N, N)
matmul per iteration), the CSR product (``models.sparse``; jaxlib's CPU kernel on CPU) and
the old gather + segment-sum form. The crossover ``cli.DENSE_MAX_NODES`` comes from this table.
Writes the table to ``<out>/results.json`` (default ``--out runs/experiments/bench_kernels``).

    python experiments/bench_kernels.py [--nodes 256,512,1024,2048,4096,15000] [--out DIR]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from visium_block import make_block   # experiments/ (the script's folder) is on sys.path

from asign_jax import atomic, entry
from asign_jax.models import cli


def segment_form(pred, labels, known, s, r, w, alpha, emask, nmask, n_iter):
    """The pre-issue-12 sparse form: gather the (E, G) sender rows, segment-sum them."""
    n = pred.shape[0]
    known = known & nmask
    valid = emask & nmask[s] & nmask[r] & (w > 0)
    a = jnp.where(nmask, alpha, 0.0)
    ww = jnp.where(valid, a[s] * w, 0.0)
    den = jax.ops.segment_sum(ww, r, n)
    has_in = den > 0
    den = jnp.where(has_in, den, 1.0)
    p0 = jnp.where(known[:, None], labels, pred)

    def body(_, c):
        p, reached = c
        reached = reached | (jax.ops.segment_max((valid & reached[s]).astype(jnp.int32), r, n) > 0)
        avg = jax.ops.segment_sum(ww[:, None] * p[s], r, n) / den[:, None]
        p = jnp.where((reached & ~known & has_in)[:, None], avg, p)
        return jnp.where(known[:, None], labels, p), reached
    return jax.lax.fori_loop(0, n_iter, body, (p0, known))


def time_fn(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(a):
    rows = []
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; CSR CPU kernel: "
          f"{cli.sparse.CPU_KERNEL}")
    for n in [int(v) for v in a.nodes.split(",")]:
        g = make_block(max(1, n // 4), 4, a.genes, feat_dim=8, n_tokens=1).spot
        n_node, s, r = len(g.nodes["layer"]), g.senders, g.receivers
        rng = np.random.default_rng(0)
        pred = jnp.asarray(rng.normal(-5, 1, (n_node, a.genes)), jnp.float32)
        labels = jnp.asarray(g.nodes["label"])
        known = jnp.asarray(g.nodes["layer"] == 0)
        alpha = jnp.asarray(rng.uniform(0.2, 0.8, n_node), jnp.float32)
        emask, nmask = jnp.ones(len(s), bool), jnp.ones(n_node, bool)
        w = jnp.asarray(g.edges["weight"])

        def loss(form):
            def f(p, al, s, r, w):           # graph arrays as arguments: nothing to const-fold
                if form == "segment":
                    out, _ = segment_form(p, labels, known, s, r, w, al, emask, nmask, 10)
                else:
                    out, _ = cli.propagate(p, labels, known, s, r, w, al, emask, nmask, 10,
                                           dense=form == "dense")
                return jnp.sum(jnp.sin(out))
            return jax.jit(jax.grad(f, argnums=(0, 1)))
        row = {"nodes": n_node, "edges": int(len(s))}
        for form in ("dense", "csr", "segment"):
            if (form == "dense" and n_node > a.dense_max) or \
                    (form == "segment" and n_node > a.segment_max):
                continue
            row[form + "_ms"] = round(1e3 * time_fn(loss(form), (pred, alpha, s, r, w),
                                                       a.repeats), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    faster = [r["nodes"] for r in rows if "dense_ms" in r and r["dense_ms"] < r["csr_ms"]]
    print(f"dense faster than CSR up to {max(faster) if faster else 0} nodes "
          f"(cli.DENSE_MAX_NODES = {cli.DENSE_MAX_NODES})")
    out = atomic.write_json(Path(a.out) / "results.json", {"jax": jax.__version__, "rows": rows})
    print(f"written: {out}")


if __name__ == "__main__":
    entry.run_script(main, "bench_kernels", config="none",
                     nodes=("64,128,256,512,1024,2048,4096,15000", "Node counts (comma-separated)."),
                     genes=(250, "Genes G."), repeats=(3, "Timed repeats (median)."),
                     dense_max=(4096, "Skip the dense form above this many nodes."),
                     segment_max=(20000, "Skip the segment form above this many nodes."))
