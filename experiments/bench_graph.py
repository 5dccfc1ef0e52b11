"""Benchmark: the spatial part of a 3D spot graph at 1,000,000 spots over 10 layers.

100,000 spots per layer on a jittered square grid (pitch 220 px, the HER2ST spot pitch at full
resolution; per-spot jitter sd 20 px, per-layer shift and rotation as left by registration),
64-d random features. Runs the SAME ``asign_jax.graph.build.build_edges`` that
``build_sample_graph`` calls per scale, with the default graph config: KD-tree overlap pairs
(IoU), same-layer kNN (k=8), cross-layer top-12 of IoU + cosine over candidates within
1000 px (radius mode, since N > cosine_all_max_nodes), computed in blocks, then
symmetrisation/merge. Prints each part, the total and the peak RSS.

    python experiments/bench_graph.py [--n_per_layer 100000] [--layers 10] [--workers 2]

Writes ``<out>/results.json`` (default ``--out runs/experiments/bench_graph``).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

import numpy as np

from asign_jax import atomic, entry
from asign_jax.config import base_config
from asign_jax.graph.build import build_edges
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, EDGE_SELF


def make_points(n_per_layer: int, n_layers: int, pitch: float, seed: int):
    """(N, 2) float64 jittered-grid centres, (N,) int32 layers, (N, 64) float32 features."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_per_layer)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)[:n_per_layer] * pitch
    centre = grid.mean(0)
    xys = []
    for _ in range(n_layers):
        a = np.deg2rad(rng.normal(0, 1.0))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        p = (grid - centre) @ rot.T + centre + rng.normal(0, 40, 2)
        xys.append(p + rng.normal(0, 20, p.shape))
    xy = np.concatenate(xys)
    layer = np.repeat(np.arange(n_layers, dtype=np.int32), n_per_layer)
    feats = rng.normal(size=(len(xy), 64)).astype(np.float32)
    return xy, layer, feats


def main(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    g = base_config().graph

    t0 = time.perf_counter()
    xy, layer, feats = make_points(args.n_per_layer, args.layers, args.pitch, args.seed)
    t_data = time.perf_counter() - t0
    print(f"data: {len(xy):,} spots, {args.layers} layers, 64-d features "
          f"({t_data:.1f} s, not counted)")

    timings: dict = {}
    load = os.getloadavg()[0]
    c0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    edges = build_edges(xy, layer, feats, k_intra=g.k_intra, k_cross=g.k_cross,
                        radius=g.spot_radius, cross_layer=True,
                        cosine_all_max_nodes=g.cosine_all_max_nodes,
                        cosine_radius=g.cosine_radius, workers=args.workers, timings=timings)
    total = time.perf_counter() - t0
    cpu = sum(os.times()[:2]) - c0

    for part, label in (("overlaps", "IoU overlap pairs (KD-tree query_pairs, r=2*112)"),
                        ("intra_knn", f"same-layer kNN (k={g.k_intra}, KD-tree per layer)"),
                        ("cross_topk", f"cross-layer top-{g.k_cross} IoU+cosine "
                                       f"(radius {g.cosine_radius:g} px, blocks)"),
                        ("assemble", "symmetrise + weights + merge + sort")):
        print(f"  {label:<62s} {timings[part]:7.2f} s")
    rest = total - sum(timings.values())
    print(f"  {'other (overlap stats)':<62s} {rest:7.2f} s")
    print(f"TOTAL {total:.2f} s wall (target < 60 s); {cpu:.1f} s CPU (user+sys) on "
          f"{os.cpu_count()} cores; load average at start {load:.1f}")
    n_e = len(edges.senders)
    deg = np.bincount(edges.receivers, minlength=len(xy))
    print(f"edges: {n_e:,} directed (intra {np.sum(edges.type == EDGE_INTRA):,}, "
          f"cross {np.sum(edges.type == EDGE_CROSS):,}, self {np.sum(edges.type == EDGE_SELF):,});"
          f" in-degree min {deg.min()} mean {deg.mean():.1f} max {deg.max()}")
    print(f"frac with overlapping spot in another layer {edges.stats['frac_overlap']:.3f}; "
          f"with a cross edge to one {edges.stats['frac_iou_edge']:.3f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak_gb:.2f} GB")
    out = atomic.write_json(Path(args.out) / "results.json", {
        "args": {k: v for k, v in vars(args).items() if k != "verbose"},
        "timings_s": timings, "total_s": total, "cpu_s": cpu, "edges": n_e,
        "peak_rss_gb": peak_gb})
    print(f"written: {out}")


if __name__ == "__main__":
    entry.run_script(main, "bench_graph", config="none",
                     n_per_layer=(100_000, "Spots per layer."), layers=(10, "Layers."),
                     pitch=(220.0, "Grid pitch (px)."), workers=(2, "KD-tree workers."),
                     seed=(0, "Random seed."))
