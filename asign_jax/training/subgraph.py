"""Spatial tiles of a 3D sample with a k-hop halo: mini-batch training and tiled imputation.

A sample too large for one full-graph step is cut into tiles: a rectangle of the registered
(x, y) plane through ALL layers. A node of scale s is CORE in the tile whose rectangle holds
its xy, so each node is core in exactly one tile. A tile's nodes per scale are its core nodes,
every node within ``halo`` hops of them (in-edges of that scale's graph, cross-layer edges
included) and the region / global nodes its spots and regions point to (their features are a
spot's context). Edges are those of the induced subgraph; node order and edge order are kept,
so receivers stay sorted. A tile never mixes samples: it is cut from one sample's graph.

Exactness: a node's model output depends only on nodes within ``gat_layers`` hops of its own
graph plus, for spots, the propagation's ``cli_iterations`` hops and the projected features of
the region / global tiles it points to. So with ``halo >= gat_layers + cli_iterations`` the
core outputs of a tile equal the full-graph outputs; ASIGN's imputation instead runs the
network in tiles with a ``gat_layers`` halo and the propagation once on the whole graph (it is
linear in edges), which gives the same outputs with much smaller tiles (``impute_tiled``;
both tested).

Training tiles (``role`` masks already applied by ``roles.mask_sample``): halo nodes are
INPUTS only, their labels are hidden (label_mask False, label 0), so the loss and the CLI's
known set see core nodes only, each labelled node once per epoch. Inside a tile the
propagation runs on the tile (core + halo); with the default halo = ``gat_layers`` the network
half is exact on core nodes, the CLI half is a propagation on the subgraph. The label-free
consistency term (L_c) covers every real node of the tile. Test-layer labels were removed
before tiling, so no tile can hold one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Optional

import jax.numpy as jnp
import jraph
import numpy as np
from tqdm.auto import tqdm

from asign_jax.graph.contract import EDGE_CROSS, SCALES, SampleGraph
from asign_jax.graph.padding import budget_for, pad_sample
from asign_jax.models import cli, factory

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Tile:
    """One tile of a sample: its subgraph and where its nodes come from.

    Attributes:
      sample_id: the sample it was cut from.
      index: tile index (row-major over the grid).
      graph: SampleGraph of the tile (unpadded, one graph per scale).
      nodes: {scale: (n,) int64 indices of the tile's nodes in the sample}, ascending.
      core: {scale: (n,) bool} core nodes (their outputs are the tile's results).
    """

    sample_id: str
    index: int
    graph: SampleGraph
    nodes: dict
    core: dict


def in_csr(senders: np.ndarray, receivers: np.ndarray, n_node: int) -> tuple:
    """(indptr (n+1,), edge ids grouped by receiver (E,)): each node's in-edges, in edge order."""
    order = np.argsort(np.asarray(receivers), kind="stable")
    indptr = np.searchsorted(np.asarray(receivers)[order], np.arange(n_node + 1))
    return indptr, order


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated positions indptr[r]:indptr[r+1] of every row r in ``rows``."""
    lo, hi = indptr[rows], indptr[rows + 1]
    lens = hi - lo
    return np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)


def khop(senders: np.ndarray, receivers: np.ndarray, n_node: int, seeds: np.ndarray,
         hops: int, csr: Optional[tuple] = None) -> np.ndarray:
    """(n_node,) bool: ``seeds`` and every node with a path of <= ``hops`` edges INTO them.

    Frontier expansion over the in-edge CSR (``in_csr``): cost ~ the edges of the result.
    """
    indptr, order = in_csr(senders, receivers, n_node) if csr is None else csr
    senders = np.asarray(senders)
    mask = np.zeros(n_node, bool)
    mask[seeds] = True
    frontier = np.flatnonzero(mask)
    for _ in range(int(hops)):
        cand = senders[order[_ranges(indptr, frontier)]]
        frontier = np.unique(cand[~mask[cand]])
        if not len(frontier):
            break
        mask[frontier] = True
    return mask


def _induced(g: jraph.GraphsTuple, keep: np.ndarray, remap: dict,
             csr: Optional[tuple] = None) -> jraph.GraphsTuple:
    """The subgraph of an unpadded graph on the sorted node indices ``keep``.

    ``remap``: {node field: (old index -> new index) array} for index fields (region_idx...).
    Edges keep their order within each receiver (receiver-sorted input stays sorted).
    """
    n = int(np.asarray(g.n_node)[0])
    new_id = np.full(n, -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    indptr, order = in_csr(s, r, n) if csr is None else csr
    e_cand = order[_ranges(indptr, keep)]                  # in-edges of kept receivers
    e_keep = e_cand[new_id[s[e_cand]] >= 0]
    nodes = {}
    for k, v in g.nodes.items():
        v = np.asarray(v)[keep]
        if k in remap:
            v = remap[k][v].astype(np.int32)
            if (v < 0).any():
                raise ValueError(f"tile: node field {k!r} points outside the tile")
        nodes[k] = v
    edges = {k: np.asarray(v)[e_keep] for k, v in g.edges.items()}
    return jraph.GraphsTuple(nodes=nodes, edges=edges, globals=None,
                             senders=new_id[s[e_keep]].astype(np.int32),
                             receivers=new_id[r[e_keep]].astype(np.int32),
                             n_node=np.array([len(keep)], np.int32),
                             n_edge=np.array([len(e_keep)], np.int32))


def _offsets(layer: np.ndarray, n_layers: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(layer, minlength=n_layers))]).astype(np.int64)


def cut_tile(sample: SampleGraph, core: dict, halo: int, *, hide_halo_labels: bool,
             index: int = 0, csrs: Optional[dict] = None) -> Tile:
    """The tile with core nodes ``core`` ({scale: (N_scale,) bool}) and a ``halo``-hop halo.

    ``hide_halo_labels``: True for training (halo labels hidden, see module doc); False for
    imputation (halo nodes keep their labels and known flags: the known layer's labels there
    feed the propagation).
    """
    g = {s: sample.graph(s) for s in SCALES}
    n = {s: int(np.asarray(g[s].n_node)[0]) for s in SCALES}
    csrs = sample_csrs(sample) if csrs is None else csrs
    keep = {}
    for s in SCALES:
        keep[s] = khop(np.asarray(g[s].senders), np.asarray(g[s].receivers), n[s],
                       np.flatnonzero(core[s]), halo, csrs[s])
    keep["region"][np.asarray(g["spot"].nodes["region_idx"])[keep["spot"]]] = True
    keep["global"][np.asarray(g["spot"].nodes["global_idx"])[keep["spot"]]] = True
    keep["global"][np.asarray(g["region"].nodes["global_idx"])[keep["region"]]] = True
    idx = {s: np.flatnonzero(keep[s]) for s in SCALES}
    new_id = {}
    for s in ("region", "global"):
        new_id[s] = np.full(n[s], -1, np.int64)
        new_id[s][idx[s]] = np.arange(len(idx[s]))
    graphs = {
        "spot": _induced(g["spot"], idx["spot"], {"region_idx": new_id["region"],
                                                  "global_idx": new_id["global"]}, csrs["spot"]),
        "region": _induced(g["region"], idx["region"], {"global_idx": new_id["global"]},
                           csrs["region"]),
        "global": _induced(g["global"], idx["global"], {}, csrs["global"]),
    }
    core_sub = {s: np.asarray(core[s])[idx[s]] for s in SCALES}
    if hide_halo_labels:
        for s in SCALES:
            nodes = dict(graphs[s].nodes)
            c = core_sub[s]
            nodes["label"] = np.where(c[:, None], nodes["label"], np.zeros_like(nodes["label"]))
            nodes["label_mask"] = np.asarray(nodes["label_mask"]) & c
            nodes["known"] = np.asarray(nodes["known"]) & c
            graphs[s] = graphs[s]._replace(nodes=nodes)
    n_layers = len(sample.section_names)
    offsets = {s: _offsets(np.asarray(graphs[s].nodes["layer"]), n_layers) for s in SCALES}
    tile_graph = dataclasses.replace(sample, spot=graphs["spot"], region=graphs["region"],
                                     global_=graphs["global"], layer_offsets=offsets,
                                     stats={}, sample_id=f"{sample.sample_id}#{index}")
    return Tile(sample.sample_id, index, tile_graph, idx, core_sub)


def sample_csrs(sample: SampleGraph) -> dict:
    """{scale: ``in_csr``} of a sample's three graphs (computed once per sample)."""
    return {s: in_csr(sample.graph(s).senders, sample.graph(s).receivers,
                      int(np.asarray(sample.graph(s).n_node)[0])) for s in SCALES}


def grid_cores(sample: SampleGraph, n_tiles_side: int) -> list[dict]:
    """Core masks of an n x n grid of rectangles over the spots' xy extent (empty tiles dropped).

    Region / global nodes are assigned by their own xy (clipped into the grid).
    """
    xy = np.asarray(sample.spot.nodes["xy"], np.float64)
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-6)
    k = int(n_tiles_side)

    def cell(scale):
        p = np.asarray(sample.graph(scale).nodes["xy"], np.float64)
        ij = np.clip(np.floor((p - lo) / span * k), 0, k - 1).astype(np.int64)
        return ij[:, 1] * k + ij[:, 0]
    cells = {s: cell(s) for s in SCALES}
    out = []
    for c in range(k * k):
        core = {s: cells[s] == c for s in SCALES}
        if core["spot"].any():
            out.append(core)
    return out


def plan_tiles(sample: SampleGraph, max_nodes: int, halo: int) -> list[dict]:
    """Core masks of the coarsest n x n grid whose tiles (core + halo) have <= ``max_nodes``
    spots; [all nodes] when the sample fits whole. Sizes come from the halo masks only.

    Raises ValueError when no grid fits (halo too large for ``max_nodes``).
    """
    n = sizes(sample)
    if n["spot"] <= max_nodes:
        return [{s: np.ones(n[s], bool) for s in SCALES}]
    g = sample.spot
    csr = in_csr(g.senders, g.receivers, n["spot"])
    k = max(2, int(math.ceil(math.sqrt(n["spot"] / max_nodes))))
    while k * k <= 4 * n["spot"]:
        cores = grid_cores(sample, k)
        biggest = max(int(khop(g.senders, g.receivers, n["spot"], np.flatnonzero(c["spot"]),
                               halo, csr).sum()) for c in cores)
        if biggest <= max_nodes:
            logger.info("sample %s: %d spots in %d tiles (%dx%d grid, halo %d hops), at most "
                        "%d spots per tile", sample.sample_id, n["spot"], len(cores), k, k,
                        halo, biggest)
            return cores
        k = int(math.ceil(k * math.sqrt(biggest / max_nodes * 1.1)))
    raise ValueError(f"sample {sample.sample_id}: no tiling keeps <= {max_nodes} spots per "
                     f"tile with a {halo}-hop halo; raise train.max_graph_nodes")


def tile_sample(sample: SampleGraph, max_nodes: int, halo: int, *,
                hide_halo_labels: bool) -> list[Tile]:
    """The tiles of ``plan_tiles`` (a sample that fits whole is one tile: its full graph)."""
    cores = plan_tiles(sample, max_nodes, halo)
    if len(cores) == 1:
        halo = 0
    csrs = sample_csrs(sample)
    return [cut_tile(sample, c, halo, hide_halo_labels=hide_halo_labels, index=i, csrs=csrs)
            for i, c in enumerate(cores)]


def impute_tiled(eval_fn: Callable, sample: SampleGraph, max_nodes: int, halo: int,
                 budget_multiple: int = 64, *, cli_iterations: Optional[int] = None,
                 cli_cross_layer: bool = True, cli_start: str = "model") -> dict:
    """Imputes ``sample`` tile by tile and gathers the core outputs.

    Args:
      eval_fn: padded sample dict -> model output dict (``step.make_eval_fn``).
      sample: the (masked) SampleGraph; halo nodes keep their labels and known flags.
      max_nodes, halo: as in ``plan_tiles``.
      cli_iterations: None: every output comes from the tiles, exact for a halo of at least
        gat_layers + cli_iterations hops (module doc). An int (ASIGN with its CLI): the tiles
        need the network's halo only (gat_layers hops); their p_s ("spot_model") and the CLI's
        per-node trust ("node_alpha") are gathered, then the propagation (eq. 5, ``n_iter`` =
        cli_iterations, a CSR product linear in edges) and the eq.-6 blend (the tiles' "alpha")
        run once on the whole spot graph. Same result, far smaller halos: a 13-hop halo
        (3 GAT layers + 10 CLI iterations) made each tile mostly halo.
      cli_cross_layer: ``model.asign.cross_layer_edges`` (False: the CLI ignores cross-layer edges).
      cli_start: ``model.asign.cli_start`` (``models.cli.start_value``).

    Tiles are cut twice (sizes for one shared padding budget = one compilation, then one at a
    time for the model), so only one tile is in memory beside the sample. Returns the model's
    output dict for the whole sample: per-spot arrays (N_s, ...), per-region (N_r, G),
    per-global (N_q, G), and the per-gene "alpha" (the same on every tile).
    """
    cores = plan_tiles(sample, max_nodes, halo)
    halo = 0 if len(cores) == 1 else halo
    csrs = sample_csrs(sample)
    cut = lambda i: cut_tile(sample, cores[i], halo, hide_halo_labels=False, index=i, csrs=csrs)
    shapes = [SampleGraph(t.graph.sample_id, t.graph.section_names,
                          *(t.graph.graph(s)._replace(nodes={}, edges={}) for s in SCALES),
                          layer_offsets={}) for t in map(cut, range(len(cores)))]
    budget = budget_for(shapes, budget_multiple)
    n_nodes = sizes(sample)
    scale_of = {"spot": "spot", "spot_model": "spot", "imputed": "spot", "reached": "spot",
                "node_alpha": "spot", "region": "region", "global": "global"}
    out: dict = {}
    for i in _progress(range(len(cores)), len(cores)):
        t = cut(i)
        res = eval_fn({s: pad_sample(t.graph, budget).graph(s) for s in SCALES})
        for key, val in res.items():
            val = np.asarray(val)
            scale = scale_of.get(key)
            if scale is None:
                out.setdefault(key, val)
                continue
            if key not in out:
                out[key] = np.zeros((n_nodes[scale],) + val.shape[1:], val.dtype)
            core = t.core[scale]
            out[key][t.nodes[scale][core]] = val[:len(core)][core]
    if cli_iterations is not None and len(cores) > 1:
        out.update(_propagate_whole(sample, out, int(cli_iterations), cli_cross_layer,
                                    cli_start))
    return out


def _progress(it, n: int):
    return tqdm(it, total=n, desc="imputing tiles", leave=False, disable=n < 4)


def _propagate_whole(sample: SampleGraph, out: dict, n_iter: int, cross_layer: bool,
                     start: str = "model") -> dict:
    """The CLI on the whole unpadded spot graph from gathered per-node outputs (the ASIGN
    module's own CLI call: known & label_mask, the same edge mask, eq. 5 then eq. 6)."""
    g = sample.spot
    nodes = g.nodes
    known = np.asarray(nodes["known"], bool) & np.asarray(nodes["label_mask"], bool)
    emask = np.ones(len(g.senders), bool)
    if not cross_layer:
        emask &= np.asarray(g.edges["type"]) != EDGE_CROSS
    pred = out["spot_model"]
    dtype = pred.dtype
    labels = jnp.asarray(nodes["label"], dtype)
    imputed, reached = cli.propagate_jit(
        cli.start_value(jnp.asarray(pred), labels, jnp.asarray(known), start), labels,
        jnp.asarray(known),
        jnp.asarray(g.senders), jnp.asarray(g.receivers), jnp.asarray(g.edges["weight"], dtype),
        jnp.asarray(out["node_alpha"], dtype), jnp.asarray(emask),
        jnp.ones(len(known), bool), n_iter=n_iter)
    alpha = np.asarray(out["alpha"], dtype)
    imputed = np.asarray(imputed)
    return {"imputed": imputed, "reached": np.asarray(reached),
            "spot": cli.mix(pred, imputed, alpha).astype(dtype)}


def sizes(sample: SampleGraph) -> dict:
    """{scale: real node count} of an unpadded sample graph."""
    return {s: int(np.asarray(sample.graph(s).n_node)[0]) for s in SCALES}


def tiles_of(sample: SampleGraph, max_nodes: Optional[int], halo: int,
             hide_halo_labels: bool) -> list[Tile]:
    """``tile_sample`` when ``max_nodes`` is set, else the whole sample as one tile."""
    if not max_nodes:
        max_nodes = sizes(sample)["spot"]
    return tile_sample(sample, int(max_nodes), halo, hide_halo_labels=hide_halo_labels)


def pool_options(config) -> dict:
    """``batches.build_pool`` keywords from the config: ``train.max_graph_nodes`` (0 = never
    tile) and the training halo ``train.subgraph_halo`` (< 0 = the model's network hops,
    ``models.factory.graph_hops``: ASIGN's gat_layers, 0 for a per-spot baseline)."""
    halo = int(config.train.subgraph_halo)
    return {"max_nodes": int(config.train.max_graph_nodes),
            "halo": factory.graph_hops(config, exact=False) if halo < 0 else halo}


def tiled_eval(eval_fn: Callable, config) -> Callable:
    """``masked SampleGraph -> output dict`` imputing a sample in tiles of at most
    ``train.max_graph_nodes`` spots (``impute_tiled``), the same result as the full graph. ASIGN
    with its CLI: network tiles with a gat_layers-hop halo, then the propagation on the whole
    graph; other models: exact tiles (halo ``models.factory.graph_hops(exact=True)``).
    For ``scoring.evaluate_fold`` with ``pad_fn`` = identity.
    """
    max_nodes = int(config.train.max_graph_nodes) or 1 << 62
    if config.model.name == "asign" and config.model.asign.use_cli:
        halo = factory.graph_hops(config, exact=False)
        return lambda sample: impute_tiled(
            eval_fn, sample, max_nodes, halo, cli_iterations=int(config.model.asign.cli_iterations),
            cli_cross_layer=bool(config.model.asign.cross_layer_edges),
            cli_start=str(config.model.asign.cli_start))
    halo = factory.graph_hops(config, exact=True)
    return lambda sample: impute_tiled(eval_fn, sample, max_nodes, halo)
