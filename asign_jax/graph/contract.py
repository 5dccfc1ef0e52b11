"""The 3D sample graph as the model and the label propagation see it.

One sample = three ``jraph.GraphsTuple`` (spot, region, global), each holding ONE graph
(``n_node``/``n_edge`` of shape (1,) before padding). Node order: sections in layer order,
and within a section the order of the prepared arrays, so node ``offset[l] + i`` is item i of
layer l. Arrays are numpy in the builder, jax in the model.

``nodes`` (dict), N nodes, G genes, D feature dim, T tokens:
  "feat"       (N, D) float32   pooled patch feature
  "tokens"     (N, T, D) float  pooled last-feature-map grid (region/global graphs only)
  "label"      (N, G) float32   normalised expression (0 where label_mask is False)
  "label_mask" (N,) bool        True = this label may be used (loss / CLI input)
  "known"      (N,) bool        True = known at evaluation (the known layer of a held-out sample)
  "layer"      (N,) int32       section index within the sample
  "xy"         (N, 2) float32   registered centre in the reference frame (full-res px)
  "region_idx" (N,) int32       spot graph: index of the spot's region node (in this sample)
  "global_idx" (N,) int32       spot and region graphs: index of the global node

``edges`` (dict), E edges:
  "weight" (E,) float32  > 0. intra: 1/distance, normalised so each receiver's max is 1;
                          cross: IoU + cosine (paper eq. 1), clipped below at WEIGHT_FLOOR;
                          self-loop (only for otherwise isolated nodes): 1.
  "type"   (E,) int32    EDGE_INTRA, EDGE_CROSS or EDGE_SELF.

Edges are directed sender -> receiver (messages flow to the receiver); the builder makes the
edge set symmetric (if j->i exists, i->j exists). Every real node has in-degree >= 1.

Padding (``asign_jax.graph.padding.pad_sample``): jraph-style — padded nodes and edges are
appended at the END (so all *_idx stay valid), padded edges connect padded nodes, and
masks come from ``jraph.get_node_padding_mask`` / ``get_edge_padding_mask``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import jraph
import numpy as np

SCALES = ("spot", "region", "global")
"""The three graphs of a sample, finest first."""

EDGE_INTRA = 0
EDGE_CROSS = 1
EDGE_SELF = 2
WEIGHT_FLOOR = 1e-3


@dataclasses.dataclass
class SampleGraph:
    """One sample's 3D graphs, one ``jraph.GraphsTuple`` of numpy arrays per scale.

    Attributes:
      sample_id: the sample.
      section_names: (L,) section names in layer order.
      spot, region, global_: the graphs (node/edge keys as in ``contract.py``); one graph
        each (n_node of shape (1,)) as built, two after ``padding.pad_sample``.
      layer_offsets: {"spot"|"region"|"global": (L+1,) int64}; the nodes of layer l are
        ``offsets[l]:offsets[l+1]`` (padding, appended at the end, does not move them).
      stats: {scale: {"n_intra", "n_cross", "n_self", "frac_overlap", "frac_iou_edge", ...}}.
    """

    sample_id: str
    section_names: list[str]
    spot: jraph.GraphsTuple
    region: jraph.GraphsTuple
    global_: jraph.GraphsTuple
    layer_offsets: dict[str, np.ndarray]
    stats: dict = dataclasses.field(default_factory=dict)

    def graph(self, scale: str) -> jraph.GraphsTuple:
        """The graph of ``scale`` in ("spot", "region", "global")."""
        return {"spot": self.spot, "region": self.region, "global": self.global_}[scale]

    def replace_graphs(self, graphs: dict[str, jraph.GraphsTuple], **changes) -> "SampleGraph":
        """A copy with the graphs of ``graphs`` (keys as in SCALES) swapped in."""
        kw = {"spot": graphs.get("spot", self.spot), "region": graphs.get("region", self.region),
              "global_": graphs.get("global", self.global_)}
        kw.update(changes)
        return dataclasses.replace(self, **kw)


def node_mask(graph: jraph.GraphsTuple):
    """(n_node,) bool, True for real nodes of a graph padded by ``pad_graph`` (jit-safe).

    Call it per sample (inside vmap/shard_map for stacked batches): it reads n_node[-1].
    Works on graphs of numpy arrays under jit too (n_node is made a jax array first).
    """
    return jraph.get_node_padding_mask(graph._replace(n_node=jnp.asarray(graph.n_node)))


def edge_mask(graph: jraph.GraphsTuple):
    """(n_edge,) bool, True for real edges of a graph padded by ``pad_graph`` (jit-safe)."""
    return jraph.get_edge_padding_mask(graph._replace(n_node=jnp.asarray(graph.n_node),
                                                      n_edge=jnp.asarray(graph.n_edge)))
