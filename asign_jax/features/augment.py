"""Pure-jax image augmentation and ImageNet normalisation (jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images) -> jax.Array:
    """(..., 3) uint8 or float in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x - mean) / std


def augment(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Random per-image h-flip, v-flip and rotation by k * 90 degrees.

    Args:
      rng: a jax PRNG key; the same key gives the same result.
      images: (B, H, W, C) float with H == W (rotations keep the shape).

    Returns:
      (B, H, W, C), each image a permutation of its own pixels.
    """
    b, h, w = images.shape[:3]
    if h != w:
        raise ValueError(f"augment needs square images for 90-degree rotations, got {h}x{w}")
    k_h, k_v, k_r = jax.random.split(rng, 3)
    hflip = jax.random.bernoulli(k_h, 0.5, (b,))[:, None, None, None]
    vflip = jax.random.bernoulli(k_v, 0.5, (b,))[:, None, None, None]
    rot = jax.random.randint(k_r, (b,), 0, 4)
    x = jnp.where(hflip, images[:, :, ::-1], images)
    x = jnp.where(vflip, x[:, ::-1], x)
    rots = jnp.stack([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])   # (4, B, H, W, C)
    return rots[rot, jnp.arange(b)]
