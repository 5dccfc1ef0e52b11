"""Same-layer edges and the merge of one scale's edge sets (``build.build_edges`` calls these).

* same-layer edges (EDGE_INTRA): each node receives from its ``k_intra`` nearest nodes of its
  own section (Euclidean distance in the reference frame, KD-tree per layer); a node gets
  min(k_intra, n_layer - 1). Raw weight 1 / max(d, MIN_DISTANCE_PX); after symmetrisation
  each receiver's intra weights are divided by their maximum, so every receiver's strongest
  intra edge has weight 1.
* symmetry: the edge set of each type is the union of both directions (if j is among i's
  top-k, both j->i and i->j exist). Both raw scores are symmetric functions of the pair, so
  the two directions carry the same value; where float round-off makes them differ the MAX
  is kept. Intra and cross edges never coincide (same layer vs. other layer). Cross weights
  are max(e, WEIGHT_FLOOR).
* self-loops: only a node left with no edge at all gets one (EDGE_SELF, weight 1), with a
  logged warning; every node ends with in-degree >= 1.
* edges are grouped by receiver in increasing order (within a receiver: intra, cross, self
  edges, each by sender), so segment ops may pass ``indices_are_sorted=True`` on receivers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from asign_jax.errors import DataError
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, EDGE_SELF, WEIGHT_FLOOR

log = logging.getLogger(__name__)

MIN_DISTANCE_PX = 1.0      # intra distances below this count as this (coincident centres)


@dataclasses.dataclass
class ScaleEdges:
    """The edges of one scale, grouped by receiver (ascending); within a receiver its intra,
    then cross, then self edge, each group by sender.

    senders, receivers: (E,) int32; weight: (E,) float32; type: (E,) int32;
    stats: counts and overlap fractions (see ``build.build_edges``).
    """

    senders: np.ndarray
    receivers: np.ndarray
    weight: np.ndarray
    type: np.ndarray
    stats: dict


def layer_offsets(layer: np.ndarray) -> np.ndarray:
    """(L+1,) offsets of a layer array that is grouped in increasing order (0..L-1)."""
    layer = np.asarray(layer)
    if len(layer) == 0:
        return np.zeros(1, np.int64)
    if np.any(np.diff(layer) < 0) or layer[0] < 0:
        raise ValueError("nodes must be grouped by layer in increasing order")
    n_layers = int(layer[-1]) + 1
    return np.searchsorted(layer, np.arange(n_layers + 1)).astype(np.int64)


def worker_count(workers: Optional[int]) -> int:
    """Threads for the KD-tree queries and score blocks (default: up to 2)."""
    return max(1, min(2, os.cpu_count() or 1)) if workers is None else max(1, int(workers))


def normalise_rows(feats: np.ndarray) -> np.ndarray:
    """(N, D) float32 rows scaled to unit L2 norm (zero rows stay zero: cosine 0)."""
    f = np.asarray(feats, dtype=np.float32)
    if not np.all(np.isfinite(f)):
        raise DataError("node features contain NaN or inf")
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norm, 1e-12)


def sym_max(n: int, senders, receivers, values) -> sp.csr_matrix:
    """(n, n) CSR, row = receiver, holding the union of both directions (max on overlap).

    ``values`` must be > 0 (sparse matrices drop zeros) and the directed pairs unique.
    """
    a = sp.csr_matrix((np.asarray(values, np.float64), (receivers, senders)), shape=(n, n))
    a = a.maximum(a.T.tocsr()).tocsr()
    a.sort_indices()
    return a


def intra_layer_knn(xy: np.ndarray, layer: np.ndarray, k: int,
                    workers: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's min(k, n_layer - 1) nearest other nodes of its own layer (KD-tree per layer).

    Args:
      xy: (N, 2) float centres; layer: (N,) int grouped in increasing order; k >= 0.

    Returns:
      senders (the neighbours), receivers (the queries): (M,) int64; dist: (M,) float64.
    """
    xy = np.asarray(xy, dtype=np.float64)
    offsets = layer_offsets(layer)
    out_s, out_r, out_d = [], [], []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        n = int(hi - lo)
        kk = min(int(k), n - 1)
        if kk <= 0:
            continue
        pts = xy[lo:hi]
        dist, idx = cKDTree(pts).query(pts, k=kk + 1, workers=worker_count(workers))
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


def edge_statistics(xy: np.ndarray, layer: np.ndarray, edges: ScaleEdges,
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


def assemble_edges(n: int, intra: tuple, cross: tuple, *, context: str = "") -> ScaleEdges:
    """Symmetrises, weights and merges the directed edge sets; adds self-loops if isolated.

    Args:
      n: number of nodes.
      intra: (senders, receivers, dist) from ``intra_layer_knn``.
      cross: (senders, receivers, e) from ``cross_layer_topk``.
      context: names the graph in the isolated-node warning.
    """
    a_i = sym_max(n, intra[0], intra[1], 1.0 / np.maximum(intra[2], MIN_DISTANCE_PX))
    cnt_i = np.diff(a_i.indptr)
    if a_i.nnz:
        row_max = np.zeros(n)
        row_max[cnt_i > 0] = np.maximum.reduceat(a_i.data, a_i.indptr[:-1][cnt_i > 0])
        a_i.data /= np.repeat(row_max, cnt_i)
    a_c = sym_max(n, cross[0], cross[1], np.maximum(np.asarray(cross[2], np.float64),
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
