"""Layers shared by the paper's baselines (``stnet``, ``egn``, ``histogene``, ``bleep``,
``his2st``, ``triplex``; docs/baselines.md §1 describes each original).

Calling convention. A baseline is called like every model, ``model(spot, region, glob, known,
extra, *, train)``, on ONE padded sample that holds all of its layers. ``extra`` is the dict of
per-model inputs that ``training.model_inputs`` builds from the fold's masked pool (the model
lists what it needs in ``inputs()``): spot token grids, array positions, neighbour tables,
the retrieval bank, the mean training label. ``known`` is ignored: no baseline propagates labels.

2D methods work one section at a time: attention is masked to the query's own layer
(``same_layer_mask``) and every neighbour / graph table links spots of one section only, so no
information crosses layers inside the network.

Output offset. Every regression head adds ``extra["label_mean"]`` (G,), the mean label of the
fold's labelled training spots: the same start as ST-Net's "bias = mean training expression"
(and the ASIGN heads' ``train.init_output_bias``) for every head of every method, so no
head spends its first hundred steps walking a zero bias to the label level (about -5.5).

Encoders (``config.model.backbone.mode``): "cached" (default) reads the frozen cached features
(``features.encoder``) of the spot patch (pooled (N, D) and its token grid (N, T, D)), the inputs ASIGN
reads too; "train" runs the project's Flax ResNet-50 (``features/resnet.py``) on the spot
patches inside the model and trains it end to end with the rest (eval-mode batch statistics,
see ``SpotEncoder``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from asign_jax.config import check_choice
from asign_jax.features.augment import imagenet_normalize
from asign_jax.features.extract import adaptive_avg_pool
from asign_jax.features.resnet import ResNet50, fixed_seed_variables
from asign_jax.features.torch_import import load_torchvision_state_dict
from asign_jax.graph.contract import node_mask
from asign_jax.models.losses import masked_mse

NEG = -1e9
"""Logit of a masked key (finite: a fully masked row gives a uniform, finite softmax)."""


def gelu(x):
    """Exact (erf) GELU, torch's default."""
    return nn.gelu(x, approximate=False)


def same_layer_mask(layer: jnp.ndarray, real: jnp.ndarray) -> jnp.ndarray:
    """(N, N) bool: key j is visible to query i iff both are in the same layer and j is real."""
    return (layer[:, None] == layer[None, :]) & real[None, :]


def labelled(spot: jraph.GraphsTuple) -> jnp.ndarray:
    """(N,) bool: the spots whose label a baseline's loss may use (label_mask of real nodes)."""
    return spot.nodes["label_mask"] & node_mask(spot)


class FeedForward(nn.Module):
    """Dense(hidden) -> GELU -> Dropout -> Dense(dim) -> Dropout (lucidrains / TRIPLEX FF)."""

    hidden: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool):
        dim = x.shape[-1]
        drop = nn.Dropout(self.dropout)
        x = drop(gelu(nn.Dense(self.hidden, name="fc1")(x)), deterministic=not train)
        return drop(nn.Dense(dim, name="fc2")(x), deterministic=not train)


class Attention(nn.Module):
    """Multi-head attention, ``heads`` x ``head_dim``, Q/K/V without bias, output with bias.

    ``x_q`` (..., Lq, D), ``x_kv`` (..., Lk, D); ``mask`` broadcastable to (..., Lq, Lk) bool
    (False = key hidden: its logit is REPLACED by ``NEG``, as TRIPLEX's masked_fill);
    ``bias`` broadcastable to (..., heads, Lq, Lk) added to the logits (LeViT biases).
    Returns (..., Lq, D).
    """

    heads: int
    head_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x_q, x_kv, mask=None, bias=None, *, train: bool):
        dim = x_q.shape[-1]
        proj = lambda name: nn.DenseGeneral((self.heads, self.head_dim), use_bias=False,
                                            name=name)
        q, k, v = proj("query")(x_q), proj("key")(x_kv), proj("value")(x_kv)
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(self.head_dim)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = jnp.where(jnp.expand_dims(mask, -3), logits, NEG)
        w = nn.softmax(logits, axis=-1)
        out = jnp.einsum("...hqk,...khd->...qhd", w, v)
        out = nn.DenseGeneral(dim, axis=(-2, -1), name="out")(out)
        return nn.Dropout(self.dropout)(out, deterministic=not train)


class PreLNBlock(nn.Module):
    """Pre-LN transformer layer: x += Attn(LN(x + pos)); x += FF(LN(x)).

    ``kv`` given: cross-attention of x over LN(kv) with the SAME LayerNorm (TRIPLEX PreNorm).
    ``pos`` (EGN): added to the attention input only, as the original re-adds it every layer.
    """

    heads: int
    head_dim: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, kv=None, mask=None, bias=None, pos=None, *, train: bool):
        ln = nn.LayerNorm(epsilon=1e-5, name="ln_attn")
        h = ln(x if pos is None else x + pos)
        h_kv = h if kv is None else ln(kv)
        x = x + Attention(self.heads, self.head_dim, self.dropout, name="attn")(
            h, h_kv, mask, bias, train=train)
        h = nn.LayerNorm(epsilon=1e-5, name="ln_mlp")(x)
        return x + FeedForward(self.mlp_dim, self.dropout, name="mlp")(h, train=train)


