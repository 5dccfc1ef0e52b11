"""Cross-layer edge candidates and scores of one scale (``build.build_edges`` calls these).

* ``cross_mode="paper"`` (``cross_layer_topk``): each node receives from the ``k_cross``
  nodes of OTHER sections with the largest e = IoU + cosine (paper eq. 1): IoU of the two
  circles of radius ``radius`` around the registered centres (analytic, ``iou.circle_iou``;
  the overlapping pairs come from one KD-tree radius query), cosine of the node features.
  Candidates: every other-layer node when the graph has at most ``cosine_all_max_nodes``
  nodes; beyond that only the other-layer nodes within max(cosine_radius, 2 * radius) px, so
  every node with IoU > 0 stays a candidate. Scores are computed in blocks of queries
  (spatial cells in radius mode), never as an N x N matrix. The weight is max(e,
  WEIGHT_FLOOR) (``edges.assemble_edges``): cosine can be negative and a weight must stay
  > 0; a selected edge is kept even when its e is below the floor.
* ``cross_mode="calibrated"`` (``cross_layer_calibrated``): the candidates of a node are the
  other-layer nodes within ``cross_radius`` px (registered frame); e = IoU + sim_weight *
  max(0, cos_z), where cos_z is the cosine of the features z-scored over the sample's nodes
  (per dimension), so the AVERAGE pair has cos_z ~ 0 and "similar" means more similar than
  average; the raw cosine of un-normalised ResNet features is 0.9-1 for every pair, which
  gave unrelated spots the weight of an overlap. A pair with e = 0 is no edge. The top
  ``k_cross`` by e are kept. ``expand_min_sim > 0`` adds the paper's similarity-based
  expansion: other-layer nodes up to ``cosine_radius`` px away are candidates too when their
  cos_z >= expand_min_sim.

A node gets at most k_cross cross neighbours (fewer when fewer candidates exist).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from asign_jax.errors import DataError
from asign_jax.graph.edges import layer_offsets, normalise_rows, worker_count
from asign_jax.graph.iou import circle_iou, overlap_matrix

BLOCK_ELEMS = 1 << 21      # cost entries per block (8 MB of float32)
CELL_QUERIES = 128         # radius mode: target number of query nodes per spatial cell


def cross_layer_topk(xy: np.ndarray, layer: np.ndarray, feats: np.ndarray, k: int,
                     radius: float, *, cosine_all_max_nodes: int = 20000,
                     cosine_radius: float = 1000.0, overlaps: Optional[sp.csr_matrix] = None,
                     workers: Optional[int] = None, block_elems: int = BLOCK_ELEMS,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's top-k nodes of OTHER layers by e = IoU + cosine (paper eq. 1).

    Candidates: all other-layer nodes if N <= cosine_all_max_nodes, else those within
    R = max(cosine_radius, 2 * radius) px (IoU > 0 needs d < 2 * radius, so overlapping nodes
    are always candidates). Radius mode groups the queries into square cells (about
    CELL_QUERIES queries each, side <= R), takes one KD-tree ball per cell (radius
    R + half the cell diagonal) as the candidate columns and masks the pairs farther than R
    (squared distances from a float32 matmul on cell-centred coordinates: error ~1e-3 px).
    Each block is a dense (Q, C) float32 cost matrix, cost = -e: minus cosine by matmul,
    +inf for same-layer and out-of-radius pairs, minus IoU at the pairs of the sparse
    overlap matrix; then the k smallest per row (``_topk_smallest``). Blocks run on
    ``workers`` threads with single-threaded BLAS.

    Args:
      xy: (N, 2) float centres (reference frame px); layer: (N,) int grouped increasingly;
      feats: (N, D) float features; k: neighbours per node; radius: circle radius (px).
      overlaps: optional precomputed ``iou.overlap_matrix(xy, layer, radius)``.

    Returns:
      senders (the chosen neighbours), receivers (the queries): (M,) int64; e: (M,) float32
      (not floored), at most k per receiver.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    offsets = layer_offsets(layer)
    layer = np.asarray(layer)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n == 0 or k <= 0 or len(offsets) < 3:
        return empty
    fn = normalise_rows(feats)
    ovm = overlap_matrix(xy, layer, radius) if overlaps is None else overlaps
    costs = _CostBlocks(fn, offsets, ovm, k)
    if n <= cosine_all_max_nodes:
        blocks, run = _all_pairs_blocks(costs, n, block_elems)
    else:
        blocks, run = _radius_blocks(costs, xy, radius, cosine_radius, block_elems)
    nw = worker_count(workers)
    with _single_threaded_blas(True):
        if nw > 1 and len(blocks) > 1:
            with ThreadPoolExecutor(nw) as ex:
                results = list(ex.map(run, blocks))
        else:
            results = [run(b) for b in blocks]
    if not results:
        return empty
    s_, r_, e_ = (np.concatenate(parts) for parts in zip(*results))
    return s_, r_, e_.astype(np.float32)


class _CostBlocks:
    """What every (Q, C) cost block of ``cross_layer_topk`` shares: the unit features fn
    (N, D), the layer offsets (L+1,), the IoU overlap matrix (N, N) CSR and k."""

    def __init__(self, fn: np.ndarray, offsets: np.ndarray, ovm: sp.csr_matrix, k: int):
        self.fn, self.offsets, self.k = fn, offsets, k
        self.ov_ptr, self.ov_idx = ovm.indptr, ovm.indices
        self.ov_val = ovm.data.astype(np.float32)
        self.ov_cnt = np.diff(self.ov_ptr)

    def mask_same_layer(self, cost, q_idx, c_lo, c_hi):
        """+inf on same-layer entries; q_idx ascending, c_lo/c_hi: column range per layer."""
        offsets = self.offsets
        r_lo = np.searchsorted(q_idx, offsets[:-1])
        r_hi = np.searchsorted(q_idx, offsets[1:])
        for l in np.flatnonzero(r_hi > r_lo):
            cost[r_lo[l]:r_hi[l], c_lo[l]:c_hi[l]] = np.inf

    def subtract_iou(self, cost, q_idx, c_idx):
        """cost -= IoU at the overlapping pairs (c_idx: the block's columns, None = all)."""
        lo, cnt = self.ov_ptr[q_idx], self.ov_cnt[q_idx]
        total = int(cnt.sum())
        if total == 0:
            return
        rows = np.repeat(np.arange(len(q_idx)), cnt)
        pos = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
        cols = self.ov_idx[pos] if c_idx is None else np.searchsorted(c_idx, self.ov_idx[pos])
        cost[rows, cols] -= self.ov_val[pos]

    def select(self, cost, q_idx, c_idx):
        """(senders, receivers, e) of the k smallest costs per row."""
        rows, cols, vals = _topk_smallest(cost, self.k)
        return (cols if c_idx is None else c_idx[cols]), q_idx[rows], -vals


def _all_pairs_blocks(costs: _CostBlocks, n: int, block_elems: int):
    """Every query against every node, in row blocks: (blocks of query indices, run)."""
    fn, offsets = costs.fn, costs.offsets
    rows_per_block = max(1, block_elems // n)
    blocks = [np.arange(a, min(a + rows_per_block, n)) for a in range(0, n, rows_per_block)]

    def run(q_idx):
        cost = np.negative(fn[q_idx]) @ fn.T
        costs.mask_same_layer(cost, q_idx, offsets[:-1], offsets[1:])
        costs.subtract_iou(cost, q_idx, None)
        return costs.select(cost, q_idx, None)
    return blocks, run


def _radius_blocks(costs: _CostBlocks, xy: np.ndarray, radius: float, cosine_radius: float,
                   block_elems: int):
    """Queries grouped in square cells, each against the nodes of one KD-tree ball around its
    cell, pairs farther than R masked: (blocks of query indices, run)."""
    fn, offsets = costs.fn, costs.offsets
    n = len(xy)
    reach = max(float(cosine_radius), 2.0 * float(radius))
    lo_xy = xy.min(axis=0)
    span = np.maximum(xy.max(axis=0) - lo_xy, 1.0)
    cell = math.sqrt(CELL_QUERIES * float(span[0] * span[1]) / n)
    cell = float(np.clip(cell, reach / 16.0, reach))
    ij = np.floor((xy - lo_xy) / cell).astype(np.int64)
    key = ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1]
    order = np.argsort(key, kind="stable")          # stable: queries stay ascending
    ks = key[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], n]
    blocks = [order[a:b] for a, b in zip(starts, ends)]
    tree = cKDTree(xy)
    ball = reach + cell * math.sqrt(0.5) + 1.0
    reach2 = np.float32(reach * reach)

    def run(q_all):
        centre = lo_xy + (ij[q_all[0]] + 0.5) * cell
        c_idx = np.asarray(tree.query_ball_point(centre, ball), dtype=np.int64)
        c_idx.sort()
        pc = xy[c_idx] - centre
        # d^2 = |q|^2 + |c|^2 - 2 q.c as one small matmul on cell-centred coordinates
        cb = np.concatenate([-2.0 * pc, np.ones((len(c_idx), 1)),
                             (pc * pc).sum(1, keepdims=True)], axis=1).astype(np.float32)
        cb_t = np.ascontiguousarray(cb.T)
        fc = fn[c_idx]
        c_lo = np.searchsorted(c_idx, offsets[:-1])
        c_hi = np.searchsorted(c_idx, offsets[1:])
        outs = []
        step = max(1, block_elems // max(len(c_idx), 1))
        # every overlap partner of a query lies within 2r <= reach of it, hence inside
        # the ball, so subtract_iou's searchsorted always finds it in c_idx
        for a in range(0, len(q_all), step):
            q_idx = q_all[a:a + step]
            cost = np.negative(fn[q_idx]) @ fc.T
            pq = xy[q_idx] - centre
            qa = np.concatenate([pq, (pq * pq).sum(1, keepdims=True),
                                 np.ones((len(q_idx), 1))], axis=1).astype(np.float32)
            np.putmask(cost, (qa @ cb_t) > reach2, np.inf)
            costs.mask_same_layer(cost, q_idx, c_lo, c_hi)
            costs.subtract_iou(cost, q_idx, c_idx)
            outs.append(costs.select(cost, q_idx, c_idx))
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return blocks, run


def _topk_smallest(cost: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise k smallest finite entries of a (Q, C) cost block (+inf = not a candidate).

    Wide blocks avoid a full ``argpartition`` (slow, and pathological with many equal masked
    entries): the columns are split into 4k disjoint strided chunks (column j in chunk
    j mod 4k), the k-th smallest chunk minimum bounds the row's k-th smallest value from
    above (k distinct chunks reach it), and only the entries <= that bound are sorted.
    Exact, ties aside.

    Returns rows, cols (int64) and values of the kept entries, at most k per row.
    """
    q, c = cost.shape
    kk = min(k, c)
    if kk <= 0 or q == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), np.zeros(0, cost.dtype)
    n_chunks = 4 * kk
    if c < 2 * n_chunks:
        cols = (np.argpartition(cost, kk - 1, axis=1)[:, :kk] if kk < c
                else np.broadcast_to(np.arange(c), (q, c)))
        vals = np.take_along_axis(cost, cols, axis=1)
        ok = np.isfinite(vals)
        rows = np.broadcast_to(np.arange(q)[:, None], cols.shape)[ok]
        return rows.astype(np.int64), cols[ok].astype(np.int64), vals[ok]
    m = c // n_chunks
    mins = cost[:, :n_chunks * m].reshape(q, m, n_chunks).min(axis=1)   # a view; SIMD min
    bound = np.partition(mins, kk - 1, axis=1)[:, kk - 1]
    rows, cols = np.nonzero(cost <= bound[:, None])
    vals = cost[rows, cols]
    ok = np.isfinite(vals)
    rows, cols, vals = rows[ok], cols[ok], vals[ok]
    order = np.lexsort((vals, rows))                  # by row, then value
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < kk
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64), vals[keep]


@contextlib.contextmanager
def _single_threaded_blas(active: bool = True):
    """The blocks are small matmuls: BLAS threads only oversubscribe (and spin) there."""
    if not active:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional; results are identical without it
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def zscore_unit(feats: np.ndarray) -> np.ndarray:
    """(N, D) features z-scored per dimension over the N nodes, rows scaled to unit norm:
    their dot products are the calibrated cosine cos_z (0 for an average pair)."""
    f = np.asarray(feats, np.float64)
    if not np.all(np.isfinite(f)):
        raise DataError("node features contain NaN or inf")
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    return normalise_rows(f)


def cross_layer_calibrated(xy: np.ndarray, layer: np.ndarray, feats: np.ndarray, k: int,
                           radius: float, cross_radius: float, *, sim_weight: float = 1.0,
                           expand_min_sim: float = 0.0, expand_radius: float = 1000.0,
                           chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's top-k other-layer nodes by e = IoU + sim_weight * max(0, cos_z).

    Candidates: other-layer pairs closer than ``cross_radius`` (one KD-tree pair query), plus,
    when ``expand_min_sim > 0``, pairs closer than ``expand_radius`` whose cos_z >=
    ``expand_min_sim`` (the paper's similarity-based expansion, restricted to pairs more
    similar than average by that margin). Pairs with e = 0 are dropped. Scores are symmetric,
    so both directions of a pair are candidates of their receivers.

    Returns senders, receivers (int64) and e (float32 > 0), at most k per receiver.
    """
    xy = np.asarray(xy, np.float64)
    layer = np.asarray(layer)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if len(xy) == 0 or k <= 0:
        return empty
    fz = zscore_unit(feats).astype(np.float32)
    expand = float(expand_min_sim) > 0
    reach = max(float(cross_radius), float(expand_radius) if expand else 0.0)
    pairs = cKDTree(xy).query_pairs(reach, output_type="ndarray")
    pairs = pairs[layer[pairs[:, 0]] != layer[pairs[:, 1]]]
    if len(pairs) == 0:
        return empty
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.sqrt(((xy[i] - xy[j]) ** 2).sum(1))
    cos = np.empty(len(i), np.float32)
    for a in range(0, len(i), chunk):
        cos[a:a + chunk] = np.einsum("nd,nd->n", fz[i[a:a + chunk]], fz[j[a:a + chunk]])
    sim = np.maximum(cos, 0.0)
    e = circle_iou(d, radius) + float(sim_weight) * sim
    ok = (e > 0) & ((d <= cross_radius) | (expand & (cos >= float(expand_min_sim))))
    i, j, e = i[ok], j[ok], e[ok]
    recv = np.concatenate([i, j])
    send = np.concatenate([j, i])
    e = np.concatenate([e, e])
    order = np.lexsort((send, -e, recv))          # by receiver, best first, ties by sender
    recv, send, e = recv[order], send[order], e[order]
    rank = np.arange(len(recv)) - np.searchsorted(recv, recv, side="left")
    keep = rank < k
    return send[keep].astype(np.int64), recv[keep].astype(np.int64), e[keep].astype(np.float32)
