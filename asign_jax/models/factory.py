"""``config.model.name`` -> (model, loss). A new model is one file in ``asign_jax/models/``
plus one line in ``MODELS``.

Every model is a linen module called as ``model(spot, region, glob, known, *, train)`` on ONE
padded sample (``graph/contract.py``) and returns a dict with at least "spot" (N_s, G), the
prediction that is scored (under the model's name, ``evaluation.scoring.model_outputs``). A
model that needs more than the graphs lists the inputs in an ``inputs()`` method and takes
them as ``model(spot, region, glob, known, extra, *, train)``; ``training.model_inputs``
builds them per fold from the masked pool (the retrieval bank of EGN / BLEEP, token grids,
array positions, neighbour tables). Its loss has the signature of ``models.losses.asign_loss``. The
module's config is frozen (``ml_collections.FrozenConfigDict``), so two modules built from
equal configs are equal and hash alike: jitted steps that take the model as a static argument
compile once per configuration, across folds and relaunches.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from asign_jax.config import block_name
from asign_jax.errors import ConfigError
from asign_jax.models.asign import ASIGN
from asign_jax.models.asign2d import ASIGN2D
from asign_jax.models.bleep import BLEEP, bleep_loss
from asign_jax.models.blocks import spot_mse_loss
from asign_jax.models.egn import EGN, egn_loss
from asign_jax.models.his2st import His2ST, his2st_loss
from asign_jax.models.histogene import HisToGene
from asign_jax.models.losses import asign_loss
from asign_jax.models.stnet import STNet
from asign_jax.models.triplex import Triplex, triplex_loss

MODELS = {
    "asign": (ASIGN, asign_loss),
    "asign2d": (ASIGN2D, asign_loss),
    "stnet": (STNet, spot_mse_loss),
    "egn": (EGN, egn_loss),
    "histogene": (HisToGene, spot_mse_loss),
    "bleep": (BLEEP, bleep_loss),
    "his2st": (His2ST, his2st_loss),
    "triplex": (Triplex, triplex_loss),
}


def model_config(config) -> ml_collections.ConfigDict:
    """The one block a model reads: ``config.model.<block>`` with the shared spot encoder
    ``backbone`` beside it (its loss weights are its ``loss`` sub-block)."""
    name = str(config.model.name)
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r}: expected one of {sorted(MODELS)}")
    model = config.model
    if isinstance(model, ml_collections.ConfigDict):
        model = model.copy_and_resolve_references()
    own = ml_collections.ConfigDict(model[block_name(name)].to_dict())
    own.backbone = ml_collections.ConfigDict(model.backbone.to_dict())
    return own


def model_inputs(model) -> tuple:
    """The ``extra`` inputs ``model`` reads (``training.model_inputs``); () for ASIGN."""
    inputs = getattr(model, "inputs", None)
    return tuple(inputs()) if inputs is not None else ()


def build(config, n_genes: int) -> tuple[object, Callable]:
    """(module, loss function) of the model named by ``config.model.name``, ``n_genes`` outputs;
    the module is built from ``model_config(config)`` only."""
    cfg = model_config(config)            # checks model.name
    module, loss = MODELS[str(config.model.name)]
    return module(cfg=ml_collections.FrozenConfigDict(cfg), n_genes=int(n_genes)), loss


def graph_hops(config, exact: bool = False) -> int:
    """Message-passing hops of the chosen model over the spot graph, i.e. the halo a spatial
    tile needs: the model class's ``graph_hops(model_cfg, exact)``; 0 for a model that reads
    no edges (the per-spot baselines; His2ST's neighbour tables are per-sample inputs, which
    tiles refuse)."""
    cfg = model_config(config)            # checks model.name
    hops = getattr(MODELS[str(config.model.name)][0], "graph_hops", None)
    return int(hops(cfg, exact)) if hops else 0
