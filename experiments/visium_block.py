"""A synthetic Visium-like 3D block as a ``SampleGraph``, for the benchmarks (not a test).

L sections of n spots on a 10x Visium hexagonal lattice (``data.synthetic_frames.hex_lattice``,
pitch 100 um = ``PITCH_PX`` full-resolution px), each section slightly rotated and shifted as
registration leaves it. Region (512 px) and global (1024 px) tiles come from the project's own
tiling (``preprocess.tiles``). Image features are drawn directly (the ``embeddings`` encoder
path: no image is encoded): K tissue types from smooth random fields, a feature vector per type
plus noise, tiles = the mean of their spots' features plus noise, T noisy tokens per tile.
Labels = a per-type expression programme + a smooth spatial term + noise, so the features do
predict them. The graph is built by the real builder (``graph.build.build_sample_graph``) with
the base config, so its edge counts and timings are the pipeline's.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np

from asign_jax.config import base_config
from asign_jax.data.synthetic_frames import hex_lattice
from asign_jax.graph.build import build_sample_graph
from asign_jax.preprocess.tiles import assign_tiles, region_global

PITCH_PX = 175.0           # Visium: 100 um centre to centre at ~0.57 um / px
N_TYPES = 6


def _fields(rng, n_fields, length, n_feat=48):
    w = rng.normal(size=(n_fields, n_feat, 2)) / length
    ph = rng.uniform(0, 2 * np.pi, (n_fields, n_feat))

    def at(xy):
        arg = xy[:, 0][None, None] * w[..., 0, None] + xy[:, 1][None, None] * w[..., 1, None]
        return math.sqrt(2.0 / n_feat) * np.cos(arg + ph[..., None]).sum(1)     # (n, N)
    return at


def make_block(n_spots: int, n_sections: int = 4, n_genes: int = 250, feat_dim: int = 256,
               n_tokens: int = 4, seed: int = 0, graph_cfg=None, data_cfg=None,
               sample_id: str = "V", timings: dict | None = None):
    """The block's SampleGraph (unpadded, all labels present).

    Args:
      n_spots: spots per section; n_sections: L; n_genes: G; feat_dim: D; n_tokens: T.
      graph_cfg / data_cfg: ``config.graph`` / ``config.data`` (default: ``base_config()``).
      timings: if given, gets "data" (drawing the block) and "graph" (building it) seconds.
    """
    cfg = base_config()
    graph_cfg = cfg.graph if graph_cfg is None else graph_cfg
    data_cfg = cfg.data if data_cfg is None else data_cfg
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    base_xy, array_xy = hex_lattice(n_spots, PITCH_PX)
    extent = base_xy.max(0) + PITCH_PX
    types_at = _fields(rng, N_TYPES, 0.15 * extent.mean())
    spatial_at = _fields(rng, 2, 0.3 * extent.mean())
    type_feat = rng.normal(size=(N_TYPES, feat_dim)).astype(np.float32)
    program = rng.normal(0, 0.6, (N_TYPES, n_genes))
    gene_base = rng.normal(-5.0, 1.0, n_genes)
    gene_spatial = rng.normal(0, 0.3, (2, n_genes))
    sections, spot_xy, region_xy, global_xy = [], [], [], []
    for layer in range(n_sections):
        a = math.radians(rng.normal(0, 1.5))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        centre = extent / 2
        # pixel coordinates of this section (what the tiles see), then its registered frame
        pix = base_xy + PITCH_PX + rng.normal(0, 3.0, base_xy.shape)
        reg = (pix - centre) @ rot.T + centre + rng.normal(0, 20.0, 2)
        canon = reg + np.array([0.0, 0.0])
        kind = np.argmax(types_at(canon), 0)
        feats = (type_feat[kind] + rng.normal(0, 1.0, (n_spots, feat_dim))).astype(np.float32)
        labels = (gene_base + program[kind] + spatial_at(canon).T @ gene_spatial
                  + rng.normal(0, 0.4, (n_spots, n_genes))).astype(np.float32)
        tiles = {}
        for level, size in (("region", data_cfg.region_size), ("global", data_cfg.global_size)):
            origin, idx = assign_tiles(pix, size)
            count = np.bincount(idx, minlength=len(origin))[:, None]
            mean = lambda v: np.add.reduceat(v[np.argsort(idx, kind="stable")],
                                             np.r_[0, np.cumsum(count[:-1, 0])]) / count
            f = (mean(feats) + rng.normal(0, 0.3, (len(origin), feat_dim))).astype(np.float32)
            tok = (f[:, None] + rng.normal(0, 0.5, (len(origin), n_tokens, feat_dim)))
            lab = mean(labels.astype(np.float64)).astype(np.float32)
            centre_px = origin + size / 2.0
            tiles[level] = SimpleNamespace(origin=origin, idx=idx, feats=f,
                                           tokens=tok.astype(np.float16), labels=lab,
                                           xy=(centre_px - centre) @ rot.T + centre)
        r, g = tiles["region"], tiles["global"]
        sections.append(SimpleNamespace(
            name=f"{sample_id}{layer + 1}", n_spots=n_spots, labelled=True, spot_feats=feats,
            spot_labels=labels, spot_region=r.idx, spot_global=g.idx,
            region_origin=r.origin, region_feats=r.feats, region_tokens=r.tokens,
            region_labels=r.labels, global_origin=g.origin, global_feats=g.feats,
            global_tokens=g.tokens, global_labels=g.labels,
            region_global=region_global(r.origin, data_cfg.region_size, g.origin,
                                        data_cfg.global_size)))
        spot_xy.append(reg)
        region_xy.append(r.xy)
        global_xy.append(g.xy)
    prepared = SimpleNamespace(sample_id=sample_id, sections=sections,
                               genes=[f"G{g:03d}" for g in range(n_genes)])
    registered = SimpleNamespace(section_names=[s.name for s in sections], spot_xy=spot_xy,
                                 region_xy=region_xy, global_xy=global_xy)
    timings["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = build_sample_graph(prepared, registered, graph_cfg, data_cfg)
    timings["graph"] = time.perf_counter() - t0
    return graph
