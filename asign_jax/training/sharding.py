"""Data parallelism: a 1-D ``Mesh`` with axis "data".

Batch leaves (leading sample axis S) are sharded over "data", params and optimizer state are
replicated, and ``jax.jit`` with ``in_shardings`` / ``out_shardings`` lets XLA insert the
gradient all-reduce (no shard_map, so no manual pmean). S must be a multiple of the mesh size.

On a CPU, fake devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` AND the
environment variable ``NPROC`` >= 2N set before jax is imported (shared/notes/stack.md).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(samples_per_step: int, n_devices: Optional[int] = None) -> Optional[Mesh]:
    """A "data" mesh over the largest device count that divides ``samples_per_step``.

    Returns None when that count is 1 (plain single-device jit).
    """
    devices = jax.devices()
    n = len(devices) if n_devices is None else min(n_devices, len(devices))
    while n > 1 and samples_per_step % n:
        n -= 1
    if n <= 1:
        return None
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis over "data", the rest replicated."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
    """``device_put`` every leaf replicated over the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh: Mesh):
    """``device_put`` every batch leaf split along its leading axis."""
    return jax.device_put(batch, data_sharding(mesh))


def shard_train_step(step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(step)`` for ``step(state, batch, rng) -> (state, metrics)`` over ``mesh``."""
    rep, dat = replicated(mesh), data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)


def shard_fn(fn: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(fn)`` for ``fn(params, batch, rng)`` with a sharded batch; outputs replicated."""
    rep, dat = replicated(mesh), data_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, dat, rep), out_shardings=rep)
