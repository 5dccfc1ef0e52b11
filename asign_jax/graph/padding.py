"""Fixed-size padding of sample graphs (one compiled shape for several samples) and stacking.

jraph-style: ``jraph.pad_with_graphs`` appends ONE padding graph holding all padding nodes
and edges at the END, so real node indices (and "region_idx"/"global_idx") stay valid and
``jraph.get_node_padding_mask``/``get_edge_padding_mask`` give the masks.

One change to jraph's layout: jraph points every padding edge at the first padding node,
leaving the other padding nodes with in-degree 0 (a 0/0 in a mean aggregation, NaN that a
``mask * x`` does not remove). Here the padding edges are self-loops spread evenly, in
order, over the padding nodes (weight 1, type EDGE_SELF), and ``budget_for`` leaves room for
at least one per padding node, so EVERY node, padding included, has in-degree >= 1, and the
receivers stay sorted as the builder left them.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jraph
import numpy as np

from asign_jax.graph.contract import EDGE_SELF, SCALES, SampleGraph

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScaleBudget:
    """Padded sizes of one scale: n_node (real + padding nodes), n_edge."""

    n_node: int
    n_edge: int


@dataclasses.dataclass(frozen=True)
class Budget:
    """Padded sizes of the three scales of a sample graph."""

    spot: ScaleBudget
    region: ScaleBudget
    global_: ScaleBudget

    def __getitem__(self, scale: str) -> ScaleBudget:
        return {"spot": self.spot, "region": self.region, "global": self.global_}[scale]


def _round_up(x: int, multiple: int) -> int:
    return int(-(-int(x) // multiple) * multiple)


def _real_size(g: jraph.GraphsTuple) -> tuple[int, int]:
    if np.shape(g.n_node) != (1,):
        raise ValueError(f"expected an unpadded graph (n_node of shape (1,)), got "
                         f"{np.shape(g.n_node)}")
    return int(g.n_node[0]), int(g.n_edge[0])


def budget_for(graphs: list[SampleGraph], multiple: int = 64) -> Budget:
    """The smallest budget, rounded up to ``multiple``, that fits every graph of ``graphs``.

    n_node >= max real nodes + 1 (jraph needs one padding node); n_edge >= max over graphs
    of (real edges + its padding nodes), so each padding node gets a self-loop.
    """
    if not graphs:
        raise ValueError("budget_for needs at least one graph")
    out = {}
    for scale in SCALES:
        sizes = [_real_size(g.graph(scale)) for g in graphs]
        n_node = _round_up(max(n for n, _ in sizes) + 1, multiple)
        n_edge = _round_up(max(e + (n_node - n) for n, e in sizes), multiple)
        out[scale] = ScaleBudget(n_node, n_edge)
    return Budget(spot=out["spot"], region=out["region"], global_=out["global"])


def pad_graph(g: jraph.GraphsTuple, n_node: int, n_edge: int) -> jraph.GraphsTuple:
    """Pads one unpadded graph to exactly (n_node, n_edge) with one padding graph.

    Padding nodes/edges are zeros except: padding edges are self-loops spread over the
    padding nodes (weight 1, type EDGE_SELF). Raises RuntimeError if it does not fit.
    """
    n, e = _real_size(g)
    padded = jraph.pad_with_graphs(g, n_node=n_node, n_edge=n_edge, n_graph=2)
    n_pad_node, n_pad_edge = n_node - n, n_edge - e
    if n_pad_edge < n_pad_node:
        log.debug("budget leaves %d padding nodes without a self-loop", n_pad_node - n_pad_edge)
    # padding edge p -> node n + floor(p * n_pad_node / n_pad_edge): non-decreasing (the
    # receivers stay sorted) and onto the padding nodes when n_pad_edge >= n_pad_node
    loops = (n + np.arange(n_pad_edge, dtype=np.int64) * n_pad_node // max(n_pad_edge, 1)
             ).astype(padded.senders.dtype)
    senders = np.concatenate([padded.senders[:e], loops])
    receivers = np.concatenate([padded.receivers[:e], loops])
    edges = dict(padded.edges)
    if "weight" in edges:
        edges["weight"] = edges["weight"].copy()
        edges["weight"][e:] = 1.0
    if "type" in edges:
        edges["type"] = edges["type"].copy()
        edges["type"][e:] = EDGE_SELF
    return padded._replace(senders=senders, receivers=receivers, edges=edges)


def pad_sample(sample_graph: SampleGraph, budget: Budget) -> SampleGraph:
    """The sample graph with each scale padded to ``budget`` (see ``pad_graph``)."""
    graphs = {s: pad_graph(sample_graph.graph(s), budget[s].n_node, budget[s].n_edge)
              for s in SCALES}
    return sample_graph.replace_graphs(graphs)


def unpad_sample(sample_graph: SampleGraph) -> SampleGraph:
    """Inverse of ``pad_sample`` (``jraph.unpad_with_graphs`` per scale)."""
    return sample_graph.replace_graphs(
        {s: jraph.unpad_with_graphs(sample_graph.graph(s)) for s in SCALES})


def as_pytree(sample_graph: SampleGraph) -> dict[str, jraph.GraphsTuple]:
    """{"spot", "region", "global"} -> GraphsTuple: the array part of a sample graph."""
    return {s: sample_graph.graph(s) for s in SCALES}


def stack_samples(padded: list[SampleGraph]) -> dict[str, jraph.GraphsTuple]:
    """Stacks padded sample graphs (same budget) on a new leading axis (data parallelism).

    Returns {"spot", "region", "global"} -> GraphsTuple whose every leaf is (B, ...);
    n_node/n_edge become (B, 2).
    """
    if not padded:
        raise ValueError("stack_samples needs at least one sample")
    trees = [as_pytree(p) for p in padded]
    shapes = [jax.tree.map(np.shape, t) for t in trees]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("samples differ in shape; pad them all with one budget (budget_for)")
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)
