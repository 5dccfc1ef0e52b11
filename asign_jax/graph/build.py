"""Builds the 3D sample graph (spot, region and global scales) of ``contract.py``.

Per scale, with all nodes of all sections in layer order and registered centres ``xy``:

* same-layer edges (EDGE_INTRA): each node receives from its ``k_intra`` nearest nodes of its
  own section (Euclidean distance in the reference frame, KD-tree per layer). Raw weight
  1 / max(d, MIN_DISTANCE_PX); after symmetrisation each receiver's intra weights are divided
  by their maximum, so every receiver's strongest intra edge has weight 1.
* cross-layer edges (EDGE_CROSS, only if ``cross_layer``): each node receives from the
  ``k_cross`` nodes of OTHER sections with the largest e = IoU + cosine (paper eq. 1): IoU of
  the two circles of radius ``radius`` around the registered centres (analytic,
  ``iou.circle_iou``; the overlapping pairs come from one KD-tree radius query), cosine of the
  node features. Candidates: every other-layer node when the graph has at most
  ``cosine_all_max_nodes`` nodes; beyond that only the other-layer nodes within
  max(cosine_radius, 2 * radius) px, so every node with IoU > 0 stays a candidate. Scores
  are computed in blocks of queries (spatial cells in radius mode), never as an N x N matrix.
  Weight = max(e, WEIGHT_FLOOR): cosine can be negative and a weight must stay > 0; a
  selected edge is kept even when its e is below the floor (it is still among the node's
  best other-layer matches).
* calibrated cross-layer edges (``cross_mode="calibrated"``, ``cross_layer_calibrated``): the
  candidates of a node are the other-layer nodes within ``cross_radius`` px (registered frame);
  weight e = IoU + sim_weight * max(0, cos_z), where cos_z is the cosine of the features
  z-scored over the sample's nodes (per dimension), so the AVERAGE pair has cos_z ~ 0 and
  "similar" means more similar than average; the raw cosine of un-normalised ResNet features
  is 0.9-1 for every pair, which gave unrelated spots the weight of an overlap. A pair with
  e = 0 (no overlap, not more similar than average) is no edge. The top ``k_cross`` by e are
  kept. ``expand_min_sim > 0`` adds the paper's similarity-based expansion: other-layer nodes
  up to ``cosine_radius`` px away are candidates too when their cos_z >= expand_min_sim.
* k is clipped to what exists: a node gets min(k_intra, n_layer - 1) intra neighbours and at
  most k_cross cross neighbours (fewer when fewer candidates exist).
* symmetry: the edge set of each type is the union of both directions (if j is among i's
  top-k, both j->i and i->j exist). Both raw scores are symmetric functions of the pair, so
  the two directions carry the same value; where float round-off makes them differ the MAX
  is kept. Intra and cross edges never coincide (same layer vs. other layer), so there are
  no duplicate edges.
* self-loops: only a node left with no edge at all gets one (EDGE_SELF, weight 1), with a
  logged warning; every node ends with in-degree >= 1.
* edges are grouped by receiver in increasing order (within a receiver: intra, cross, self
  edges, each by sender), so segment ops may pass ``indices_are_sorted=True`` on receivers.

The official code's bugs (unsorted layer order, broken same-layer zeroing, self loops from the
diagonal, per-batch subgraphs) are not reproduced; see the shared notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import jraph
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from asign_jax.errors import DataError
from asign_jax.graph.contract import (EDGE_CROSS, EDGE_INTRA, EDGE_SELF, SCALES, WEIGHT_FLOOR,
                                      SampleGraph)
from asign_jax.graph.iou import circle_iou, overlap_matrix

log = logging.getLogger(__name__)

MIN_DISTANCE_PX = 1.0      # intra distances below this count as this (coincident centres)
BLOCK_ELEMS = 1 << 21      # cost entries per block (8 MB of float32)
CELL_QUERIES = 128         # radius mode: target number of query nodes per spatial cell


# ----------------------------------------------------------------------------------------
# containers

@dataclasses.dataclass
class ScaleEdges:
    """The edges of one scale, grouped by receiver (ascending); within a receiver its intra,
    then cross, then self edge, each group by sender.

    senders, receivers: (E,) int32; weight: (E,) float32; type: (E,) int32;
    stats: counts and overlap fractions (see ``build_edges``).
    """

    senders: np.ndarray
    receivers: np.ndarray
    weight: np.ndarray
    type: np.ndarray
    stats: dict


# ----------------------------------------------------------------------------------------
# helpers

def _layer_offsets(layer: np.ndarray) -> np.ndarray:
    """(L+1,) offsets of a layer array that is grouped in increasing order (0..L-1)."""
    layer = np.asarray(layer)
    if len(layer) == 0:
        return np.zeros(1, np.int64)
    if np.any(np.diff(layer) < 0) or layer[0] < 0:
        raise ValueError("nodes must be grouped by layer in increasing order")
    n_layers = int(layer[-1]) + 1
    return np.searchsorted(layer, np.arange(n_layers + 1)).astype(np.int64)


def _workers(workers: Optional[int]) -> int:
    return max(1, min(2, os.cpu_count() or 1)) if workers is None else max(1, int(workers))


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


def _normalise(feats: np.ndarray) -> np.ndarray:
    """(N, D) float32 rows scaled to unit L2 norm (zero rows stay zero: cosine 0)."""
    f = np.asarray(feats, dtype=np.float32)
    if not np.all(np.isfinite(f)):
        raise DataError("node features contain NaN or inf")
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norm, 1e-12)


def _csr_rows(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))


def _sym_max(n: int, senders, receivers, values) -> sp.csr_matrix:
    """(n, n) CSR, row = receiver, holding the union of both directions (max on overlap).

    ``values`` must be > 0 (sparse matrices drop zeros) and the directed pairs unique.
    """
    a = sp.csr_matrix((np.asarray(values, np.float64), (receivers, senders)), shape=(n, n))
    a = a.maximum(a.T.tocsr()).tocsr()
    a.sort_indices()
    return a


# ----------------------------------------------------------------------------------------
# the three edge sets

def intra_layer_knn(xy: np.ndarray, layer: np.ndarray, k: int,
                    workers: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's min(k, n_layer - 1) nearest other nodes of its own layer (KD-tree per layer).

    Args:
      xy: (N, 2) float centres; layer: (N,) int grouped in increasing order; k >= 0.

    Returns:
      senders (the neighbours), receivers (the queries): (M,) int64; dist: (M,) float64.
    """
    xy = np.asarray(xy, dtype=np.float64)
    offsets = _layer_offsets(layer)
    out_s, out_r, out_d = [], [], []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        n = int(hi - lo)
        kk = min(int(k), n - 1)
        if kk <= 0:
            continue
        pts = xy[lo:hi]
        dist, idx = cKDTree(pts).query(pts, k=kk + 1, workers=_workers(workers))
        me = np.arange(n)[:, None]
        keep = idx != me                           # drop self (wherever coincident points put it)
        keep &= np.cumsum(keep, axis=1) <= kk      # and keep exactly kk others
        out_s.append(idx[keep].astype(np.int64) + lo)
        out_r.append(np.broadcast_to(me, idx.shape)[keep].astype(np.int64) + lo)
        out_d.append(dist[keep])
    if not out_s:
        e = np.zeros(0, np.int64)
        return e, e.copy(), np.zeros(0, np.float64)
    return np.concatenate(out_s), np.concatenate(out_r), np.concatenate(out_d)


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
    offsets = _layer_offsets(layer)
    layer = np.asarray(layer)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n == 0 or k <= 0 or len(offsets) < 3:
        return empty
    fn = _normalise(feats)
    ovm = overlap_matrix(xy, layer, radius) if overlaps is None else overlaps

    def mask_same_layer(cost, q_idx, c_lo, c_hi):
        """+inf on same-layer entries; q_idx ascending, c_lo/c_hi: column range per layer."""
        r_lo = np.searchsorted(q_idx, offsets[:-1])
        r_hi = np.searchsorted(q_idx, offsets[1:])
        for l in np.flatnonzero(r_hi > r_lo):
            cost[r_lo[l]:r_hi[l], c_lo[l]:c_hi[l]] = np.inf

    ov_ptr, ov_idx, ov_val = ovm.indptr, ovm.indices, ovm.data.astype(np.float32)
    ov_cnt = np.diff(ov_ptr)

    def subtract_iou(cost, q_idx, c_idx):
        lo, cnt = ov_ptr[q_idx], ov_cnt[q_idx]
        total = int(cnt.sum())
        if total == 0:
            return
        rows = np.repeat(np.arange(len(q_idx)), cnt)
        pos = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
        cols = ov_idx[pos] if c_idx is None else np.searchsorted(c_idx, ov_idx[pos])
        cost[rows, cols] -= ov_val[pos]

    def select(cost, q_idx, c_idx):
        rows, cols, vals = _topk_smallest(cost, k)
        return (cols if c_idx is None else c_idx[cols]), q_idx[rows], -vals

    if n <= cosine_all_max_nodes:
        rows_per_block = max(1, block_elems // n)
        blocks = [np.arange(a, min(a + rows_per_block, n)) for a in range(0, n, rows_per_block)]

        def run(q_idx):
            cost = np.negative(fn[q_idx]) @ fn.T
            mask_same_layer(cost, q_idx, offsets[:-1], offsets[1:])
            subtract_iou(cost, q_idx, None)
            return select(cost, q_idx, None)
    else:
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
                mask_same_layer(cost, q_idx, c_lo, c_hi)
                subtract_iou(cost, q_idx, c_idx)
                outs.append(select(cost, q_idx, c_idx))
            return tuple(np.concatenate(parts) for parts in zip(*outs))

    nw = _workers(workers)
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


def zscore_unit(feats: np.ndarray) -> np.ndarray:
    """(N, D) features z-scored per dimension over the N nodes, rows scaled to unit norm:
    their dot products are the calibrated cosine cos_z (0 for an average pair)."""
    f = np.asarray(feats, np.float64)
    if not np.all(np.isfinite(f)):
        raise DataError("node features contain NaN or inf")
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    return _normalise(f)


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


def edge_statistics(xy: np.ndarray, layer: np.ndarray, edges: "ScaleEdges",
                    radius: float) -> dict:
    """What the edges of one scale mean, for the graph log and ``graphs/<sample>.json``.

    pitch_px: median distance of a node to its nearest same-layer node (the spot pitch);
    cross_iou0_share: share of cross edges whose circles do not overlap (IoU = 0);
    cross_median_pitches: median cross-edge length in pitches; cross_long_share: share of
    cross edges longer than 4 pitches; mean_weight: {intra, cross_overlap, cross_no_overlap,
    self} mean edge weight (null where there is no such edge).
    """
    xy = np.asarray(xy, np.float64)
    layer = np.asarray(layer)
    nn_d = []
    for l in np.unique(layer):
        pts = xy[layer == l]
        if len(pts) > 1:
            nn_d.append(cKDTree(pts).query(pts, k=2)[0][:, 1])
    pitch = float(np.median(np.concatenate(nn_d))) if nn_d else float("nan")
    length = np.sqrt(((xy[edges.senders] - xy[edges.receivers]) ** 2).sum(1))
    cross = edges.type == EDGE_CROSS
    overlap = length < 2.0 * radius
    kinds = {"intra": edges.type == EDGE_INTRA, "cross_overlap": cross & overlap,
             "cross_no_overlap": cross & ~overlap, "self": edges.type == EDGE_SELF}
    mean_w = {k: (float(edges.weight[m].mean()) if m.any() else None) for k, m in kinds.items()}
    n_cross = int(cross.sum())
    lc = length[cross] / pitch if n_cross and pitch > 0 else np.zeros(0)
    return {"pitch_px": pitch,
            "cross_iou0_share": float((cross & ~overlap).sum() / n_cross) if n_cross else 0.0,
            "cross_median_pitches": float(np.median(lc)) if len(lc) else None,
            "cross_long_share": float((lc > 4).mean()) if len(lc) else 0.0,
            "mean_weight": mean_w}


CROSS_MODES = ("paper", "calibrated")


def assemble_edges(n: int, intra: tuple, cross: tuple, *, context: str = "") -> ScaleEdges:
    """Symmetrises, weights and merges the directed edge sets; adds self-loops if isolated.

    Args:
      n: number of nodes.
      intra: (senders, receivers, dist) from ``intra_layer_knn``.
      cross: (senders, receivers, e) from ``cross_layer_topk``.
      context: names the graph in the isolated-node warning.
    """
    a_i = _sym_max(n, intra[0], intra[1], 1.0 / np.maximum(intra[2], MIN_DISTANCE_PX))
    cnt_i = np.diff(a_i.indptr)
    if a_i.nnz:
        row_max = np.zeros(n)
        row_max[cnt_i > 0] = np.maximum.reduceat(a_i.data, a_i.indptr[:-1][cnt_i > 0])
        a_i.data /= np.repeat(row_max, cnt_i)
    a_c = _sym_max(n, cross[0], cross[1], np.maximum(np.asarray(cross[2], np.float64),
                                                     WEIGHT_FLOOR))
    cnt_c = np.diff(a_c.indptr)
    iso = (cnt_i == 0) & (cnt_c == 0)
    isolated = np.flatnonzero(iso)
    if len(isolated):
        log.warning("%s%d of %d nodes have no neighbour; each gets a self-loop (e.g. node %d)",
                    f"{context}: " if context else "", len(isolated), n, isolated[0])
    # merge row by row: receiver r's edges are its intra, then cross, then self edges
    deg = cnt_i + cnt_c + iso
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(deg, out=ptr[1:])
    n_edge = int(ptr[-1])
    senders = np.empty(n_edge, np.int32)
    weight = np.empty(n_edge, np.float32)
    etype = np.empty(n_edge, np.int32)
    pos_i = np.repeat(ptr[:-1] - a_i.indptr[:-1], cnt_i) + np.arange(a_i.nnz)
    pos_c = np.repeat(ptr[:-1] + cnt_i - a_c.indptr[:-1], cnt_c) + np.arange(a_c.nnz)
    pos_s = ptr[:-1][iso]
    senders[pos_i], weight[pos_i], etype[pos_i] = a_i.indices, a_i.data, EDGE_INTRA
    senders[pos_c], weight[pos_c], etype[pos_c] = a_c.indices, a_c.data, EDGE_CROSS
    senders[pos_s], weight[pos_s], etype[pos_s] = isolated, 1.0, EDGE_SELF
    stats = {"n_intra": int(a_i.nnz), "n_cross": int(a_c.nnz), "n_self": int(len(isolated))}
    return ScaleEdges(senders=senders, receivers=np.repeat(np.arange(n, dtype=np.int32), deg),
                      weight=weight, type=etype, stats=stats)


def build_edges(xy: np.ndarray, layer: np.ndarray, feats: np.ndarray, *, k_intra: int,
                k_cross: int, radius: float, cross_layer: bool = True,
                cosine_all_max_nodes: int = 20000, cosine_radius: float = 1000.0,
                cross_mode: str = "paper", cross_radius: float = 336.0,
                sim_weight: float = 1.0, expand_min_sim: float = 0.0,
                workers: Optional[int] = None, timings: Optional[dict] = None,
                context: str = "") -> ScaleEdges:
    """All edges of one scale (the module docstring gives the rules).

    Args:
      xy: (N, 2) registered centres; layer: (N,) int grouped increasingly; feats: (N, D).
      cross_mode: "paper" (``cross_layer_topk``) or "calibrated" (``cross_layer_calibrated``
        with ``cross_radius``, ``sim_weight``, ``expand_min_sim`` and ``cosine_radius`` as
        the expansion radius).
      timings: if given, filled with seconds per part ("overlaps", "intra_knn",
        "cross_topk", "assemble").

    Returns:
      ScaleEdges; stats add "frac_overlap" (nodes with an overlapping node in another layer),
      "frac_iou_edge" (nodes with a cross edge to such a node) and ``edge_statistics``.
    """
    if cross_mode not in CROSS_MODES:
        raise ValueError(f"graph.cross_mode must be one of {CROSS_MODES}, got {cross_mode!r}")
    timings = {} if timings is None else timings
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    multi = len(_layer_offsets(layer)) > 2
    t = time.perf_counter()
    ovm = overlap_matrix(xy, layer, radius) if multi else sp.csr_matrix((n, n))
    timings["overlaps"] = time.perf_counter() - t
    t = time.perf_counter()
    intra = intra_layer_knn(xy, layer, k_intra, workers=workers)
    timings["intra_knn"] = time.perf_counter() - t
    t = time.perf_counter()
    if cross_layer and multi and cross_mode == "calibrated":
        cross = cross_layer_calibrated(xy, layer, feats, k_cross, radius, cross_radius,
                                       sim_weight=sim_weight, expand_min_sim=expand_min_sim,
                                       expand_radius=cosine_radius)
    elif cross_layer and multi:
        cross = cross_layer_topk(xy, layer, feats, k_cross, radius,
                                 cosine_all_max_nodes=cosine_all_max_nodes,
                                 cosine_radius=cosine_radius, overlaps=ovm, workers=workers)
    else:
        cross = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    timings["cross_topk"] = time.perf_counter() - t
    t = time.perf_counter()
    edges = assemble_edges(n, intra, cross, context=context)
    timings["assemble"] = time.perf_counter() - t
    is_cross = edges.type == EDGE_CROSS
    s, r = edges.senders[is_cross], edges.receivers[is_cross]
    hit = ((xy[s] - xy[r]) ** 2).sum(axis=1) < 4.0 * radius * radius     # IoU > 0
    has = np.zeros(n, bool)
    has[r[hit]] = True
    edges.stats.update(frac_overlap=float(np.mean(np.diff(ovm.indptr) > 0)) if n else 0.0,
                       frac_iou_edge=float(has.mean()) if n else 0.0)
    edges.stats.update(edge_statistics(xy, layer, edges, radius))
    return edges


# ----------------------------------------------------------------------------------------
# the sample graph

def _check(prepared, registered) -> None:
    names = [s.name for s in prepared.sections]
    if list(registered.section_names) != names:
        raise DataError(f"sample {prepared.sample_id}: registered sections "
                        f"{list(registered.section_names)} != prepared sections {names}")
    for l, s in enumerate(prepared.sections):
        where = f"sample {prepared.sample_id}, section {s.name}"
        for what, arr, m in (("spot_xy", registered.spot_xy[l], s.n_spots),
                             ("region_xy", registered.region_xy[l], len(s.region_origin)),
                             ("global_xy", registered.global_xy[l], len(s.global_origin))):
            if np.shape(arr) != (m, 2):
                raise DataError(f"{where}: registered {what} has shape {np.shape(arr)}, "
                                f"expected ({m}, 2)")
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{where}: registered {what} is not finite")
        for f in ("spot_feats", "region_feats", "global_feats", "region_tokens", "global_tokens"):
            if getattr(s, f) is None:
                raise DataError(f"{where}: {f} missing; run feature extraction first")
        for what, idx, m in (("spot_region", s.spot_region, len(s.region_origin)),
                             ("spot_global", s.spot_global, len(s.global_origin)),
                             ("region_global", s.region_global, len(s.global_origin))):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= m):
                raise DataError(f"{where}: {what} out of range [0, {m})")


