"""Intersection over union of equal circles, and the overlapping cross-layer pairs of a sample.

The paper's cross-layer score (eq. 1) uses the IoU of the circles drawn around two spots after
registration. The official code rasterises 99-vertex shapely polygons for ALL N x N pairs; here
the IoU of two equal circles is exact and analytic, and only pairs closer than 2r (the only
ones with IoU > 0) are ever looked at, found with one KD-tree radius query.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)


def circle_iou(d, radius: float) -> np.ndarray:
    """IoU of two circles of equal ``radius`` whose centres are ``d`` apart.

    lens = 2 r^2 acos(d / 2r) - (d / 2) sqrt(4 r^2 - d^2),  IoU = lens / (2 pi r^2 - lens),
    and 0 for d >= 2r.

    Args:
      d: array-like (...,) of centre distances (>= 0), any float dtype.
      radius: circle radius (> 0), same unit as ``d``.

    Returns:
      (...,) float64 in [0, 1] (1 at d = 0).
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    d = np.abs(np.asarray(d, dtype=np.float64))
    r = float(radius)
    dc = np.minimum(d, 2.0 * r)
    lens = 2.0 * r * r * np.arccos(dc / (2.0 * r)) - 0.5 * dc * np.sqrt(
        np.maximum(4.0 * r * r - dc * dc, 0.0))
    lens = np.maximum(lens, 0.0)
    iou = lens / (2.0 * np.pi * r * r - lens)
    return np.where(d < 2.0 * r, iou, 0.0)


def overlap_pairs(xy: np.ndarray, layer: np.ndarray, radius: float,
                  tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All cross-layer node pairs whose circles overlap (IoU > 0), each pair once.

    One ``cKDTree.query_pairs`` with r = 2 * radius over all nodes of the sample (every layer
    is already in the reference frame), then same-layer pairs and pairs at exactly 2r dropped.

    Args:
      xy: (N, 2) float centres in the reference frame (px).
      layer: (N,) int section index of each node.
      radius: circle radius (px).
      tree: optional prebuilt ``cKDTree(xy)``.

    Returns:
      i, j: (P,) int64 node indices with i < j and layer[i] != layer[j];
      iou: (P,) float64 in (0, 1].
    """
    xy = np.asarray(xy, dtype=np.float64)
    layer = np.asarray(layer)
    if len(xy) < 2:
        e = np.zeros(0, np.int64)
        return e, e.copy(), np.zeros(0, np.float64)
    tree = cKDTree(xy) if tree is None else tree
    pairs = tree.query_pairs(2.0 * radius, output_type="ndarray")
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    keep = layer[i] != layer[j]
    i, j = i[keep], j[keep]
    iou = circle_iou(np.hypot(xy[i, 0] - xy[j, 0], xy[i, 1] - xy[j, 1]), radius)
    keep = iou > 0
    return i[keep], j[keep], iou[keep]                   # query_pairs gives i < j


def overlap_matrix(xy: np.ndarray, layer: np.ndarray, radius: float,
                   tree: cKDTree | None = None) -> sp.csr_matrix:
    """The cross-layer IoU as a symmetric sparse (N, N) CSR matrix (only IoU > 0 stored).

    Row i lists the nodes of OTHER layers whose circle overlaps node i's, with sorted
    column indices; ``np.diff(m.indptr) > 0`` marks the nodes with an overlapping spot.
    """
    n = len(xy)
    i, j, iou = overlap_pairs(xy, layer, radius, tree=tree)
    rows = np.concatenate([i, j])
    cols = np.concatenate([j, i])
    m = sp.csr_matrix((np.concatenate([iou, iou]), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    return m
