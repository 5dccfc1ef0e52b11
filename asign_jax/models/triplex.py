"""TRIPLEX (Chung et al., CVPR 2024; docs/baselines.md §1.6, CVPR-era code): three
encoders at three scales, fused by cross-attention, trained with a distillation loss.

N spots, T target tokens, W = window^2 (25) neighbour tiles, emb e, G genes:
  target (TEM)    the spot patch's token grid -> Dense(e)  (N, T, e); head fc_target on the
                  token mean. (Original: a fine-tuned ResNet18's 7 x 7 x 512 map; here the
                  spot encoder's tokens: cached by default, ``model.backbone.mode="train"`` trains.)
  neighbour (NEM) frozen features of the 5 x 5 grid of spot-size tiles centred on the spot
                  (``training.model_inputs``: the section's spot nearest each tile centre,
                  masked where none lies within half a tile; TRIPLEX cuts these tiles from the
                  image, we take the spot at that place) -> ``depth_neighbor`` pre-LN layers
                  with LeViT attention biases per head indexed by (|d row|, |d col|) and the
                  masked keys' logits replaced -> LN; head fc_neighbor on the mean of all W.
  global (GEM)    frozen features of EVERY spot of the section: 1 pre-LN layer (attention
                  masked to the own layer) -> PEG (depthwise 3 x 3 conv over the array grid,
                  bias, + residual, read at the spots) -> ``depth_global - 1`` layers -> LN;
                  head fc_global.
  fusion          ONE cross-encoder (shared weights) applied twice with the global token as
                  query: over the target tokens and over the neighbour tokens (masked);
                  LN(fus1 + fus2) -> fc.
Loss (alpha = ``model.triplex.loss.alpha`` = 0.3): MSE(y_f, y) + sum_{m in t, n, g}[(1 - alpha)
MSE(y_m, y) + alpha MSE(y_f, y_m)], no stop-gradient. The frozen inputs are 2048-d ResNet-50
features (TRIPLEX: 512-d ResNet18), so NEM and GEM get a Dense(e) input projection. 2D: the
window, the PEG grid and the global attention all stay in the spot's section.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from asign_jax.graph.contract import node_mask
from asign_jax.models.blocks import (Head, PreLNBlock, encoder_inputs, labelled,
                                     same_layer_mask, spot_encoder)
from asign_jax.models.losses import masked_mse


def levit_offsets(window: int) -> np.ndarray:
    """(W, W) int: index of (|d row|, |d col|) between the cells of a window x window grid."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict = {}
    idx = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
           for a in points for b in points]
    return np.asarray(idx, np.int32).reshape(len(points), len(points))


def _encoder(x, depth, heads, mlp_ratio, dropout, name, *, train, mask=None, bias=None,
             kv=None):
    e = x.shape[-1]
    for i in range(int(depth)):
        x = PreLNBlock(int(heads), e // int(heads), int(e * mlp_ratio), dropout,
                       name=f"{name}{i}")(x, kv=kv, mask=mask, bias=bias, train=train)
    return x


def _proj(x, e, name):
    return x if x.shape[-1] == e else nn.Dense(e, name=name)(x)


class PEG(nn.Module):
    """Positional encoding generator on the array grid: x_i + b + sum_o w_o * x_{nbr(i, o)}.

    x (N, e); nbr (N, 9) indices of the spots at the 3 x 3 array offsets (the spot itself at
    the centre), nbr_mask (N, 9) (False where no spot of the section is there: a zero cell).
    """

    @nn.compact
    def __call__(self, x, nbr, nbr_mask):
        k = self.param("kernel", nn.initializers.lecun_normal(), (nbr.shape[1], x.shape[-1]))
        b = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        conv = jnp.einsum("nok,ok->nk", jnp.where(nbr_mask[..., None], x[nbr], 0.0), k)
        return x + conv + b