def _graphs_tuple(nodes: dict, edges: ScaleEdges) -> jraph.GraphsTuple:
    return jraph.GraphsTuple(
        nodes=nodes, edges={"weight": edges.weight, "type": edges.type},
        senders=edges.senders, receivers=edges.receivers, globals=None,
        n_node=np.array([len(nodes["layer"])], np.int32),
        n_edge=np.array([len(edges.senders)], np.int32))


def build_sample_graph(prepared, registered, graph_cfg, data_cfg,
                       workers: Optional[int] = None) -> SampleGraph:
    """The spot, region and global 3D graphs of one sample.

    Args:
      prepared: ``PreparedSample`` with features; registered: its ``RegisteredSample``
        (sections in the same order).
      graph_cfg: ``config.graph`` (k_intra, k_cross, spot_radius, cross_layer,
        cosine_all_max_nodes, cosine_radius, region_k_*, global_k_*).
      data_cfg: ``config.data`` (region_size, global_size: circle radius = size / 2).

    Returns:
      SampleGraph with node keys per ``contract.py``; "label_mask" True on the nodes of
      sections with labels (False, label zeros, on image-only sections) and "known" all
      False (training sets them). Tokens keep their stored dtype (float16).
    """
    _check(prepared, registered)
    secs = prepared.sections
    n_layers = len(secs)
    counts = {"spot": [s.n_spots for s in secs],
              "region": [len(s.region_origin) for s in secs],
              "global": [len(s.global_origin) for s in secs]}
    offsets = {k: np.concatenate([[0], np.cumsum(v)]).astype(np.int64) for k, v in counts.items()}

    def per_layer(scale):
        return np.repeat(np.arange(n_layers, dtype=np.int32), counts[scale])

    def cat(arrs, dtype=None):
        out = np.concatenate([np.asarray(a) for a in arrs], axis=0)
        return out if dtype is None else out.astype(dtype)

    xy = {"spot": cat(registered.spot_xy, np.float64),
          "region": cat(registered.region_xy, np.float64),
          "global": cat(registered.global_xy, np.float64)}
    layers = {k: per_layer(k) for k in SCALES}
    feats = {"spot": cat([s.spot_feats for s in secs], np.float32),
             "region": cat([s.region_feats for s in secs], np.float32),
             "global": cat([s.global_feats for s in secs], np.float32)}
    # image-only sections have no labels: zeros there, and label_mask False
    n_genes = len(prepared.genes)
    labels = {k: cat([getattr(s, f"{k}_labels") if s.labelled
                      else np.zeros((counts[k][l], n_genes), np.float32)
                      for l, s in enumerate(secs)], np.float32) for k in SCALES}
    labelled = {k: np.repeat([s.labelled for s in secs], counts[k]) for k in SCALES}
    settings = {
        "spot": (graph_cfg.k_intra, graph_cfg.k_cross, float(graph_cfg.spot_radius)),
        "region": (graph_cfg.region_k_intra, graph_cfg.region_k_cross,
                   data_cfg.region_size / 2.0),
        "global": (graph_cfg.global_k_intra, graph_cfg.global_k_cross,
                   data_cfg.global_size / 2.0),
    }

    # the candidate radius scales with the node size: cross_radius is given for spots
    cross_radius = {k: float(graph_cfg.cross_radius) * v[2] / settings["spot"][2]
                    for k, v in settings.items()}

    def sample_index(scale, target, field):
        """Section-level tile indices (``field``) -> sample-level node indices of ``target``."""
        local = cat([getattr(s, field) for s in secs], np.int64)
        return (offsets[target][layers[scale]] + local).astype(np.int32)

    graphs, stats = {}, {}
    for scale in SCALES:
        n = len(layers[scale])
        k_in, k_cr, rad = settings[scale]
        edges = build_edges(xy[scale], layers[scale], feats[scale], k_intra=int(k_in),
                            k_cross=int(k_cr), radius=rad, cross_layer=bool(graph_cfg.cross_layer),
                            cosine_all_max_nodes=int(graph_cfg.cosine_all_max_nodes),
                            cosine_radius=float(graph_cfg.cosine_radius),
                            cross_mode=str(graph_cfg.cross_mode),
                            cross_radius=cross_radius[scale],
                            sim_weight=float(graph_cfg.sim_weight),
                            expand_min_sim=float(graph_cfg.expand_min_sim), workers=workers,
                            context=f"sample {prepared.sample_id} {scale} graph")
        nodes = {"feat": feats[scale], "label": labels[scale],
                 "label_mask": labelled[scale], "known": np.zeros(n, bool),
                 "layer": layers[scale], "xy": xy[scale].astype(np.float32)}
        if scale == "spot":
            nodes["region_idx"] = sample_index("spot", "region", "spot_region")
            nodes["global_idx"] = sample_index("spot", "global", "spot_global")
        else:
            nodes["tokens"] = cat([getattr(s, f"{scale}_tokens") for s in secs])
        if scale == "region":
            nodes["global_idx"] = sample_index("region", "global", "region_global")
        graphs[scale] = _graphs_tuple(nodes, edges)
        stats[scale] = dict(edges.stats, n_node=n, n_edge=len(edges.senders))
    return SampleGraph(sample_id=prepared.sample_id, section_names=[s.name for s in secs],
                       spot=graphs["spot"], region=graphs["region"], global_=graphs["global"],
                       layer_offsets=offsets, stats=stats)
