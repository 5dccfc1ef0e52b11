"""BLEEP (Xie et al., NeurIPS 2023; docs/baselines.md §1.4): a contrastive image-expression
embedding; expression is predicted by retrieval from the fold's training spots.

Training: image embedding I = ProjHead(spot image feature), expression embedding
S = ProjHead(expression), ProjHead(x): p = Dense(E)(x); h = Dropout(Dense(E)(GELU(p)));
LN(h + p). Loss over the sample's labelled spots (the batch): logits = S I^T / tau, soft
targets softmax((I I^T + S S^T) / 2 * tau), loss = mean over spots of the symmetric cross
entropy (rows of logits vs rows of targets, and the transposes).
Prediction: the query's image embedding against the expression embeddings of the bank
(``training.model_inputs``: every labelled spot of the fold's pool, i.e. training sections
and the held-out sample's known layer, never a test layer), both L2-normalised; the bank spots
of the query's OWN section are excluded; the prediction is the mean expression of the
``top_k`` most similar bank spots (ASIGN App. E: BLEEP's "average" strategy, top 50), or,
with ``aggregate="weighted"``, their softmax(cosine / tau)-weighted mean.
The image encoder is the spot encoder (cached ResNet-50 by default; App. E used "the CLIP
model" of BLEEP, whose image side is a ResNet-50). Expression enters centred on the mean
training label.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from asign_jax.config import check_choice
from asign_jax.models.blocks import NEG, encoder_inputs, gelu, labelled, spot_encoder


class ProjectionHead(nn.Module):
    """BLEEP's projection head: (..., D) -> (..., dim)."""

    dim: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, *, train: bool):
        p = nn.Dense(self.dim, name="projection")(x)
        h = nn.Dense(self.dim, name="fc")(gelu(p))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return nn.LayerNorm(epsilon=1e-5, name="ln")(h + p)


def l2_normalize(x, eps=1e-8):
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def retrieve(query_emb, bank_emb, bank_label, allowed, top_k: int, aggregate: str,
             temperature: float):
    """Mean (or cosine-softmax-weighted mean) label of the ``top_k`` most similar bank spots.

    query_emb (N, E), bank_emb (B, E), bank_label (B, G), allowed (N, B) bool -> (N, G).
    A query with fewer than ``top_k`` allowed bank spots averages the allowed ones.
    """
    sim = l2_normalize(query_emb) @ l2_normalize(bank_emb).T                # (N, B) cosine
    sim = jnp.where(allowed, sim, NEG)
    top, idx = jax.lax.top_k(sim, min(top_k, bank_emb.shape[0]))             # (N, k)
    ok = top > NEG / 2
    if check_choice("model.bleep.aggregate", aggregate) == "mean":
        w = ok.astype(sim.dtype)
    else:
        w = jnp.where(ok, jnp.exp((top - top[:, :1]) / temperature), 0.0)
    return jnp.einsum("nk,nkg->ng", w, bank_label[idx]) / jnp.maximum(w.sum(1, keepdims=True),
                                                                     1e-12)


def bank_allowed(bank: dict, self_index, layer):
    """(N, B) bool: valid bank rows that are not in the query's own section (sample, layer)."""
    own = (bank["sample"][None, :] == self_index) & (bank["layer"][None, :] == layer[:, None])
    return bank["valid"][None, :] & ~own


class BLEEP(nn.Module):
    """Returns {"spot" (N, G) retrieval prediction, "image_embedding", "spot_embedding" (N, E)}."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return ("label_mean", "bank") + encoder_inputs(self.cfg, tokens=False)

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        c = self.cfg
        feat, _ = spot_encoder(self.cfg)(spot, extra, need_tokens=False, train=train)
        label_mean, bank = extra["label_mean"], extra["bank"]
        image_proj = ProjectionHead(int(c.projection_dim), c.dropout, name="image_projection")
        spot_proj = ProjectionHead(int(c.projection_dim), c.dropout, name="spot_projection")
        img = image_proj(feat, train=train)
        expr = spot_proj(spot.nodes["label"] - label_mean, train=train)
        keys = spot_proj(bank["label"] - label_mean, train=False)
        allowed = bank_allowed(bank, extra["self"], spot.nodes["layer"])
        pred = retrieve(jax.lax.stop_gradient(img), jax.lax.stop_gradient(keys), bank["label"],
                        allowed, int(c.top_k), str(c.aggregate), float(c.temperature))
        return {"spot": pred, "image_embedding": img, "spot_embedding": expr}


def bleep_loss(out, spot, region, glob, spot_mask, region_mask, global_mask, cfg):
    """BLEEP's symmetric soft-target CLIP loss over the labelled spots of the sample."""
    del region, glob, spot_mask, region_mask, global_mask
    tau = cfg.temperature
    mask = labelled(spot)
    img, expr = out["image_embedding"], out["spot_embedding"]
    pair = mask[:, None] & mask[None, :]
    logits = jnp.where(pair, expr @ img.T / tau, NEG)
    sims = (img @ img.T + expr @ expr.T) / 2.0 * tau
    targets = jnp.where(pair, nn.softmax(jnp.where(pair, sims, NEG), axis=-1), 0.0)
    ce = lambda lg, tg: -jnp.sum(tg * jnp.where(pair, nn.log_softmax(lg, axis=-1), 0.0), -1)
    per_spot = 0.5 * (ce(logits, targets) + ce(logits.T, targets.T))
    loss = jnp.sum(jnp.where(mask, per_spot, 0.0)) / jnp.maximum(mask.sum(), 1)
    return loss, {"clip": loss, "loss": loss}
