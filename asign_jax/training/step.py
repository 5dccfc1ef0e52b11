"""The pure, jitted training and evaluation steps.

A batch is ``{"spot", "region", "global"}`` of padded ``jraph.GraphsTuple`` whose leaves carry
a leading sample axis S (``batches.Pool.take``); the model is vmapped over it and the loss is
the mean of the per-sample losses (every sample weighs the same, whatever its size).

Per sample and step a known set is drawn (``known.draw``) from the LABELLED spots; known spots
feed the CLI, the spot loss is over the labelled spots that are not known. Labels of test
layers never reach this module: they are zeros with label_mask False (``batches``).

Jitted functions are memoised on VALUES: the model is a hashable linen module with a frozen
config (``models.factory``), the loss config a ``FrozenConfigDict``, so equal configurations
share one compilation across folds and relaunches.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from asign_jax.models import factory
from asign_jax.training import known as known_lib, sharding
from asign_jax.training.batches import model_extra
from asign_jax.training.state import TrainState


def sample_loss(params, sample: dict, rng: jax.Array, *, model, loss_fn: Callable, loss_cfg,
                known_fraction: float, known_mode: str):
    """Loss of ONE sample (no leading axis) with a freshly drawn known set; returns (loss, terms).

    ``loss_fn(out, spot, region, glob, spot_mask, region_mask, global_mask, loss_cfg)``
    (``models.losses.asign_loss`` for ASIGN) gets the labelled, not-known spots as spot_mask.
    """
    known_rng, dropout_rng = jax.random.split(rng)
    spot, region, glob = sample["spot"], sample["region"], sample["global"]
    spot_labelled = spot.nodes["label_mask"]
    known = known_lib.draw(known_rng, spot_labelled, spot.nodes["layer"], known_fraction,
                           known_mode)
    spot = spot._replace(nodes={**spot.nodes, "known": known})
    out = model.apply({"params": params}, spot, region, glob, known, train=True,
                      rngs={"dropout": dropout_rng}, **model_extra(sample))
    return loss_fn(out, spot, region, glob, spot_labelled & ~known,
                   region.nodes["label_mask"], glob.nodes["label_mask"], loss_cfg)


def batch_loss(params, batch: dict, rng: jax.Array, **kw):
    """Mean over the S samples of ``batch`` of ``sample_loss``; returns (loss, {term: mean})."""
    n = jax.tree.leaves(batch)[0].shape[0]
    rngs = jax.random.split(rng, n)
    losses, terms = jax.vmap(lambda s, r: sample_loss(params, s, r, **kw))(batch, rngs)
    return jnp.mean(losses), {k: jnp.mean(v) for k, v in terms.items()}


def loss_and_grads(params, batch: dict, rng: jax.Array, **kw):
    """((loss, terms), grads) of ``batch_loss`` w.r.t. params."""
    return jax.value_and_grad(functools.partial(batch_loss, **kw), has_aux=True)(params, batch, rng)


def train_step(state: TrainState, batch: dict, rng: jax.Array, **kw):
    """One optimiser step; the step's rng is ``fold_in(rng, state.step)``.

    Args:
      state: TrainState (replicated).
      batch: {"spot", "region", "global"} stacked GraphsTuples, leading axis S.
      rng: the fold's base key.
      **kw: model, loss_fn, loss_cfg, known_fraction, known_mode (bound before jit).

    Returns:
      (new state, {"loss": scalar, **loss terms}).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, terms), grads = loss_and_grads(state.params, batch, step_rng, **kw)
    return state.apply_gradients(grads=grads), {**terms, "loss": loss}


def eval_step(params, sample: dict, *, model) -> dict:
    """Deterministic forward pass of ONE sample (no leading axis); known = nodes["known"]."""
    spot = sample["spot"]
    return model.apply({"params": params}, spot, sample["region"], sample["global"],
                       spot.nodes["known"], train=False, **model_extra(sample))


def step_options(config) -> dict:
    """The static, hashable keyword arguments of ``train_step`` that come from the config."""
    return {"loss_cfg": ml_collections.FrozenConfigDict(factory.model_config(config).loss),
            "known_fraction": float(config.train.known_fraction),
            "known_mode": str(config.train.known_mode)}


@functools.lru_cache(maxsize=None)
def _jitted_train_step(model, loss_fn, loss_cfg, known_fraction, known_mode, mesh):
    step = functools.partial(train_step, model=model, loss_fn=loss_fn, loss_cfg=loss_cfg,
                             known_fraction=known_fraction, known_mode=known_mode)
    if mesh is None:
        return jax.jit(step, donate_argnums=0, compiler_options=sharding.compiler_options())
    return sharding.shard_train_step(step, mesh)


def make_train_step(model, loss_fn: Callable, config, *, mesh=None) -> Callable:
    """The jitted ``(state, batch, rng) -> (state, metrics)``, one compilation per configuration.

    With a ``mesh`` (``sharding.make_mesh``) the batch is sharded over its "data" axis and the
    state replicated (``sharding.shard_train_step``); without, a plain ``jax.jit``.
    """
    return _jitted_train_step(model, loss_fn, mesh=mesh, **step_options(config))


@functools.lru_cache(maxsize=None)
def make_eval_fn(model) -> Callable:
    """Jitted ``(params, sample) -> output dict`` of ``eval_step`` (one per model configuration)."""
    return jax.jit(functools.partial(eval_step, model=model),
                   compiler_options=sharding.compiler_options())


def forget_compiled() -> None:
    """Drops the memoised jitted steps. Equal models share one jitted step across runs in a
    process (no recompiles), so a test that counts the traces of one run starts from here."""
    _jitted_train_step.cache_clear()
    make_eval_fn.cache_clear()
