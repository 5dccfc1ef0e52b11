"""Builds the 3D sample graph (spot, region and global scales) of ``contract.py``.

Per scale, with all nodes of all sections in layer order and registered centres ``xy``,
``build_edges`` joins three edge sets: same-layer kNN edges (``edges.intra_layer_knn``),
cross-layer edges by IoU + feature similarity (``cross.cross_layer_topk``, the paper's eq. 1,
or ``cross.cross_layer_calibrated``) and a self-loop for a node left without any edge;
``edges.assemble_edges`` symmetrises, weights and orders them (the rules are in the
docstrings of ``edges.py`` and ``cross.py``). ``build_sample_graph`` does this for the three
scales of a prepared, registered sample.

The official code's bugs (unsorted layer order, broken same-layer zeroing, self loops from the
diagonal, per-batch subgraphs) are not reproduced; see docs/official_code.md.
"""

from __future__ import annotations

import time
from typing import Optional

import jraph
import numpy as np
import scipy.sparse as sp

from asign_jax.config import check_choice
from asign_jax.errors import ConfigError, DataError
from asign_jax.graph.contract import EDGE_CROSS, SCALES, SampleGraph
from asign_jax.graph.cross import cross_layer_calibrated, cross_layer_topk
from asign_jax.graph.edges import (ScaleEdges, assemble_edges, edge_statistics, intra_layer_knn,
                                   layer_offsets)
from asign_jax.graph.iou import overlap_matrix


def _similarity_feats(feats: np.ndarray, graph_cfg) -> np.ndarray:
    """The (N, d) columns the edges' similarity reads (``graph.similarity_dims``; 0 = all)."""
    d = int(graph_cfg.similarity_dims)
    if d > feats.shape[1]:
        raise ConfigError(f"graph.similarity_dims={d}: the features have only "
                          f"{feats.shape[1]} columns")
    return feats[:, :d] if d else feats


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
    check_choice("graph.cross_mode", cross_mode)
    timings = {} if timings is None else timings
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    multi = len(layer_offsets(layer)) > 2
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


def _stack_nodes(prepared, registered) -> dict:
    """Every section's nodes stacked in layer order, per scale (``SCALES``).

    Returns {"counts": {scale: [n per section]}, "offsets": {scale: (L+1,) int64},
    "xy": (N, 2) float64, "layer": (N,) int32, "feat": (N, D) float32, "label": (N, G)
    float32 (zeros on image-only sections), "labelled": (N,) bool}, the last four per scale.
    """
    secs = prepared.sections
    n_layers = len(secs)
    counts = {"spot": [s.n_spots for s in secs],
              "region": [len(s.region_origin) for s in secs],
              "global": [len(s.global_origin) for s in secs]}
    offsets = {k: np.concatenate([[0], np.cumsum(v)]).astype(np.int64) for k, v in counts.items()}

    def per_layer(scale):
        return np.repeat(np.arange(n_layers, dtype=np.int32), counts[scale])

    xy = {"spot": _cat(registered.spot_xy, np.float64),
          "region": _cat(registered.region_xy, np.float64),
          "global": _cat(registered.global_xy, np.float64)}
    layers = {k: per_layer(k) for k in SCALES}
    feats = {"spot": _cat([s.spot_feats for s in secs], np.float32),
             "region": _cat([s.region_feats for s in secs], np.float32),
             "global": _cat([s.global_feats for s in secs], np.float32)}
    # image-only sections have no labels: zeros there, and label_mask False
    n_genes = len(prepared.genes)
    labels = {k: _cat([getattr(s, f"{k}_labels") if s.labelled
                       else np.zeros((counts[k][l], n_genes), np.float32)
                       for l, s in enumerate(secs)], np.float32) for k in SCALES}
    labelled = {k: np.repeat([s.labelled for s in secs], counts[k]) for k in SCALES}
    return {"counts": counts, "offsets": offsets, "xy": xy, "layer": layers, "feat": feats,
            "label": labels, "labelled": labelled}


def _cat(arrs, dtype=None):
    out = np.concatenate([np.asarray(a) for a in arrs], axis=0)
    return out if dtype is None else out.astype(dtype)


def _scale_settings(graph_cfg, data_cfg) -> dict:
    """{scale: (k_intra, k_cross, circle radius px, cross_radius px)}; the candidate radius
    scales with the node size (``graph.cross_radius`` is given for spots)."""
    settings = {
        "spot": (graph_cfg.k_intra, graph_cfg.k_cross, float(graph_cfg.spot_radius)),
        "region": (graph_cfg.region_k_intra, graph_cfg.region_k_cross,
                   data_cfg.region_size / 2.0),
        "global": (graph_cfg.global_k_intra, graph_cfg.global_k_cross,
                   data_cfg.global_size / 2.0),
    }
    return {k: v + (float(graph_cfg.cross_radius) * v[2] / settings["spot"][2],)
            for k, v in settings.items()}


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
    st = _stack_nodes(prepared, registered)
    offsets, xy, layers, feats = st["offsets"], st["xy"], st["layer"], st["feat"]
    settings = _scale_settings(graph_cfg, data_cfg)

    def sample_index(scale, target, field):
        """Section-level tile indices (``field``) -> sample-level node indices of ``target``."""
        local = _cat([getattr(s, field) for s in secs], np.int64)
        return (offsets[target][layers[scale]] + local).astype(np.int32)

    graphs, stats = {}, {}
    for scale in SCALES:
        n = len(layers[scale])
        k_in, k_cr, rad, cross_radius = settings[scale]
        edges = build_edges(xy[scale], layers[scale], _similarity_feats(feats[scale], graph_cfg),
                            k_intra=int(k_in), k_cross=int(k_cr), radius=rad,
                            cross_layer=bool(graph_cfg.cross_layer),
                            cosine_all_max_nodes=int(graph_cfg.cosine_all_max_nodes),
                            cosine_radius=float(graph_cfg.cosine_radius),
                            cross_mode=str(graph_cfg.cross_mode),
                            cross_radius=cross_radius,
                            sim_weight=float(graph_cfg.sim_weight),
                            expand_min_sim=float(graph_cfg.expand_min_sim), workers=workers,
                            context=f"sample {prepared.sample_id} {scale} graph")
        nodes = {"feat": feats[scale], "label": st["label"][scale],
                 "label_mask": st["labelled"][scale], "known": np.zeros(n, bool),
                 "layer": layers[scale], "xy": xy[scale].astype(np.float32)}
        if scale == "spot":
            nodes["region_idx"] = sample_index("spot", "region", "spot_region")
            nodes["global_idx"] = sample_index("spot", "global", "spot_global")
        else:
            nodes["tokens"] = _cat([getattr(s, f"{scale}_tokens") for s in secs])
        if scale == "region":
            nodes["global_idx"] = sample_index("region", "global", "region_global")
        graphs[scale] = _graphs_tuple(nodes, edges)
        stats[scale] = dict(edges.stats, n_node=n, n_edge=len(edges.senders))
    return SampleGraph(sample_id=prepared.sample_id, section_names=[s.name for s in secs],
                       spot=graphs["spot"], region=graphs["region"], global_=graphs["global"],
                       layer_offsets=offsets, stats=stats)
