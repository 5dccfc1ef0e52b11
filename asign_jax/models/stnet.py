"""ST-Net (He et al. 2020; docs/baselines.md §1.1): CNN + linear head, MSE.

Original: DenseNet-121 (ImageNet) on the 224 px spot patch, classifier replaced by
Linear(1024 -> G) whose weight starts at 0 and bias at the mean training expression; loss
= squared error over genes. Here the CNN is the spot encoder of ``blocks.SpotEncoder`` (the
cached frozen ResNet-50 feature by default, so the trainable part is the linear head: a
linear probe of the same features ASIGN reads; ``model.backbone.mode="train"`` trains the
ResNet-50 under it end to end). The head is zero-initialised and offset by the mean training
label, exactly ST-Net's start. 2D: every spot is predicted from its own patch only.
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from asign_jax.models.blocks import Head, encoder_inputs, spot_encoder


class STNet(nn.Module):
    """(N_s, D) spot features -> (N_s, G). Returns {"spot"}."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return ("label_mean",) + encoder_inputs(self.cfg, tokens=False)

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        feat, _ = spot_encoder(self.cfg)(spot, extra, need_tokens=False, train=train)
        feat = nn.Dropout(self.cfg.dropout)(feat, deterministic=not train)
        return {"spot": Head(self.n_genes, zero_init=True, name="head")(feat,
                                                                        extra["label_mean"])}

