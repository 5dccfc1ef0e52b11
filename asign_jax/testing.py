"""Random sample graphs with the graph contract's shapes, and a tiny model config: shared by
the tests and ``experiments/bench_step.py`` / ``experiments/graph_choice.py`` checks (nothing in
the pipeline imports this module)."""

from __future__ import annotations

import jraph
import numpy as np

from asign_jax.graph.build import build_edges
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, SampleGraph


def random_sample_graph(seed: int, *, n_layers: int, spots_per_layer: int, n_region: int,
                        n_global: int, n_genes: int, feat_dim: int, n_tokens: int,
                        k=8, k_cross=None, sample_id: str = "rand", token_dtype=np.float16):
    """A random SampleGraph of the contract's shapes (tests and benchmarks).

    Spots sit on a jittered grid per layer; every node receives ``k`` random edges from its own
    layer and ``k_cross`` (default k // 2) from other layers, plus the symmetric counterparts;
    ``k`` / ``k_cross`` are ints or {"spot"|"region"|"global": int}. Region / global nodes are
    split evenly over the layers and spots point to random tiles of their layer.
    """
    rng = np.random.default_rng(seed)

    def layers_of(n):
        return np.sort(np.arange(n) % n_layers).astype(np.int32)

    def per_scale(v, scale, default):
        v = default if v is None else v
        return int(v[scale]) if isinstance(v, dict) else int(v)

    def edges(layer, scale):
        k_in = per_scale(k, scale, 8)
        k_cr = per_scale(k_cross, scale, k_in // 2)
        n = len(layer)
        s, r, t = [], [], []
        for i in range(n):
            same = np.flatnonzero(layer == layer[i])
            other = np.flatnonzero(layer != layer[i])
            same = same[same != i]
            for pool, kk, typ in ((same, k_in, EDGE_INTRA), (other, k_cr, EDGE_CROSS)):
                if len(pool) == 0 or kk == 0:
                    continue
                js = rng.choice(pool, size=min(kk, len(pool)), replace=False)
                s += list(js) + [i] * len(js)
                r += [i] * len(js) + list(js)
                t += [typ] * (2 * len(js))
        pairs = np.unique(np.stack([r, s, t], 1), axis=0)     # sorted by (receiver, sender)
        return (pairs[:, 1].astype(np.int32), pairs[:, 0].astype(np.int32),
                rng.uniform(0.05, 1.0, len(pairs)).astype(np.float32), pairs[:, 2].astype(np.int32))

    def graph(layer, extra, scale):
        n = len(layer)
        s, r, w, t = edges(layer, scale)
        nodes = {"feat": rng.normal(size=(n, feat_dim)).astype(np.float32),
                 "label": rng.normal(-5.0, 1.0, size=(n, n_genes)).astype(np.float32),
                 "label_mask": np.ones(n, bool), "known": np.zeros(n, bool),
                 "layer": layer, "xy": rng.uniform(0, 2000, size=(n, 2)).astype(np.float32),
                 **extra}
        return jraph.GraphsTuple(nodes=nodes, edges={"weight": w, "type": t}, senders=s,
                                 receivers=r, globals=None, n_node=np.array([n], np.int32),
                                 n_edge=np.array([len(s)], np.int32))

    def idx_into(layer_from, layer_to):
        out = np.empty(len(layer_from), np.int32)
        for l in range(n_layers):
            cand = np.flatnonzero(layer_to == l)
            sel = layer_from == l
            out[sel] = rng.choice(cand, size=sel.sum())
        return out

    l_s = np.repeat(np.arange(n_layers, dtype=np.int32), spots_per_layer)
    l_r, l_g = layers_of(n_region), layers_of(n_global)
    tok = lambda n: rng.normal(size=(n, n_tokens, feat_dim)).astype(token_dtype)
    glob = graph(l_g, {"tokens": tok(n_global)}, "global")
    region = graph(l_r, {"tokens": tok(n_region), "global_idx": idx_into(l_r, l_g)}, "region")
    spot = graph(l_s, {"region_idx": idx_into(l_s, l_r), "global_idx": idx_into(l_s, l_g)}, "spot")
    # a spot's global tile is its region's global tile
    spot.nodes["global_idx"] = region.nodes["global_idx"][spot.nodes["region_idx"]]
    side = int(np.ceil(np.sqrt(spots_per_layer)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:spots_per_layer]
    spot.nodes["xy"] = (np.tile(grid, (n_layers, 1)) * 200.0
                        + rng.normal(0, 30, size=(len(l_s), 2))).astype(np.float32)
    offs = lambda lay: np.concatenate([[0], np.cumsum(np.bincount(lay, minlength=n_layers))])
    return SampleGraph(sample_id=sample_id, section_names=[f"{sample_id}{l}" for l in range(n_layers)],
                       spot=spot, region=region, global_=glob,
                       layer_offsets={"spot": offs(l_s), "region": offs(l_r), "global": offs(l_g)})


def spatial_sample_graph(seed: int, *, n_layers: int = 3, side: int = 8, n_genes: int = 6,
                         feat_dim: int = 8, n_tokens: int = 2, k: int = 4,
                         sample_id: str = "S"):
    """A SampleGraph whose edges are SPATIAL (the real builder on grids), for tiling tests.

    Each layer: side x side spots at pitch 100 px (slightly jittered); region tiles 200 px
    (2 x 2 spots), global tiles 400 px; same-layer kNN (k) and cross-layer top-2 within 150 px.
    """
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 100.0 + 50
    spot_xy = np.concatenate([g + rng.normal(0, 5, g.shape) for _ in range(n_layers)])
    l_s = np.repeat(np.arange(n_layers, dtype=np.int32), len(g))

    def tiles(size):
        cells = np.floor(spot_xy / size).astype(np.int64)
        keys = l_s.astype(np.int64) * 10**6 + cells[:, 1] * 1000 + cells[:, 0]
        uniq, inv = np.unique(keys, return_inverse=True)
        layer = (uniq // 10**6).astype(np.int32)
        xy = np.stack([uniq % 1000, (uniq // 1000) % 1000], 1) * size + size / 2.0
        return layer, xy, inv.astype(np.int32)
    l_r, r_xy, spot_region = tiles(200.0)
    l_g, g_xy, spot_global = tiles(400.0)
    region_global = np.zeros(len(l_r), np.int32)
    region_global[spot_region] = spot_global

    def graph(layer, xy, extra):
        n = len(layer)
        feat = rng.normal(size=(n, feat_dim)).astype(np.float32)
        e = build_edges(xy, layer, feat, k_intra=k, k_cross=2, radius=50.0,
                        cosine_all_max_nodes=0, cosine_radius=150.0)
        nodes = {"feat": feat, "label": rng.normal(-5.0, 1.0, (n, n_genes)).astype(np.float32),
                 "label_mask": np.ones(n, bool), "known": np.zeros(n, bool), "layer": layer,
                 "xy": xy.astype(np.float32), **extra}
        return jraph.GraphsTuple(nodes=nodes, edges={"weight": e.weight, "type": e.type},
                                 senders=e.senders, receivers=e.receivers, globals=None,
                                 n_node=np.array([n], np.int32),
                                 n_edge=np.array([len(e.senders)], np.int32))
    tok = lambda n: rng.normal(size=(n, n_tokens, feat_dim)).astype(np.float16)
    spot = graph(l_s, spot_xy, {"region_idx": spot_region, "global_idx": spot_global})
    region = graph(l_r, r_xy, {"tokens": tok(len(l_r)), "global_idx": region_global})
    glob = graph(l_g, g_xy, {"tokens": tok(len(l_g))})
    offs = lambda lay: np.concatenate([[0], np.cumsum(np.bincount(lay, minlength=n_layers))])
    return SampleGraph(sample_id=sample_id, section_names=[f"{sample_id}{l}" for l in range(n_layers)],
                       spot=spot, region=region, global_=glob,
                       layer_offsets={"spot": offs(l_s), "region": offs(l_r), "global": offs(l_g)})


def tiny_sample_graph(seed: int, sample_id: str, n_genes: int, n_layers: int = 3,
                      spots_per_layer: int = 8):
    """The small 3D sample the training tests share (6 region / 3 global tiles, 8-d features)."""
    return random_sample_graph(seed, n_layers=n_layers, spots_per_layer=spots_per_layer,
                               n_region=6, n_global=3, n_genes=n_genes, feat_dim=8, n_tokens=2,
                               k=4, sample_id=sample_id)


def tiny_model(c):
    """``c`` with the 16-wide, one-layer ASIGN the unit tests train (fast on a CPU)."""
    c.model.asign.hidden, c.model.asign.heads, c.model.asign.gat_layers = 16, 2, 1
    c.model.asign.cli_iterations, c.model.asign.transformer_mlp_ratio = 2, 1
    return c
