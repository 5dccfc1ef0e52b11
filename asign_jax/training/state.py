"""Optimiser, learning-rate schedule and train state.

Paper (ASIGN §IV-A): SGD, momentum 0.9, weight decay 1e-4, lr 1e-4 with cosine decay to
``final_lr_fraction`` x lr over ``steps``. ``optimizer="adam"`` gives AdamW (decoupled weight
decay, same schedule) for short demo runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from asign_jax.errors import ConfigError
from asign_jax.training.batches import model_extra


class TrainState(train_state.TrainState):
    """flax TrainState: ``step``, ``params``, ``opt_state`` (+ static ``tx``; ``apply_fn`` is
    None: the steps call the value-hashed model itself)."""


def make_schedule(train_cfg) -> optax.Schedule:
    """Cosine decay from ``learning_rate`` to ``final_lr_fraction * learning_rate`` at ``steps``."""
    return _schedule(float(train_cfg.learning_rate), int(train_cfg.steps),
                     float(train_cfg.final_lr_fraction))


def _schedule(learning_rate: float, steps: int, final_lr_fraction: float) -> optax.Schedule:
    return optax.cosine_decay_schedule(init_value=learning_rate, decay_steps=max(steps, 1),
                                       alpha=final_lr_fraction)


def make_optimizer(train_cfg, multipliers: tuple = ()) -> optax.GradientTransformation:
    """SGD(momentum) with L2 weight decay added to the gradient (``add_decayed_weights``), or AdamW,
    then the learning-rate factor of each ``(module name, factor)`` of ``multipliers`` (a
    model's ``lr_multipliers()``, e.g. ASIGN's CLI and linear image path); the name ``"*"``
    stands for every top-level module that no other pair names.

    Memoised on the settings: the optimizer is a static field of the TrainState, so the same
    object keeps a jitted step from recompiling across folds and relaunches.
    """
    return _optimizer(str(train_cfg.optimizer), float(train_cfg.learning_rate),
                      float(train_cfg.momentum), float(train_cfg.weight_decay),
                      float(train_cfg.final_lr_fraction), int(train_cfg.steps),
                      tuple((str(n), float(f)) for n, f in multipliers))


def _is_module(name, named=()):
    """Mask builder: pytree of bools like ``params``, True on the parameters of module ``name``
    (``"*"``: of every module not in ``named``)."""
    hit = (lambda k: k not in named) if name == "*" else (lambda k: k == name)
    return lambda params: {k: jax.tree.map(lambda _, h=hit(k): h, v) for k, v in params.items()}


@functools.lru_cache(maxsize=None)
def _optimizer(name: str, learning_rate: float, momentum: float, weight_decay: float,
               final_lr_fraction: float, steps: int,
               multipliers: tuple) -> optax.GradientTransformation:
    schedule = _schedule(learning_rate, steps, final_lr_fraction)
    if name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(schedule, momentum=momentum))
    elif name == "adam":
        tx = optax.adamw(schedule, weight_decay=weight_decay)
    else:
        raise ConfigError(f"train.optimizer={name!r}: expected 'sgd' or 'adam'")
    named = tuple(n for n, _ in multipliers if n != "*")
    for module, factor in multipliers:
        if factor != 1.0:
            tx = optax.chain(tx, optax.masked(optax.scale(factor), _is_module(module, named)))
    return tx


@functools.lru_cache(maxsize=None)
def _init_fn(model):
    """Jitted ``(params_rng, dropout_rng, sample) -> variables`` (one per model configuration)."""
    def init(r, d, ex):
        return model.init({"params": r, "dropout": d}, ex["spot"], ex["region"], ex["global"],
                          ex["spot"].nodes["known"], train=False, **model_extra(ex))
    return jax.jit(init)


def create_train_state(model, train_cfg, example: dict, rng: jax.Array) -> TrainState:
    """Initialises the model on ONE (unstacked) padded sample and builds the TrainState.

    Args:
      model: the flax module, called as ``model(spot, region, glob, known, train=False)``.
      train_cfg: ``config.train``.
      example: {"spot", "region", "global"} GraphsTuples of one padded sample.
      rng: init key.
    """
    params_rng, dropout_rng = jax.random.split(rng)
    variables = _init_fn(model)(params_rng, dropout_rng, example)
    extra = set(variables) - {"params"}
    if extra:
        raise ConfigError(f"model has non-parameter collections {sorted(extra)}; "
                          "the training loop only carries 'params'")
    # apply_fn=None: a bound method compares its module by identity (Python >= 3.8), so every
    # new (equal) model would change the state's static fields and recompile the jitted step
    multipliers = getattr(model, "lr_multipliers", None)
    state = TrainState.create(apply_fn=None, params=variables["params"],
                              tx=make_optimizer(train_cfg, multipliers() if multipliers else ()))
    # a strongly typed int32 step: the same signature fresh, stepped and restored (no recompiles)
    return state.replace(step=jnp.zeros((), jnp.int32))


def count_params(model, example: dict) -> int:
    """Number of trainable parameters of ``model`` on ``example`` (shapes only, no compute)."""
    key = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(_init_fn(model), key, key, example)
    return int(sum(x.size for x in jax.tree.leaves(shapes["params"])))
