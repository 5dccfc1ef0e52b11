"""EGN, the exemplar guided network (Yang et al., WACV 2023; docs/baselines.md §1.2),
after the TRIPLEX copy of its code (lucidrains ViT + exemplar bridge blocks + CSRA pooling).

Per spot i (N spots, T image tokens, K exemplars, dim d, G genes):
  image tokens  x = Dense(d)(spot token grid) + pos       (the original: 32 px pixel patches
                of the 224 px patch -> Linear(3072 -> d), 49 tokens; here the T cached tokens)
  query         q = Dense(d)(e_i), e_i the spot's frozen embedding (the pooled feature)
  exemplars     the K nearest bank spots by L2 distance between frozen embeddings
                (``training.model_inputs.nearest_exemplars``: labelled training spots only,
                never the query's own section, never a test layer); keys
                k_j = Dense(d)([e_j, y_j]), values v_j = Dense(d)(y_j) (y_j centred on the mean
                training label); [q, k] go through ``player`` pre-LN residual FF layers.
  ``depth`` pre-LN layers x += Attn(LN(x + pos)); every ``bfre``-th layer then runs an
  exemplar bridge (``ExemplarBridge``) that updates x, q and the exemplar keys; x += FF(LN x).
  out = Head(LN)([CSRA(x), q])                    (App. E of ASIGN: ResNet-50 features, 8 exemplars)
Loss: MSE + 0.5 (1 - mean over genes of the PCC across the batch's spots). The original clamps
the output at 0 (its labels are log1p >= 0); ours are log-proportions (< 0), so no clamp.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from asign_jax.models.blocks import (Attention, FeedForward, Head, encoder_inputs, labelled,
                                     spot_encoder)
from asign_jax.models.losses import masked_mse, pcc_loss


def _ln(name):
    return nn.LayerNorm(epsilon=1e-5, name=name)


def masked_mean(x, mask, axis):
    """Mean of ``x`` over ``axis`` where ``mask`` (broadcastable, bool) is True (0 if none)."""
    m = mask.astype(x.dtype)
    return jnp.sum(x * m, axis, keepdims=True) / jnp.maximum(jnp.sum(m, axis, keepdims=True), 1)


class ExemplarBridge(nn.Module):
    """EB block: exemplars gate the image tokens spatially and update the query.

    x (N, T, d), q (N, 1, d), k (N, K, d) exemplar keys, v (N, K, d) exemplar values,
    ex_mask (N, K, 1) -> (x', q', k'). Update: gates [g_q, g_k] = MLP([q - k, k]); q_new =
    mean_j(sigmoid(g_q) * Dense(v)) + q, k_new = sigmoid(g_k) * Dense(v) + k. A per-head spatial
    gate sigmoid(Dense(T * heads)(LN q_new)) multiplies Dense(heads * head_dim)(LN x); the gated
    value goes back into x (Dense, no bias) and, pooled over tokens, into q.
    """

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x, q, k, v, ex_mask):
        n, t, d = x.shape
        inner = self.heads * self.head_dim
        value = nn.Dense(d, name="update_value")(v)
        gates = nn.Dense(2 * d, name="update_query_2")(
            nn.silu(nn.Dense(4 * self.head_dim, name="update_query_1")(
                jnp.concatenate([q - k, k], -1))))
        g_q, g_k = jnp.split(gates, 2, axis=-1)
        new_q = masked_mean(nn.sigmoid(g_q) * value, ex_mask, 1) + q          # (N, 1, d)
        new_k = nn.sigmoid(g_k) * value + k                                     # (N, K, d)
        key = nn.Dense(self.heads * t, name="to_k")(_ln("to_k_ln")(new_q))
        key = key.reshape(n, self.heads, t)                                     # (N, h, T)
        xv = nn.Dense(inner, name="to_x")(_ln("to_x_ln")(x))
        xv = xv.reshape(n, t, self.heads, self.head_dim)                        # (N, T, h, c)
        gated = xv * nn.sigmoid(key).transpose(0, 2, 1)[..., None]
        gated = gated.reshape(n, t, inner)
        x = nn.Dense(d, use_bias=False, name="to_v")(gated) + x
        q = nn.Dense(d, use_bias=False, name="to_n")(gated.mean(1, keepdims=True)) + q
        return x, q, new_k


class CSRA(nn.Module):
    """Class-specific residual attention pooling: (N, T, d) -> (N, d).

    score = Dense(d)(x); out = mean_T(score) + lam * sum_T(score * softmax_T(temp * score)).
    """

    temperature: float = 0.1
    lam: float = 0.5

    @nn.compact
    def __call__(self, x):
        score = nn.Dense(x.shape[-1], name="head")(x)
        soft = nn.softmax(score * self.temperature, axis=1)
        return score.mean(1) + self.lam * jnp.sum(score * soft, 1)


class EGN(nn.Module):
    """Exemplar guided network on one padded sample; returns {"spot"} (N, G)."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return ("label_mean", "bank", "exemplars") + encoder_inputs(self.cfg, tokens=True)

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        c = self.cfg
        d = int(c.dim)
        if int(c.depth) < int(c.bfre):
            raise ValueError(f"model.egn.depth={c.depth} < bfre={c.bfre}: no exemplar bridge "
                             "block, the exemplars would not reach the prediction")
        drop = lambda x: nn.Dropout(c.dropout)(x, deterministic=not train)
        feat, tokens = spot_encoder(self.cfg)(spot, extra, need_tokens=True, train=train)
        label_mean = extra["label_mean"]
        bank, idx = extra["bank"], extra["exemplars"]                 # idx (N, K) into the bank
        ex_mask = extra["exemplar_mask"][..., None]                    # (N, K, 1)
        e_j = bank["feat"][idx]                                        # (N, K, D)
        y_j = bank["label"][idx] - label_mean                          # (N, K, G)

        x = nn.Dense(d, name="patch_embedding")(tokens)                # (N, T, d)
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (tokens.shape[1], d))
        x = drop(x + pos)

        # projector: query and exemplar keys through `player` residual pre-LN FF layers
        q = nn.Dense(d, name="proq")(feat)[:, None]                    # (N, 1, d)
        k = nn.Dense(d, name="proe")(jnp.concatenate([e_j, y_j], -1))  # (N, K, d)
        h = jnp.concatenate([q, k], 1)
        for i in range(int(c.player)):
            h = h + FeedForward(d, c.dropout, name=f"projector_ff{i}")(
                _ln(f"projector_ln{i}")(h), train=train)
        q, k = h[:, :1], h[:, 1:]
        v = nn.Dense(d, name="to_v")(y_j)                              # (N, K, d)

        for layer in range(int(c.depth)):
            h = _ln(f"attn_ln{layer}")(x + pos)
            x = x + Attention(int(c.heads), int(c.head_dim), c.dropout, name=f"attn{layer}")(
                h, h, train=train)
            if (layer + 1) % int(c.bfre) == 0:
                x, q, k = ExemplarBridge(int(c.bhead), int(c.bdim), name=f"bridge{layer}")(
                    x, q, k, v, ex_mask)
            x = x + FeedForward(int(c.mlp_dim), c.dropout, name=f"ff{layer}")(
                _ln(f"ff_ln{layer}")(x), train=train)
        pooled = jnp.concatenate([CSRA(name="pool")(x), q[:, 0]], -1)   # (N, 2d)
        return {"spot": Head(self.n_genes, layer_norm=True, name="head")(pooled, label_mean)}


def egn_loss(out, spot, region, glob, spot_mask, region_mask, global_mask, cfg):
    """MSE + ``model.egn.loss.pcc`` (0.5) x (1 - mean per-gene PCC) over the labelled spots."""
    del region, glob, spot_mask, region_mask, global_mask
    mask, y = labelled(spot), spot.nodes["label"]
    mse = masked_mse(out["spot"], y, mask)
    pcc = pcc_loss(out["spot"], y, mask)
    loss = mse + cfg.pcc * pcc
    return loss, {"mse": mse, "pcc_spot": pcc, "loss": loss}
