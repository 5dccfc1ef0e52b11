"""Sparse products on a graph, y = A x with A[i, j] = sum of the values of the edges j -> i.

Used by the CLI propagation (``cli.propagate``) and the GAT aggregation (``gat.GATLayer``).
Why not ``segment_sum(values * x[senders], receivers)``: that materialises the (E, F)
gathered rows, and XLA's CPU gather and scatter handle them element by element (measured in
``experiments/bench_kernels.py``: at E = 321k, F = 250 the gather alone took longer than a
whole CSR product). On CPU the product runs in jaxlib's own CSR x dense kernel
(``cpu_csr_sparse_dense_ffi``, the one ``jax.experimental.sparse`` registers), linear in
E x F and with no (E, F) intermediate; other backends (GPU, TPU) keep the gather + sorted
segment sum, which they run in parallel.

The CSR layout is derived in-graph from ``senders``/``receivers`` (one stable argsort each
way, O(E log E) on E scalars), so any edge order works; the graph builder already sorts by
receiver. The transpose (A^T g, the gradient w.r.t. x) uses the sender-sorted layout.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

_CPU_TARGET = "cpu_csr_sparse_dense_ffi"


def _cpu_kernel_available() -> bool:
    try:
        import jax.experimental.sparse  # noqa: F401  (registers the CPU FFI targets)
        from jaxlib.cpu import _sparse
        return _CPU_TARGET in _sparse.registrations()
    except Exception:  # an older/newer jaxlib without it: the XLA path serves every platform
        return False


CPU_KERNEL = _cpu_kernel_available()
"""True when jaxlib's CPU CSR kernel is registered (else the gather + segment-sum path)."""


class CSR(NamedTuple):
    """One direction of the edge set, grouped by output row.

    perm: (E,) int32, edge order grouped by row (stable); indptr: (N + 1,) int32 row starts in
    that order; cols: (E,) int32 column (input node) of each edge in that order; rows: (E,)
    int32 row of each edge in that order (sorted).
    """

    perm: jnp.ndarray
    indptr: jnp.ndarray
    cols: jnp.ndarray
    rows: jnp.ndarray


class Layout(NamedTuple):
    """A graph's two CSR views: ``fwd`` (rows = receivers) and ``bwd`` (rows = senders)."""

    fwd: CSR
    bwd: CSR


def _csr(rows: jnp.ndarray, cols: jnp.ndarray, n_node: int) -> CSR:
    perm = jnp.argsort(rows, stable=True).astype(jnp.int32)
    rows_sorted = rows[perm].astype(jnp.int32)
    counts = jnp.zeros(n_node, jnp.int32).at[rows].add(1)
    indptr = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
    return CSR(perm, indptr, cols[perm].astype(jnp.int32), rows_sorted)


def layout(senders: jnp.ndarray, receivers: jnp.ndarray, n_node: int) -> Layout:
    """The CSR views of the edges ``senders[e] -> receivers[e]`` of an n_node-node graph."""
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    return Layout(_csr(receivers, senders, n_node), _csr(senders, receivers, n_node))


def _product_xla(data, csr: CSR, x, n_node: int):
    return jax.ops.segment_sum(data[:, None] * x[csr.cols], csr.rows, n_node,
                               indices_are_sorted=True)


def _product_cpu(data, csr: CSR, x, n_node: int):
    out = jax.ShapeDtypeStruct((n_node, x.shape[1]), x.dtype)
    return jax.ffi.ffi_call(_CPU_TARGET, out, vmap_method="sequential")(
        data, csr.indptr, csr.cols, x)


def _product(data, csr: CSR, x, n_node: int):
    """(N, F) = sum over the CSR's edges (already in its order) of data * x[cols] per row."""
    dtype = x.dtype
    if not CPU_KERNEL:
        return _product_xla(data.astype(dtype), csr, x, n_node)
    # the CPU kernel takes float32/64 only; bfloat16 runs it in float32
    kdt = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float32
    data_k, x_k = data.astype(kdt), x.astype(kdt)
    out = jax.lax.platform_dependent(
        data_k, x_k, cpu=lambda d, v: _product_cpu(d, csr, v, n_node),
        default=lambda d, v: _product_xla(d, csr, v, n_node))
    return out.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _spmm(values, x, lay: Layout, n_node: int):
    return _product(values[lay.fwd.perm], lay.fwd, x, n_node)


def _spmm_fwd(values, x, lay, n_node):
    return _spmm(values, x, lay, n_node), (values, x, lay)


def _spmm_bwd(n_node, res, g):
    values, x, lay = res
    grad_x = _product(values[lay.bwd.perm], lay.bwd, g, n_node)
    # d/d value_e = <g[receiver_e], x[sender_e]> (XLA drops it when nothing needs it)
    per_edge = jnp.sum(g[lay.fwd.rows] * x[lay.fwd.cols], axis=-1)      # receiver-sorted
    grad_values = jnp.zeros_like(values).at[lay.fwd.perm].set(per_edge.astype(values.dtype),
                                                                unique_indices=True)
    return grad_values, grad_x.astype(x.dtype), None


_spmm.defvjp(_spmm_fwd, _spmm_bwd)


def spmm(values: jnp.ndarray, x: jnp.ndarray, lay: Layout) -> jnp.ndarray:
    """y[i] = sum over edges e = (j -> i) of values[e] * x[j].

    Args:
      values: (E,) edge values in the ORIGINAL edge order (0 for masked edges).
      x: (N, F) node features.
      lay: ``layout(senders, receivers, N)``.

    Returns (N, F). Differentiable in ``values`` and ``x``.
    """
    return _spmm(values, x, lay, x.shape[0])


def spmm_heads(values: jnp.ndarray, x: jnp.ndarray, lay: Layout) -> jnp.ndarray:
    """Per-head ``spmm``: values (E, k), x (N, k, d) -> (N, k, d) (one product per head)."""
    return jnp.stack([spmm(values[:, h], x[:, h, :], lay) for h in range(x.shape[1])], axis=1)