class Triplex(nn.Module):
    """Returns {"spot" (fusion), "spot_target", "spot_neighbor", "spot_global"}, each (N, G)."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return ("label_mean", "window", "peg") + encoder_inputs(self.cfg, tokens=True)

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        c = self.cfg
        e = int(c.emb_dim)
        feat, tokens = spot_encoder(self.cfg)(spot, extra, need_tokens=True, train=train)
        label_mean = extra["label_mean"]
        head = lambda name, x: Head(self.n_genes, name=name)(x, label_mean)

        target = nn.Dense(e, name="target_proj")(tokens)                       # (N, T, e)

        win, win_mask = extra["window"], extra["window_mask"]                   # (N, W)
        offsets = levit_offsets(int(c.window))
        biases = self.param("neighbor_attention_biases", nn.initializers.zeros,
                            (int(c.heads_neighbor), int(offsets.max()) + 1))
        nbr = _proj(feat, e, "neighbor_proj")[win]                               # (N, W, e)
        nbr = _encoder(nbr, c.depth_neighbor, c.heads_neighbor, c.mlp_ratio_neighbor,
                       c.dropout_neighbor, "neighbor", train=train,
                       mask=win_mask[:, None, :], bias=biases[:, offsets])
        nbr = nn.LayerNorm(epsilon=1e-5, name="neighbor_norm")(nbr)

        real = node_mask(spot)
        mask = same_layer_mask(spot.nodes["layer"], real)
        g = _proj(feat, e, "global_proj")
        g = _encoder(g, 1, c.heads_global, c.mlp_ratio_global, c.dropout_global, "global_first",
                     train=train, mask=mask)
        g = PEG(name="peg")(g, extra["peg"], extra["peg_mask"])
        g = _encoder(g, int(c.depth_global) - 1, c.heads_global, c.mlp_ratio_global,
                     c.dropout_global, "global", train=train, mask=mask)
        g = nn.LayerNorm(epsilon=1e-5, name="global_norm")(g)                   # (N, e)

        fusion = _CrossEncoder(int(c.depth_fusion), int(c.heads_fusion),
                               float(c.mlp_ratio_fusion), float(c.dropout_fusion), name="fusion")
        fus1 = fusion(g[:, None], target, None, train=train)
        fus2 = fusion(g[:, None], nbr, win_mask[:, None, :], train=train)
        fused = nn.LayerNorm(epsilon=1e-5, name="fusion_norm")(fus1 + fus2)[:, 0]
        return {"spot": head("fc", fused), "spot_target": head("fc_target", target.mean(1)),
                "spot_neighbor": head("fc_neighbor", nbr.mean(1)),
                "spot_global": head("fc_global", g)}


class _CrossEncoder(nn.Module):
    """``depth`` pre-LN cross-attention layers of the query over kv (one LN for both)."""

    depth: int
    heads: int
    mlp_ratio: float
    dropout: float

    @nn.compact
    def __call__(self, q, kv, mask, *, train: bool):
        return _encoder(q, self.depth, self.heads, self.mlp_ratio, self.dropout, "layer",
                        train=train, mask=mask, kv=kv)


BRANCHES = ("spot_target", "spot_neighbor", "spot_global")


def triplex_loss(out, spot, region, glob, spot_mask, region_mask, global_mask, cfg):
    """TRIPLEX's fusion + distillation loss over the labelled spots."""
    del region, glob, spot_mask, region_mask, global_mask
    a = cfg.alpha
    mask, y, fused = labelled(spot), spot.nodes["label"], out["spot"]
    t = {"mse": masked_mse(fused, y, mask)}
    loss = t["mse"]
    for b in BRANCHES:
        t[f"mse_{b}"] = masked_mse(out[b], y, mask)
        t[f"distill_{b}"] = masked_mse(fused, out[b], mask)
        loss = loss + (1 - a) * t[f"mse_{b}"] + a * t[f"distill_{b}"]
    t["loss"] = loss
    return loss, t
