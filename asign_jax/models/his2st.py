"""His2ST / Hist2ST (Zeng et al. 2022; docs/baselines.md §1.5): conv-mixer patch encoder ->
transformer over the section's spots -> graph layers over the spot grid -> jumping knowledge.

Per spot (token grid g x g of the spot patch, N spots, dim d, G genes):
  1. Conv-mixer patch encoder on the g x g grid: 1x1 conv to ``mixer_channels`` (the stem; the
     original's Conv(3 -> 32, k=s=7) on pixels), ``mixer_depth`` ConvMixer blocks (residual
     [DWConv k -> norm -> GELU -> DWConv k -> norm -> GELU], then 1x1 conv -> GELU -> norm),
     1x1 conv to ``mixer_out`` channels, flatten (g*g*mixer_out; a Dense to d if that is not
     d). Dropout before the encoder.
  2. + x_embed[x] + y_embed[y] (array positions), ``depth`` pre-LN attention blocks over the
     spots of the SAME section (MLP ``mlp_dim``, dropout).
  3. ``gnn_layers`` GraphSAGE-"gcn" layers over the spot grid (each spot's ``grid_k`` nearest
     spots of its section by array distance, kept if <= ``grid_max_dist``, no self loop):
     h <- L2norm(ReLU(W mean_{j in N(i)} h_j)), W without bias.
  4. Jumping knowledge: the layer outputs as a sequence -> 2-layer LSTM(d) -> mean over it.
  5. Heads: LN + Dense(G) (the prediction); ZINB heads mu = clip(exp(.), 1e-5, 1e6),
     theta = clip(softplus(.), 1e-4, 1e4), pi = sigmoid(.).
Loss = MSE + 0.25 ZINB(raw counts; mu scaled by the size factor n_counts / median of the
section) + 0.5 bake. bake: ``bake_passes`` extra passes on augmented inputs, weighted by a
softmax over a coefficient MLP (d -> d -> 1); MSE(weighted prediction, prediction).
Departures (README "Deviations"): the patch encoder runs on the cached token grid, not raw
pixels; BatchNorm -> LayerNorm (the train state carries parameters only); the bake
augmentation is a random dihedral transform (rot90 x flip) of the token grid (grayscale and
continuous rotations need pixels); an isolated spot's mean over no neighbour is 0, not NaN.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from asign_jax.graph.contract import node_mask
from asign_jax.models.blocks import (Head, PreLNBlock, encoder_inputs, gelu, labelled,
                                     same_layer_mask, spot_encoder)
from asign_jax.models.histogene import position_embedding
from asign_jax.models.losses import masked_mse

ZINB_EPS = 1e-10


def _norm(name):
    return nn.LayerNorm(epsilon=1e-5, name=name)


class DepthwiseConv(nn.Module):
    """k x k depthwise convolution with SAME zero padding and bias: (N, H, W, C) -> same.

    Written as a sum of k^2 shifted products: on the tiny token grids here this is much faster
    on a CPU than XLA's grouped convolution (the same operation).
    """

    kernel_size: int

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c))
        b = self.param("bias", nn.initializers.zeros, (c,))
        h, wd = x.shape[1:3]
        r = k // 2
        xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
        out = sum(xp[:, i:i + h, j:j + wd] * w[i, j, 0] for i in range(k) for j in range(k))
        return out + b


class ConvMixerEncoder(nn.Module):
    """(N, g*g, C) token grid -> (N, dim) through a small ConvMixer (1 x 1 convolutions as
    Dense layers over the channel axis, the same map)."""

    channels: int
    depth: int
    kernel: int
    out_channels: int
    dim: int

    @nn.compact
    def __call__(self, tokens):
        n, t, _ = tokens.shape
        g = int(round(t ** 0.5))
        if g * g != t:
            raise ValueError(f"his2st: {t} spot tokens are not a square grid")
        x = tokens.reshape(n, g, g, -1)
        x = _norm("stem_norm")(gelu(nn.Dense(self.channels, name="stem")(x)))
        for i in range(self.depth):
            r = gelu(_norm(f"block{i}_norm1")(DepthwiseConv(self.kernel, name=f"block{i}_dw1")(x)))
            r = gelu(_norm(f"block{i}_norm2")(DepthwiseConv(self.kernel, name=f"block{i}_dw2")(r)))
            x = x + r
            x = _norm(f"block{i}_norm3")(gelu(nn.Dense(self.channels, name=f"block{i}_pw")(x)))
        x = nn.Dense(self.out_channels, name="reduce")(x).reshape(n, -1)
        return x if x.shape[-1] == self.dim else nn.Dense(self.dim, name="to_dim")(x)


class SAGEGCN(nn.Module):
    """GraphSAGE 'gcn' layer: L2norm(ReLU(W mean_{j in N(i)} h_j)); W (d, d) without bias."""

    dim: int

    @nn.compact
    def __call__(self, h, nbr, nbr_mask):
        m = nbr_mask[..., None].astype(h.dtype)
        mean = jnp.sum(h[nbr] * m, 1) / jnp.maximum(m.sum(1), 1.0)
        out = nn.relu(nn.Dense(self.dim, use_bias=False,
                               kernel_init=nn.initializers.xavier_uniform(), name="W")(mean))
        return out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def dihedral(tokens, k):
    """The token grid (N, g*g, C) rotated by k*90 degrees (k in 0..3), flipped for k >= 4."""
    n, t, c = tokens.shape
    g = int(round(t ** 0.5))
    grid = tokens.reshape(n, g, g, c)
    grid = jax.lax.switch(k % 4, [lambda x, r=r: jnp.rot90(x, r, axes=(1, 2)) for r in range(4)],
                          grid)
    grid = jnp.where(k >= 4, jnp.flip(grid, 2), grid)
    return grid.reshape(n, t, c)


class His2STTrunk(nn.Module):
    """Steps 1-4 of the module docstring: tokens (N, T, C) -> (N, d)."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, tokens, array_xy, mask, nbr, nbr_mask, *, train: bool):
        c = self.cfg
        d = int(c.dim)
        tokens = nn.Dropout(c.dropout)(tokens, deterministic=not train)
        x = ConvMixerEncoder(int(c.mixer_channels), int(c.mixer_depth), int(c.mixer_kernel),
                             int(c.mixer_out), d, name="patch_encoder")(tokens)
        x = x + position_embedding(array_xy, int(c.n_pos), d)
        for i in range(int(c.depth)):
            x = PreLNBlock(int(c.heads), int(c.head_dim), int(c.mlp_dim), c.dropout,
                           name=f"block{i}")(x, mask=mask, train=train)
        layers = []
        for i in range(int(c.gnn_layers)):
            x = SAGEGCN(d, name=f"gcn{i}")(x, nbr, nbr_mask)
            layers.append(x)
        seq = jnp.stack(layers, 1)                                    # (N, L, d)
        for i in range(2):
            seq = nn.RNN(nn.LSTMCell(d), name=f"jk_lstm{i}")(seq)
        return seq.mean(1)


