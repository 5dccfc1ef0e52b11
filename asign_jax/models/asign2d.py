"""ASIGN 2D (paper Table I "ASIGN 2D (Ours)", Table IV "2D WSI-wise"): ASIGN on a 2D-only graph,
without the CLI.

The same MSAGNet (multi-level cross-attention + GAT/transformer blocks, three heads, the same
loss) with every cross-layer edge of the stored 3D graph masked out (``model.asign.cross_layer_edges
= False``; what is left is each section's intra-layer kNN graph, paper App. F) and no
cross-layer imputation (``model.asign.use_cli = False``): each section is predicted from its own
images and its own 2D graph, like the other 2D methods. Masking the edges rather than
rebuilding the graph lets every row of the paper's tables share one set of graphs.
"""

from __future__ import annotations

import ml_collections

from asign_jax.models.asign import ASIGN


def ASIGN2D(cfg: ml_collections.ConfigDict, n_genes: int) -> ASIGN:  # noqa: N802 (a module)
    """The ASIGN module of ``cfg`` (``config.model``) with cross-layer edges and the CLI off."""
    c = ml_collections.ConfigDict(cfg)
    c.use_cli = False
    c.cross_layer_edges = False
    return ASIGN(cfg=ml_collections.FrozenConfigDict(c), n_genes=n_genes)


def _graph_hops(cfg, exact: bool) -> int:
    """A tile's halo (``models.factory.graph_hops``): ASIGN's without the CLI (off here), so
    exact or not, its GAT layers."""
    del exact
    return ASIGN.graph_hops(cfg, exact=False)


ASIGN2D.graph_hops = _graph_hops
