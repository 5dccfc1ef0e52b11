"""A Flax ResNet-50 with torchvision's layer layout (v1.5: stride on the 3x3 conv).

Parameter names mirror torchvision's ``state_dict`` keys so that
``asign_jax.features.torch_import`` can map them one to one::

    conv1, bn1                                 stem
    layer{1..4}_{b}/conv{1,2,3}, bn{1,2,3}     bottleneck b of stage s
    layer{s}_0/downsample_conv, downsample_bn  projection shortcut (torch: downsample.0/.1)

Fixed-seed initialisation (no weights file, ``fixed_seed_variables``): convs are He-normal
(fan_in), BN scale 1 / bias 0 / running mean 0 / var 1, except that the last BN scale of
every bottleneck is ``residual_init_scale`` (default 1/4 = 1/sqrt(16 blocks)). With eval-mode
BN at init stats the network is conv-ReLU-conv without normalisation, so an unscaled residual
stack grows its activations ~300x over 16 blocks (pooled features ~200, all cosines > 0.997);
zeroing the last scale (the standard trick) would instead collapse every bottleneck to the
identity and leave a 7x7-stem + 1x1-projection network that separates textures worse.
Scaling each residual branch by 1/sqrt(#blocks) keeps the activations O(1) while all 50
layers contribute (see ``tests/test_features.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

STAGE_SIZES = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
BN_EPS = 1e-5
BN_MOMENTUM = 0.9        # flax convention; torch's momentum 0.1
DEFAULT_RESIDUAL_INIT_SCALE = 0.25

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Bottleneck(nn.Module):
    """torchvision Bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), projection shortcut if needed.

    (B, H, W, C) -> (B, H/stride, W/stride, 4 * width).
    """

    width: int
    stride: int = 1
    downsample: bool = False
    residual_init_scale: float = DEFAULT_RESIDUAL_INIT_SCALE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        def bn(name, scale_init=nn.initializers.ones):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                epsilon=BN_EPS, dtype=self.dtype, scale_init=scale_init,
                                name=name)

        def conv(feats, k, stride, pad, name):
            return nn.Conv(feats, (k, k), strides=(stride, stride),
                           padding=((pad, pad), (pad, pad)), use_bias=False,
                           kernel_init=_conv_init, dtype=self.dtype, name=name)

        identity = x
        y = nn.relu(bn("bn1")(conv(self.width, 1, 1, 0, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(self.width, 3, self.stride, 1, "conv2")(y)))
        last_init = nn.initializers.constant(self.residual_init_scale)
        y = bn("bn3", last_init)(conv(self.width * EXPANSION, 1, 1, 0, "conv3")(y))
        if self.downsample:
            identity = bn("downsample_bn")(
                conv(self.width * EXPANSION, 1, self.stride, 0, "downsample_conv")(x))
        return nn.relu(y + identity)


class ResNet50(nn.Module):
    """ResNet-50 trunk (no fc).

    Input (B, H, W, 3) float, already ImageNet-normalised. Returns
    ``(pooled (B, 2048), feature_map (B, ceil(H/32), ceil(W/32), 2048))``.
    """

    stage_sizes: Sequence[int] = STAGE_SIZES
    residual_init_scale: float = DEFAULT_RESIDUAL_INIT_SCALE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.astype(self.dtype)
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    kernel_init=_conv_init, dtype=self.dtype, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                         dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS)):
            for b in range(n_blocks):
                stride = 2 if (b == 0 and s > 0) else 1
                x = Bottleneck(width, stride=stride, downsample=(b == 0),
                               residual_init_scale=self.residual_init_scale,
                               dtype=self.dtype, name=f"layer{s + 1}_{b}")(x, train=train)
        fmap = x
        pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
        return pooled, fmap


def fixed_seed_variables(seed: int, residual_init_scale: float = DEFAULT_RESIDUAL_INIT_SCALE,
                         stage_sizes: Sequence[int] = STAGE_SIZES) -> dict:
    """``ResNet50`` eval variables drawn from numpy's PCG64 with ``seed``.

    The same distribution as ``ResNet50(...).init`` (He-normal fan_in kernels, BN scale 1
    except ``bn3`` = ``residual_init_scale``, bias/mean 0, var 1), but drawn on the host in
    a fixed (sorted-path) order: ~0.5 s instead of compiling jax's RNG for 23.5 M weights,
    and independent of jax's PRNG implementation settings.

    Returns ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays.
    """
    model = ResNet50(stage_sizes=tuple(stage_sizes), residual_init_scale=residual_init_scale)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    out = {}
    for path, leaf in sorted(flatten_dict(shapes).items()):
        shape, name = tuple(leaf.shape), path[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            v = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name == "scale":
            v = np.full(shape, residual_init_scale if path[-2] == "bn3" else 1.0, np.float32)
        elif name in ("bias", "mean"):
            v = np.zeros(shape, np.float32)
        elif name == "var":
            v = np.ones(shape, np.float32)
        else:  # pragma: no cover - the model has no other leaves
            raise ValueError(f"unexpected variable {'/'.join(path)}")
        out[path] = v
    return unflatten_dict(out)
