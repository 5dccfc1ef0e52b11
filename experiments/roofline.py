"""The machine's measured peak (a matmul and a stream copy) and a step's place under it.

``machine_peak()`` times, in this process, (a) a jitted float32 (n, n) @ (n, n) matmul
(2 n^3 FLOPs) and (b) a jitted stream "scale" y = x / 2 over a 256 MiB float32 array (donated: in place) (one read +
one write per element, counted as 2 x 4 bytes): the best of a few repeats, GFLOP/s and GB/s.
``step_cost(compiled)`` reads XLA's cost analysis (``compiled.cost_analysis()``) of a compiled
step: its FLOPs and bytes accessed. Caveats (said where the numbers are printed): XLA counts
a while loop's body ONCE (the CLI's 10 iterations are one iteration in its count) and gives no
FLOPs for custom calls (the CSR products of ``models.sparse``); ``csr_flops`` adds those
analytically (2 nnz F per product) when the caller knows them.

    python experiments/roofline.py           # prints the machine's peak
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def _best(f, *args, repeats=5):
    jax.block_until_ready(f(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def machine_peak(n: int = 2048, stream_mib: int = 256) -> dict:
    """{"matmul_gflops", "stream_gbs"}: best-of-5 float32 matmul and stream-scale rates."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    t_mm = _best(mm, a, a)
    # donated, so the output reuses the input's pages (no fresh buffer faulting in per call)
    sc = jax.jit(lambda v: v * 0.5, donate_argnums=0)
    x = sc(jnp.ones((stream_mib * 2**20 // 4,), jnp.float32))
    nbytes = 2 * x.size * 4
    best = np.inf
    for _ in range(8):
        t0 = time.perf_counter()
        x = sc(x)
        x.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"matmul_gflops": 2 * n**3 / t_mm / 1e9, "stream_gbs": nbytes / best / 1e9}


def step_cost(compiled) -> dict:
    """{"flops", "bytes"} of a compiled jax function (XLA's HloCostAnalysis)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):        # older jax: one dict per device
        ca = ca[0]
    ca = ca or {}
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0))}


def achieved(flops: float, nbytes: float, seconds: float, peak: dict) -> dict:
    """Achieved GFLOP/s and GB/s of a step and their fractions of the measured peak."""
    gf, gb = flops / seconds / 1e9, nbytes / seconds / 1e9
    return {"gflops": gf, "gbs": gb, "flop_frac": gf / peak["matmul_gflops"],
            "byte_frac": gb / peak["stream_gbs"],
            "intensity": flops / max(nbytes, 1.0),
            "ridge": peak["matmul_gflops"] / peak["stream_gbs"]}


if __name__ == "__main__":
    p = machine_peak()
    print(f"{jax.devices()[0].device_kind}: matmul {p['matmul_gflops']:.1f} GFLOP/s, "
          f"stream {p['stream_gbs']:.1f} GB/s, ridge {p['matmul_gflops'] / p['stream_gbs']:.1f} "
          "FLOP/byte")


def matmul_flops(fn, *args) -> float:
    """FLOPs of every dot_general in ``fn``'s jaxpr (2 x output size x contracted size), with
    scan bodies (``nn.scan`` layers, static ``fori_loop``s) counted ``length`` times, unlike
    XLA's cost analysis which counts a loop body once. A while loop of unknown trip count is
    counted once; custom calls (the CSR products) are not dot_generals and are not counted."""
    import jax.extend as jex  # noqa: F401  (jaxpr types)

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                out = eqn.outvars[0].aval.shape
                total += 2.0 * float(np.prod(out)) * float(np.prod([lhs[i] for i in lc]))
                continue
            mult = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
            subs = [v for v in eqn.params.values() if hasattr(v, "jaxpr") or
                    hasattr(v, "eqns")]
            subs += [b for v in eqn.params.values() if isinstance(v, (tuple, list))
                     for b in v if hasattr(b, "jaxpr") or hasattr(b, "eqns")]
            inner = [count(s.jaxpr if hasattr(s, "jaxpr") else s) for s in subs]
            if name == "cond":
                total += max(inner, default=0.0)
            else:
                total += mult * sum(inner)
        return total
    return count(jax.make_jaxpr(fn)(*args).jaxpr)
