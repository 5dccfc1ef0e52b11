"""HisToGene (Pang et al. 2021; docs/baselines.md §1.3): a ViT over all spots of a section.

One section is one token sequence, one token per spot: Dense(d)(spot input) + x_embed[x] +
y_embed[y] (learned tables over the integer array coordinates, shifted to start at 0 per
section and clipped to ``n_pos - 1``), dropout, ``depth`` pre-LN blocks (``heads`` x
``head_dim``, MLP ``mlp_dim``, GELU, dropout), LayerNorm -> Dense(G). Loss MSE.

The original embeds the flattened raw 112 px crop (Linear(37632 -> 1024)); TRIPLEX's copy
embeds a precomputed 1024-d feature per spot. We embed the spot encoder's feature (cached
ResNet-50 by default), as the latter. All sections of a sample sit in one padded sequence;
attention is masked to the query's own layer, so each section is its own sequence (2D).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from asign_jax.graph.contract import node_mask
from asign_jax.models.blocks import (Head, PreLNBlock, encoder_inputs,
                                     same_layer_mask, spot_encoder)


def position_embedding(array_xy, n_pos: int, dim: int):
    """x_embed[x] + y_embed[y] of integer array positions (N, 2), clipped to [0, n_pos)."""
    pos = jnp.clip(array_xy.astype(jnp.int32), 0, n_pos - 1)
    return (nn.Embed(n_pos, dim, name="x_embed")(pos[:, 0])
            + nn.Embed(n_pos, dim, name="y_embed")(pos[:, 1]))


class HisToGene(nn.Module):
    """Section-level ViT; returns {"spot"} (N, G)."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return ("label_mean", "array_xy") + encoder_inputs(self.cfg, tokens=False)

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        c = self.cfg
        feat, _ = spot_encoder(self.cfg)(spot, extra, need_tokens=False, train=train)
        x = nn.Dense(int(c.dim), name="patch_embedding")(feat)
        x = x + position_embedding(extra["array_xy"], int(c.n_pos), int(c.dim))
        x = nn.Dropout(c.dropout)(x, deterministic=not train)
        mask = same_layer_mask(spot.nodes["layer"], node_mask(spot))
        for i in range(int(c.depth)):
            x = PreLNBlock(int(c.heads), int(c.head_dim), int(c.mlp_dim), c.dropout,
                           name=f"block{i}")(x, mask=mask, train=train)
        return {"spot": Head(self.n_genes, layer_norm=True, name="head")(x, extra["label_mean"])}

