"""Which labelled spots the CLI sees as "known" in a training step (its labels are its input).

Two modes (``config.train.known_mode``): "fraction" (the paper: a random ``known_fraction`` of
the labelled spots) and "layer" (one whole labelled layer, as at evaluation). The spot loss is
over the labelled spots that are NOT known, so the model learns to impute, not to copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from asign_jax.config import check_choice


def draw_known(rng: jax.Array, label_mask: jax.Array, fraction: float) -> jax.Array:
    """(N,) bool: exactly round(fraction x #labelled) of the labelled nodes, uniformly at random."""
    n_known = jnp.round(fraction * label_mask.sum()).astype(jnp.int32)
    scores = jnp.where(label_mask, jax.random.uniform(rng, label_mask.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))
    return label_mask & (rank < n_known)


def draw_known_layer(rng: jax.Array, label_mask: jax.Array, layer: jax.Array,
                     fraction: float) -> jax.Array:
    """(N,) bool: every labelled node of ONE labelled layer drawn uniformly at random.

    This mimics evaluation (one whole known layer, the rest imputed). A sample with fewer than
    two labelled layers (a 2D section, or a held-out sample with only its known layer) falls
    back to ``draw_known(fraction)``, so it still has unknown spots to learn from.
    """
    n = label_mask.shape[0]
    lay = jnp.where(label_mask, layer, 0).astype(jnp.int32)
    present = jax.ops.segment_max(label_mask.astype(jnp.int32), lay, n) > 0     # per layer id
    n_present = present.sum()
    pick_rng, frac_rng = jax.random.split(rng)
    k = jax.random.randint(pick_rng, (), 0, jnp.maximum(n_present, 1))
    chosen = jnp.argmax(jnp.cumsum(present) > k)                  # the (k+1)-th present layer
    return jnp.where(n_present >= 2, label_mask & (lay == chosen),
                     draw_known(frac_rng, label_mask, fraction))


def draw(rng: jax.Array, label_mask: jax.Array, layer: jax.Array, fraction: float,
         mode: str) -> jax.Array:
    """The known set of one sample for ``mode`` (``train.known_mode``, static)."""
    if check_choice("train.known_mode", mode) == "layer":
        return draw_known_layer(rng, label_mask, layer, fraction)
    return draw_known(rng, label_mask, fraction)