class His2ST(nn.Module):
    """Returns {"spot" (N, G), "zinb": (mu, theta, pi), "bake_spot" (N, G) (training only),
    "counts" / "size_factor" (the masked raw counts passed through for the loss)}."""

    cfg: ml_collections.ConfigDict
    n_genes: int

    def inputs(self) -> tuple:
        return (("label_mean", "array_xy", "grid_adj", "counts")
                + encoder_inputs(self.cfg, tokens=True))

    @nn.compact
    def __call__(self, spot, region, glob, known, extra, *, train: bool) -> dict:
        del region, glob, known
        c = self.cfg
        _, tokens = spot_encoder(self.cfg)(spot, extra, need_tokens=True, train=train)
        label_mean = extra["label_mean"]
        mask = same_layer_mask(spot.nodes["layer"], node_mask(spot))
        trunk = His2STTrunk(c, name="trunk")
        args = (extra["array_xy"], mask, extra["grid_adj"], extra["grid_adj_mask"])
        h = trunk(tokens, *args, train=train)
        head = Head(self.n_genes, layer_norm=True, name="head")
        pred = head(h, label_mean)
        out = {"spot": pred, "counts": extra["counts"], "size_factor": extra["size_factor"]}
        # every parameter exists whatever ``train`` is (init runs with train=False)
        mu = jnp.clip(jnp.exp(nn.Dense(self.n_genes, name="zinb_mean")(h)), 1e-5, 1e6)
        theta = jnp.clip(nn.softplus(nn.Dense(self.n_genes, name="zinb_disp")(h)), 1e-4, 1e4)
        pi = nn.sigmoid(nn.Dense(self.n_genes, name="zinb_pi")(h))
        out["zinb"] = (mu, theta, pi)
        coef = nn.Sequential([nn.Dense(int(c.dim)), nn.relu, nn.Dense(1)], name="bake_coef")
        passes = int(c.bake_passes)
        if not (train and passes):
            coef(h[None])
            return out
        ks = jax.random.randint(self.make_rng("dropout"), (passes,), 0, 8)
        hs = jnp.stack([trunk(dihedral(tokens, ks[p]), *args, train=train)
                        for p in range(passes)], 0)                    # (P, N, d)
        w = nn.softmax(coef(hs)[..., 0], axis=0)                       # (P, N)
        out["bake_spot"] = jnp.einsum("pn,png->ng", w, head(hs, label_mean))
        return out


def zinb_nll(x, mu, theta, pi, size_factor, mask):
    """Mean zero-inflated negative binomial NLL over the masked rows x genes (Hist2ST's ZINB)."""
    mu = mu * size_factor[:, None]
    t1 = (jax.scipy.special.gammaln(theta + ZINB_EPS) + jax.scipy.special.gammaln(x + 1.0)
          - jax.scipy.special.gammaln(x + theta + ZINB_EPS))
    t2 = ((theta + x) * jnp.log1p(mu / (theta + ZINB_EPS))
          + x * (jnp.log(theta + ZINB_EPS) - jnp.log(mu + ZINB_EPS)))
    nb_case = t1 + t2 - jnp.log(1.0 - pi + ZINB_EPS)
    zero_nb = jnp.power(theta / (theta + mu + ZINB_EPS), theta)
    zero_case = -jnp.log(pi + (1.0 - pi) * zero_nb + ZINB_EPS)
    nll = jnp.where(x < 1e-8, zero_case, nb_case)
    m = mask[:, None]
    return jnp.sum(jnp.where(m, nll, 0.0)) / jnp.maximum(mask.sum() * x.shape[-1], 1)


def his2st_loss(out, spot, region, glob, spot_mask, region_mask, global_mask, cfg):
    """MSE + ``model.his2st.loss.zinb`` ZINB + ``model.his2st.loss.bake`` bake over the labelled spots."""
    del region, glob, spot_mask, region_mask, global_mask
    mask = labelled(spot)
    t = {"mse": masked_mse(out["spot"], spot.nodes["label"], mask)}
    t["zinb"] = zinb_nll(out["counts"], *out["zinb"], out["size_factor"], mask)
    t["bake"] = (masked_mse(out["bake_spot"], out["spot"], mask) if "bake_spot" in out
                 else jnp.zeros(()))
    t["loss"] = t["mse"] + cfg.zinb * t["zinb"] + cfg.bake * t["bake"]
    return t["loss"], t
