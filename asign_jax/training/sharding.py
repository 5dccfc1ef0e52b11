"""Data parallelism: a 1-D ``Mesh`` with axis "data".

Batch leaves (leading sample axis S) are sharded over "data", params and optimizer state are
replicated, and ``jax.jit`` with ``in_shardings`` / ``out_shardings`` lets XLA insert the
gradient all-reduce (no shard_map, so no manual pmean). S must be a multiple of the mesh size.

On a CPU, fake devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` AND the
environment variable ``NPROC`` >= 2N set before jax is imported (docs/stack.md).

Multi-process (``jax.distributed.initialize``, see ``initialize``): the mesh spans the devices
of every process. Every process holds the same pool and runs the same steps (same seed);
``replicate`` / ``shard_batch`` build the global arrays from each process's host copy (each
process supplies the shards its own devices hold), and the train step converts its batch and
rng the same way, so ``training.loop.train_fold`` runs unchanged in every process.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
"""XLA options of the jitted training and evaluation steps on a CPU backend: YNNPACK fusions
for matmuls only. jaxlib 0.10's CPU default also hands reductions to YNNPACK, whose sums over
the node axis (the LayerNorm and bias gradients: (N, H) -> (H,)) ran at about 50 M elements a
second, 0.46 s of a 15k-node step; XLA's own reduction emitter takes them back
(docs/performance.md)."""


def compiler_options() -> dict:
    """``compiler_options`` for ``jax.jit`` of the steps on the default backend (none off CPU)."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


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


def _global(tree, sharding):
    """Global arrays with ``sharding`` from a host value every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(one, tree)


def replicate(tree, mesh: Mesh):
    """Every leaf replicated over the mesh (all processes' devices)."""
    return _global(tree, replicated(mesh))


def shard_batch(batch, mesh: Mesh):
    """Every batch leaf split along its leading axis over the mesh."""
    return _global(batch, data_sharding(mesh))


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a multi-process run (``jax.distributed.initialize``; CPU collectives: gloo).

    Call before anything touches the devices. ``coordinator`` is "host:port" of process 0.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                               process_id=int(process_id))


def shard_train_step(step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(step)`` for ``step(state, batch, rng) -> (state, metrics)`` over ``mesh``."""
    rep, dat = replicated(mesh), data_sharding(mesh)
    fn = jax.jit(step, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0,
                 compiler_options=compiler_options())
    if jax.process_count() == 1:
        return fn
    return lambda state, batch, rng: fn(state, shard_batch(batch, mesh), replicate(rng, mesh))


def shard_fn(fn: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(fn)`` for ``fn(params, batch, rng)`` with a sharded batch; outputs replicated."""
    rep, dat = replicated(mesh), data_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, dat, rep), out_shardings=rep,
                   compiler_options=compiler_options())
