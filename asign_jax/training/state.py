"""Optimiser, learning-rate schedule and train state.

Paper (ASIGN §IV-A): SGD, momentum 0.9, weight decay 1e-4, lr 1e-4 with cosine decay to
``final_lr_fraction`` x lr over ``steps``. ``optimizer="adam"`` gives AdamW (decoupled weight
decay, same schedule) for short demo runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from asign_jax.errors import ConfigError


class TrainState(train_state.TrainState):
    """flax TrainState: ``step``, ``params``, ``opt_state`` (+ static ``apply_fn``, ``tx``)."""


def make_schedule(train_cfg) -> optax.Schedule:
    """Cosine decay from ``learning_rate`` to ``final_lr_fraction * learning_rate`` at ``steps``."""
    return optax.cosine_decay_schedule(init_value=float(train_cfg.learning_rate),
                                       decay_steps=max(int(train_cfg.steps), 1),
                                       alpha=float(train_cfg.final_lr_fraction))


_OPTIMIZERS: dict = {}


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """SGD(momentum) with L2 weight decay added to the gradient (``add_decayed_weights``), or AdamW.

    Memoised on the settings: the optimizer is a static field of the TrainState, so the same
    object keeps a jitted step from recompiling across folds and relaunches.
    """
    key = tuple(str(train_cfg.get(k)) for k in ("optimizer", "learning_rate", "momentum",
                                                  "weight_decay", "final_lr_fraction", "steps",
                                                  "cli_lr_multiplier"))
    if key not in _OPTIMIZERS:
        _OPTIMIZERS[key] = _build_optimizer(train_cfg)
    return _OPTIMIZERS[key]


def _is_cli(params):
    """Pytree of bools like ``params``: True on the CLI block's parameters (module "cli")."""
    return {k: jax.tree.map(lambda _: k == "cli", v) for k, v in params.items()}


def _build_optimizer(train_cfg) -> optax.GradientTransformation:
    schedule = make_schedule(train_cfg)
    wd = float(train_cfg.weight_decay)
    if train_cfg.optimizer == "sgd":
        tx = optax.chain(optax.add_decayed_weights(wd),
                         optax.sgd(schedule, momentum=float(train_cfg.momentum)))
    elif train_cfg.optimizer == "adam":
        tx = optax.adamw(schedule, weight_decay=wd)
    else:
        raise ConfigError(f"train.optimizer={train_cfg.optimizer!r}: expected 'sgd' or 'adam'")
    mult = float(train_cfg.get("cli_lr_multiplier", 1.0))
    if mult != 1.0:
        # the CLI has a handful of scalars per gene / a Dense(1); with Adam each moves at most
        # ~lr a step, far too slow for a blend weight that must travel several logits
        tx = optax.chain(tx, optax.masked(optax.scale(mult), _is_cli))
    return tx


_INIT_FNS: dict = {}


def _init_fn(model):
    """Jitted ``(params_rng, dropout_rng, sample) -> variables`` (memoised per model)."""
    if id(model) not in _INIT_FNS:
        def init(r, d, ex):
            return model.init({"params": r, "dropout": d}, ex["spot"], ex["region"],
                              ex["global"], ex["spot"].nodes["known"], train=False)
        _INIT_FNS[id(model)] = (jax.jit(init), model)
    return _INIT_FNS[id(model)][0]


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
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              tx=make_optimizer(train_cfg))
    # a strongly typed int32 step: the same signature fresh, stepped and restored (no recompiles)
    return state.replace(step=jnp.zeros((), jnp.int32))
