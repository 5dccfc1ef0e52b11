"""``config.model.name`` -> (model, loss). A new model is one file in ``asign_jax/models/``
plus one line in ``MODELS``.

Every model is a linen module called as ``model(spot, region, glob, known, *, train)`` on ONE
padded sample (``graph/contract.py``) and returns a dict with at least "spot" (N_s, G), the
prediction that is scored. Its loss has the signature of ``training.losses.asign_loss``. The
module's config is frozen (``ml_collections.FrozenConfigDict``), so two modules built from
equal configs are equal and hash alike: jitted steps that take the model as a static argument
compile once per configuration, across folds and relaunches.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from asign_jax.errors import ConfigError
from asign_jax.models.asign import ASIGN
from asign_jax.training.losses import asign_loss

MODELS = {
    "asign": (ASIGN, asign_loss),
}


def build(config, n_genes: int) -> tuple[object, Callable]:
    """(module, loss function) of the model named by ``config.model.name``, ``n_genes`` outputs."""
    name = str(config.model.name)
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r}: expected one of {sorted(MODELS)}")
    module, loss = MODELS[name]
    return module(cfg=ml_collections.FrozenConfigDict(config.model), n_genes=int(n_genes)), loss