class Head(nn.Module):
    """[LayerNorm] + Dense(G) + the mean training label: (..., D) -> (..., G)."""

    n_genes: int
    layer_norm: bool = False
    zero_init: bool = False

    @nn.compact
    def __call__(self, x, label_mean):
        if self.layer_norm:
            x = nn.LayerNorm(epsilon=1e-5, name="ln")(x)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.n_genes, kernel_init=init, name="out")(x) + label_mean


def feature_stats(feat: jnp.ndarray, real: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(mean, std + 1e-3), each (D,), of ``feat`` (N, D) over the real rows: the per-sample
    statistics ``training.standardize`` uses for the cached features (and their tokens)."""
    n = jnp.maximum(real.sum(), 1)
    mean = jnp.sum(jnp.where(real[:, None], feat, 0.0), 0) / n
    var = jnp.sum(jnp.where(real[:, None], (feat - mean) ** 2, 0.0), 0) / n
    return mean, jnp.sqrt(var) + 1e-3


def backbone_variables(weights: str, init_seed: int) -> dict:
    """ResNet-50 variables the "train" backbone starts from: the torchvision file the cache was
    computed with, or the same fixed-seed initialisation (``features.weights`` / ``init_seed``)."""
    if weights:
        return load_torchvision_state_dict(weights)
    return fixed_seed_variables(int(init_seed))


class SpotEncoder(nn.Module):
    """The spot image encoder of a baseline: (feat (N, D), tokens (N, T, D)).

    backbone "cached": ``spot.nodes["feat"]`` (the frozen cached feature of the spot patch,
    ``features.encoder``, z-scored per sample) and ``extra["spot_tokens"]`` (its pooled last-map grid, same
    statistics); nothing is trained here.
    backbone "train": ``extra["patches"]`` (N, S, S, 3) uint8 go through ResNet-50 whose
    parameters are trainable model parameters (starting from ``backbone_variables``); batch
    statistics stay at their stored values (``extra["backbone_stats"]``, eval-mode BN: one
    sample's spots are one highly correlated batch), the features are z-scored per sample like
    the cached ones and the tokens pooled to the same grid. Needs a GPU to be affordable.
    """

    backbone: str
    token_grid: int = 1
    weights: str = ""
    init_seed: int = 0

    @nn.compact
    def __call__(self, spot: jraph.GraphsTuple, extra: dict, *, need_tokens: bool, train: bool):
        if self.backbone == "cached":
            return spot.nodes["feat"], (extra["spot_tokens"].astype(jnp.float32)
                                        if need_tokens else None)
        check_choice("model.backbone.mode", self.backbone)
        params = self.param("resnet50", lambda _: jax.tree.map(
            jnp.asarray, backbone_variables(self.weights, self.init_seed)["params"]))
        variables = {"params": params, "batch_stats": extra["backbone_stats"]}
        pooled, fmap = ResNet50().apply(variables, imagenet_normalize(extra["patches"]),
                                        train=False)
        mean, std = feature_stats(pooled, node_mask(spot))
        tokens = None
        if need_tokens:
            tokens = (adaptive_avg_pool(fmap, min(self.token_grid, fmap.shape[1])) - mean) / std
        return (pooled - mean) / std, tokens


def encoder_inputs(cfg, tokens: bool) -> tuple:
    """The ``extra`` inputs the ``SpotEncoder`` of ``config.model`` reads (see ``inputs()``)."""
    if cfg.backbone.mode == "train":
        return ("patches",)
    return ("spot_tokens",) if tokens else ()


def spot_encoder(cfg) -> SpotEncoder:
    """The ``SpotEncoder`` of ``config.model`` (backbone, backbone_weights, ...)."""
    return SpotEncoder(str(cfg.backbone.mode), int(cfg.backbone.token_grid),
                       str(cfg.backbone.weights), int(cfg.backbone.init_seed),
                       name="spot_encoder")


def spot_mse_loss(out, spot, region, glob, spot_mask, region_mask, global_mask, cfg):
    """MSE of "spot" over every labelled spot (ST-Net, HisToGene). A baseline has no CLI, so
    the step's known set (``spot_mask`` leaves it out) means nothing to it: all labels count."""
    del region, glob, spot_mask, region_mask, global_mask, cfg
    mse = masked_mse(out["spot"], spot.nodes["label"], labelled(spot))
    return mse, {"mse": mse, "loss": mse}
