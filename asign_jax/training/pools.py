"""A fold's training pool and the eval functions that go with it: the one path shared by
``python -m asign_jax.train`` (``pipeline``) and ``python -m asign_jax.impute`` (``block.model``).

``fold_pool`` = ``batches.build_pool`` with the config's tiling (``subgraph.pool_options``:
``train.max_graph_nodes``, the training halo) + the model's own inputs
(``model_inputs.attach``). ``eval_fns`` gives the matching ``(eval_fn, pad_fn)``: padded to
the pool's budget, or, for a pool of tiles (a sample above ``train.max_graph_nodes``), whole
unpadded samples imputed tile by tile (``subgraph.tiled_eval``, the same result as one graph).
"""

from __future__ import annotations

from typing import Callable, Optional

from asign_jax.errors import ConfigError
from asign_jax.models import factory
from asign_jax.training import batches, model_inputs, subgraph
from asign_jax.training.step import make_eval_fn


def fold_pool(config, model, graphs, fold, data_dir) -> batches.Pool:
    """The fold's masked training pool plus the model's own inputs (``training.model_inputs``:
    e.g. the retrieval bank of EGN / BLEEP, built from the pool's labelled spots only).

    Raises ConfigError when a sample is tiled but the model reads per-sample inputs (they are
    built per whole sample, and tiles do not carry them)."""
    pool = batches.build_pool(graphs, fold, seed=int(config.seed),
                              **subgraph.pool_options(config))
    names = factory.model_inputs(model)
    if pool.tiled and names:
        raise ConfigError(f"model.name={config.model.name!r} reads per-sample inputs "
                          f"({', '.join(names)}) that spatial tiles do not carry, and a sample "
                          f"has more than train.max_graph_nodes={config.train.max_graph_nodes} "
                          "spots: use model.name='asign' or raise train.max_graph_nodes")
    return model_inputs.attach(config, names, data_dir, pool)


def tiled_wrap(config, pool) -> Optional[Callable]:
    """For a pool of tiles (samples too large for one graph): eval_fn -> an eval_fn that imputes
    whole unpadded samples in exact tiles (``subgraph.tiled_eval``); else None."""
    if not pool.tiled:
        return None
    return lambda eval_fn: subgraph.tiled_eval(eval_fn, config)


def eval_fns(config, model, params, pool) -> tuple[Callable, Callable]:
    """(eval_fn: prepared sample -> model output dict, pad_fn: masked SampleGraph -> what
    eval_fn takes) for ``params``: the pool's padding, or tiles when the pool is tiled."""
    fn = make_eval_fn(model)
    eval_fn, pad_fn = (lambda s: fn(params, s)), pool.pad
    wrap = tiled_wrap(config, pool)
    if wrap is not None:
        eval_fn, pad_fn = wrap(eval_fn), (lambda s: s)
    return eval_fn, pad_fn
