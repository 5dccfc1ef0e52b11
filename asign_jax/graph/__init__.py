"""The 3D sample graph: builder, padding/stacking and storage. Layout in ``contract.py``."""

from asign_jax.graph.build import (SCALES, SampleGraph, ScaleEdges, build_edges,
                                   build_sample_graph)
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, EDGE_SELF, WEIGHT_FLOOR
from asign_jax.graph.io import build_all, load_sample_graph, save_sample_graph
from asign_jax.graph.iou import circle_iou, overlap_matrix, overlap_pairs
from asign_jax.graph.padding import (Budget, ScaleBudget, budget_for, edge_mask, node_mask,
                                     pad_sample, stack_samples, unpad_sample)

__all__ = [
    "SCALES", "SampleGraph", "ScaleEdges", "build_edges", "build_sample_graph",
    "EDGE_CROSS", "EDGE_INTRA", "EDGE_SELF", "WEIGHT_FLOOR",
    "build_all", "load_sample_graph", "save_sample_graph",
    "circle_iou", "overlap_matrix", "overlap_pairs",
    "Budget", "ScaleBudget", "budget_for", "edge_mask", "node_mask", "pad_sample",
    "stack_samples", "unpad_sample",
]
