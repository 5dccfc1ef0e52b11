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

EDGE_INTRA = 0
EDGE_CROSS = 1
EDGE_SELF = 2
WEIGHT_FLOOR = 1e-3
