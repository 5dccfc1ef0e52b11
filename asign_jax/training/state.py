"""Optimiser, learning-rate schedule and train state.

Paper (ASIGN §IV-A): SGD, momentum 0.9, weight decay 1e-4, lr 1e-4 with cosine decay to
``final_lr_fraction`` x lr over ``steps``. ``optimizer="adam"`` gives AdamW (decoupled weight
decay, same schedule) for short demo runs.
"""

from __future__ import annotations

import jax
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


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """SGD(momentum) with L2 weight decay added to the gradient (``add_decayed_weights``), or AdamW."""
    schedule = make_schedule(train_cfg)
    wd = float(train_cfg.weight_decay)
    if train_cfg.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(wd),
                           optax.sgd(schedule, momentum=float(train_cfg.momentum)))
    if train_cfg.optimizer == "adam":
        return optax.adamw(schedule, weight_decay=wd)
    raise ConfigError(f"train.optimizer={train_cfg.optimizer!r}: expected 'sgd' or 'adam'")


def create_train_state(model, train_cfg, example: dict, rng: jax.Array) -> TrainState:
    """Initialises the model on ONE (unstacked) padded sample and builds the TrainState.

    Args:
      model: the flax module, called as ``model(spot, region, glob, known, train=False)``.
      train_cfg: ``config.train``.
      example: {"spot", "region", "global"} GraphsTuples of one padded sample.
      rng: init key.
    """
    spot = example["spot"]
    known = spot.nodes["known"]
    params_rng, dropout_rng = jax.random.split(rng)
    variables = jax.jit(lambda r, d: model.init({"params": r, "dropout": d}, spot,
                                                example["region"], example["global"], known,
                                                train=False))(params_rng, dropout_rng)
    extra = set(variables) - {"params"}
    if extra:
        raise ConfigError(f"model has non-parameter collections {sorted(extra)}; "
                          "the training loop only carries 'params'")
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=make_optimizer(train_cfg))
