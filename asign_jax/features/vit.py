"""A Flax Vision Transformer covering the public pathology foundation models.

One ``ViT`` module, configured by a ``ViTArch`` row of ``ARCHS`` (the one table of the
architectures: sizes, MLP kind, register tokens, LayerScale, output rule, input size,
normalisation, key naming). Parameter names mirror timm's ``VisionTransformer`` so that a
timm ``state_dict`` maps one to one (HF ``ViTModel`` keys, Phikon's, are renamed to timm's
first; ``vit_weights.py`` reads and converts the weight files)::

    patch_embed.proj  -> patch_embed            (conv OIHW -> HWIO)
    cls_token, reg_token, pos_embed             as in timm
    blocks.{i}.norm1 / attn.qkv / attn.proj / ls1.gamma / norm2 / mlp.fc1 / mlp.fc2 / ls2.gamma
    norm                                        final LayerNorm

Forward (timm ``forward_features``): patch embedding -> + position embedding (interpolated
when the patch grid differs from the training grid, see ``resample_matrix``) -> [class,
registers, patches] -> pre-norm blocks ``x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x))``
-> final norm. ``pooled_and_tokens`` applies the arch's output rule:

    cls       the class token (UNI, UNI2-h, H-optimus, Prov-GigaPath, Phikon)
    mean      the mean of the patch tokens (registers and class token excluded)
    cls_mean  [class token, mean of patch tokens] (Virchow2; 2 x width)

and the patch-token grid, adaptive-average-pooled to ``grid x grid``, as the cross-attention
tokens (for ``cls_mean`` each token is [class token, pooled patch token], so that the tokens'
mean is the feature whenever the pooling bins are equal).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from asign_jax.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclasses.dataclass(frozen=True)
class ViTArch:
    """One architecture. ``mlp_hidden`` is timm's ``int(width * mlp_ratio)`` (fc1's outputs;
    for the packed SwiGLU fc2 reads half of them)."""

    patch: int
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    mlp: str = "gelu"              # gelu (fc1 -> exact GELU -> fc2) | swiglu (timm SwiGLUPacked:
                                   # fc1 -> [a, b] -> silu(a) * b -> fc2)
    reg_tokens: int = 0            # register tokens after the class token
    cls_pos_embed: bool = True     # class/register tokens have a position embedding
                                   # (timm no_embed_class=False)
    layerscale: bool = True        # ls1/ls2 gamma (timm init_values)
    output: str = "cls"            # cls | mean | cls_mean
    keys: str = "timm"             # timm | hf (transformers ViTModel)
    input_size: int = 224          # training resolution (position-embedding grid)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    eps: float = 1e-6              # LayerNorm epsilon (timm 1e-6, HF ViT 1e-12)
    hf_repo: str = ""              # where the user downloads the weights (never fetched here)
    licence: str = ""

    @property
    def grid(self) -> int:
        """Side of the training patch grid."""
        return self.input_size // self.patch

    @property
    def n_prefix(self) -> int:
        return 1 + self.reg_tokens

    @property
    def feature_dim(self) -> int:
        return 2 * self.width if self.output == "cls_mean" else self.width


OUTPUTS = ("cls", "mean", "cls_mean")

# The published architectures (timm / HF configs as TRIDENT and the model cards load them).
ARCHS: dict[str, ViTArch] = {
    # MahmoodLab/UNI: timm vit_large_patch16_224, init_values 1e-5
    "uni": ViTArch(16, 1024, 24, 16, 4096, hf_repo="MahmoodLab/UNI",
                   licence="CC-BY-NC-ND-4.0, gated"),
    # MahmoodLab/UNI2-h: vit_giant_patch14_224, depth 24, 24 heads, width 1536, SwiGLUPacked,
    # mlp_ratio 2.66667*2, 8 registers, no_embed_class
    "uni2_h": ViTArch(14, 1536, 24, 24, 8192, mlp="swiglu", reg_tokens=8,
                      cls_pos_embed=False, hf_repo="MahmoodLab/UNI2-h",
                      licence="CC-BY-NC-ND-4.0, gated"),
    # bioptimus/H-optimus-0 / -1: vit_giant_patch14_reg4_dinov2 at 224 px
    "h_optimus_0": ViTArch(14, 1536, 40, 24, 8192, mlp="swiglu", reg_tokens=4,
                           cls_pos_embed=False, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
                           hf_repo="bioptimus/H-optimus-0", licence="Apache-2.0"),
    "h_optimus_1": ViTArch(14, 1536, 40, 24, 8192, mlp="swiglu", reg_tokens=4,
                           cls_pos_embed=False, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
                           hf_repo="bioptimus/H-optimus-1",
                           licence="non-commercial, gated (see the model card)"),
    # paige-ai/Virchow2: vit_huge_patch14_224, mlp_ratio 5.3375 SwiGLUPacked, 4 registers
    # (with position embeddings), output [cls, mean of patch tokens]
    "virchow2": ViTArch(14, 1280, 32, 16, 6832, mlp="swiglu", reg_tokens=4,
                        output="cls_mean", hf_repo="paige-ai/Virchow2",
                        licence="CC-BY-NC-ND-4.0, gated"),
    # prov-gigapath/prov-gigapath tile encoder: vit_giant_patch14_dinov2 (timm 0.9.16, whose
    # SwiGLUPacked MLP the checkpoint keeps) with patch 16, mlp_ratio 5.33334, img 224
    "gigapath": ViTArch(16, 1536, 40, 24, 8192, mlp="swiglu", hf_repo="prov-gigapath/prov-gigapath",
                        licence="Apache-2.0 (gated on HF; research use)"),
    # owkin/phikon: transformers ViTModel, ViT-B/16, last_hidden_state[:, 0]
    "phikon": ViTArch(16, 768, 12, 12, 3072, layerscale=False, keys="hf", eps=1e-12,
                      hf_repo="owkin/phikon", licence="Owkin non-commercial"),
    # a tiny arch for tests and the end-to-end check with a random checkpoint
    "tiny_test": ViTArch(16, 64, 2, 4, 128, mlp="swiglu", reg_tokens=2, cls_pos_embed=False,
                         output="cls_mean"),
}


def get_arch(name: str, **overrides) -> ViTArch:
    """The ``ARCHS`` row ``name`` (ConfigError naming ``features.arch`` otherwise)."""
    if name not in ARCHS:
        raise ConfigError(f"features.arch={name!r}: expected one of {', '.join(ARCHS)}")
    arch = dataclasses.replace(ARCHS[name], **overrides) if overrides else ARCHS[name]
    if arch.output not in OUTPUTS or arch.mlp not in ("gelu", "swiglu") or \
            arch.keys not in ("timm", "hf") or arch.width % arch.heads:
        raise ConfigError(f"features.arch={name!r}: invalid arch {arch}")
    return arch


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def resample_matrix(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """(n_out, n_in) matrix of torch's 1-D bicubic ``F.interpolate`` (align_corners=False).

    ``antialias=True`` is timm's ``resample_abs_pos_embed`` (PIL-style cubic, a = -0.5, kernel
    widened by the scale when shrinking, weights normalised over the in-range taps);
    ``antialias=False`` is transformers' ViT ``interpolate_pos_encoding`` (a = -0.75, border
    indices clamped). Applied separably to the (h, w) grid of position embeddings.
    """
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if antialias:
        support = 2.0 * scale if scale >= 1.0 else 2.0
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            w = _cubic((j - center + 0.5) * inv, -0.5)
            m[i, lo:hi] = w / w.sum()
    else:
        for i in range(n_out):
            real = scale * (i + 0.5) - 0.5
            base = math.floor(real)
            t = real - base
            for k, off in enumerate((-1, 0, 1, 2)):
                w = _cubic(np.array(t - off), -0.75)
                m[i, min(max(base + off, 0), n_in - 1)] += float(w)
    return m.astype(np.float32)


class LayerScale(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(1e-5), (self.dim,))
        return x * gamma.astype(x.dtype)


class Attention(nn.Module):
    """timm Attention: fused qkv (with bias), softmax(q k^T / sqrt(d)) v, proj. (B, N, D)."""

    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x).reshape(b, n, 3, self.heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
        att = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)
        return nn.Dense(d, dtype=self.dtype, name="proj")(y)


class Mlp(nn.Module):
    hidden: int
    kind: str = "gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        if self.kind == "swiglu":          # timm GluMlp(gate_last=False): act(x1) * x2
            a, g = jnp.split(h, 2, axis=-1)
            h = nn.silu(a) * g
        else:
            h = nn.gelu(h, approximate=False)
        return nn.Dense(d, dtype=self.dtype, name="fc2")(h)


class Block(nn.Module):
    arch: ViTArch
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        a = self.arch
        ln = partial(nn.LayerNorm, epsilon=a.eps, dtype=self.dtype)
        y = Attention(a.heads, dtype=self.dtype, name="attn")(ln(name="norm1")(x))
        if a.layerscale:
            y = LayerScale(a.width, name="ls1")(y)
        x = x + y
        y = Mlp(a.mlp_hidden, a.mlp, dtype=self.dtype, name="mlp")(ln(name="norm2")(x))
        if a.layerscale:
            y = LayerScale(a.width, name="ls2")(y)
        return x + y


class ViT(nn.Module):
    """``(B, S, S, 3)`` normalised images -> (class token (B, D), patch tokens (B, g, g, D)),
    after the final norm; ``g = S // patch`` (S must be a multiple of the patch size)."""

    arch: ViTArch
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        a = self.arch
        d = a.width
        x = nn.Conv(d, (a.patch, a.patch), strides=(a.patch, a.patch), padding="VALID",
                    dtype=self.dtype, name="patch_embed")(x.astype(self.dtype))
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)
        g0 = a.grid
        n_pos = g0 * g0 + (a.n_prefix if a.cls_pos_embed else 0)
        init = nn.initializers.normal(0.02)
        pos = self.param("pos_embed", init, (1, n_pos, d))
        cls = self.param("cls_token", init, (1, 1, d))
        prefix = [cls]
        if a.reg_tokens:
            prefix.append(self.param("reg_token", init, (1, a.reg_tokens, d)))
        prefix = jnp.concatenate(prefix, axis=1)
        n_pre = a.n_prefix if a.cls_pos_embed else 0
        pos_pre, pos_grid = pos[:, :n_pre], pos[:, n_pre:].reshape(g0, g0, d)
        if (gh, gw) != (g0, g0):
            aa = a.keys == "timm"
            mh = jnp.asarray(resample_matrix(g0, gh, aa))
            mw = jnp.asarray(resample_matrix(g0, gw, aa))
            pos_grid = jnp.einsum("ih,hwc,jw->ijc", mh, pos_grid.astype(jnp.float32), mw)
        x = x + pos_grid.reshape(1, gh * gw, d).astype(x.dtype)
        if a.cls_pos_embed:
            prefix = prefix + pos_pre
        x = jnp.concatenate([jnp.broadcast_to(prefix, (b,) + prefix.shape[1:]).astype(x.dtype),
                             x], axis=1)
        for i in range(a.depth):
            x = Block(a, dtype=self.dtype, name=f"blocks_{i}")(x)
        x = nn.LayerNorm(epsilon=a.eps, dtype=self.dtype, name="norm")(x)
        return x[:, 0], x[:, a.n_prefix:].reshape(b, gh, gw, d)


def pooled_and_tokens(arch: ViTArch, cls: jax.Array, patches: jax.Array, pool_fn,
                      grid: int) -> tuple[jax.Array, jax.Array]:
    """The arch's output rule: feature (B, F) and tokens (B, grid², F), F = ``feature_dim``.

    ``pool_fn(patches (B, g, g, D), grid) -> (B, grid², D)`` pools the patch-token grid.
    """
    cls = cls.astype(jnp.float32)
    mean = jnp.mean(patches.astype(jnp.float32), axis=(1, 2))
    toks = pool_fn(patches, grid).astype(jnp.float32)
    if arch.output == "cls":
        return cls, toks
    if arch.output == "mean":
        return mean, toks
    cls_t = jnp.broadcast_to(cls[:, None], toks.shape)
    return jnp.concatenate([cls, mean], -1), jnp.concatenate([cls_t, toks], -1)


def param_shapes(arch: ViTArch) -> dict:
    """{flax path tuple: shape} of ``ViT(arch)``'s parameters."""
    s = arch.input_size
    tree = jax.eval_shape(lambda: ViT(arch).init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, s, s, 3))))
    return {k: tuple(v.shape) for k, v in flatten_dict(tree["params"]).items()}
