"""The model that imputes a block: trained on the block, or a checkpoint of ``asign_jax.train``.

Training and prediction use the project's own code path, as ``pipeline.train_and_evaluate``:
``training.pools.fold_pool`` (the pool tiled above ``train.max_graph_nodes``, the model's own
inputs attached), ``training.loop.train_fold``, and ``training.pools.eval_fns`` (a block above
``train.max_graph_nodes`` is imputed tile by tile, the same result as one graph). The block enters the fold
next to the ``--train_with`` samples; image-only sections have ``label_mask`` False from the
graph on, so nothing of theirs can be trained on. A block with ONE measured section enters as
cross-validation's held-out sample does, its measured section the known layer, so the
dataset config's validation design applies unchanged (``train.val_known_fraction``: blocks of
the measured section are hidden from training and are the validation role; the checkpoint and
the eq.-6 blend are read there, as in ``pipeline.train_and_evaluate``). A block with several
measured sections is a training sample. Validation samples (``train.val_samples`` naming a
``--train_with`` sample) are held out exactly as in cross-validation. Every selection reads
only data the user labelled; without a validation role, nothing is selected (fixed
``train.steps``, and a config that needs one stops with one line).

``--checkpoint``: a run folder of ``asign_jax.train`` (or one ``checkpoints/fold_<k>`` of it,
or an impute ``--out`` folder); its genes come from its ``prepared/index.json``, the model
hyperparameters from the config (which must be the one it was trained with).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from asign_jax import pipeline
from asign_jax.errors import ConfigError, DataError
from asign_jax.evaluation.scoring import model_outputs
from asign_jax.graph import roles
from asign_jax.training import checkpoint, pools, selection
from asign_jax.training.folds import Fold
from asign_jax.training.loop import train_fold
from asign_jax.training.state import create_train_state

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A trained model on disk: fold folder, its run folder, genes and normalisation."""

    fold_dir: Path
    run_dir: Path
    genes: tuple[str, ...]
    normalization: str


def _is_fold_dir(d: Path) -> bool:
    return d.is_dir() and any(p.is_dir() and p.name.isdigit() for p in d.iterdir())


def find_checkpoint(path) -> Checkpoint:
    """Resolves ``--checkpoint``: a fold folder, a run folder with one fold, or an impute
    ``--out`` folder (its ``work/``)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--checkpoint {path}: folder does not exist")
    if (path / "work" / "checkpoints").is_dir():
        path = path / "work"
    if _is_fold_dir(path):
        fold, run = path, path.parent.parent
    else:
        folds = sorted(p for p in (path / "checkpoints").glob("fold_*") if _is_fold_dir(p))
        if not folds:
            raise DataError(f"--checkpoint {path}: no checkpoints/fold_<k>/<step> inside (is it "
                            "a run folder of asign_jax.train?)")
        if len(folds) > 1:
            raise DataError(f"--checkpoint {path}: {len(folds)} folds "
                            f"({', '.join(p.name for p in folds)}), each a different model; "
                            "point --checkpoint at one of them")
        fold, run = folds[0], path
    index = run / "prepared" / "index.json"
    if not index.is_file():
        raise DataError(f"--checkpoint {path}: {index} is missing; the genes the model predicts "
                        "are listed there")
    meta = json.loads(index.read_text())
    return Checkpoint(fold, run, tuple(str(g) for g in meta["genes"]),
                      str(meta.get("normalization", "asign")))


def block_fold(block_id: str, train_ids, n_layers: dict, config,
               measured: Sequence[int] = ()) -> Fold:
    """The fold that trains on the block (see the module docstring); ``measured``: the
    block's measured layers."""
    tc = config.train
    val = tuple(str(s) for s in tc.val_samples if str(s) in train_ids)
    k = int(tc.known_layer)
    for s in val:
        if n_layers[s] < 2:
            raise ConfigError(f"train.val_samples: {s!r} has one layer; a validation sample "
                              "needs a known layer and a hidden one")
    known = {s: k % n_layers[s] for s in val}
    train = tuple(s for s in train_ids if s not in val)
    if len(measured) == 1 and n_layers[block_id] >= 2:
        frac = float(tc.val_known_fraction)
        return Fold(index=0, test_samples=(block_id,), train_samples=train,
                    known_layer={block_id: int(measured[0]), **known}, val_samples=val,
                    val_blocks=(block_id,) if frac > 0 else (), val_block_fraction=frac,
                    val_block_px=float(tc.val_block_px),
                    val_block_unit=str(tc.val_block_unit),
                    val_block_edges=str(tc.val_block_edges), val_seed=int(config.seed))
    return Fold(index=0, test_samples=(), train_samples=(block_id,) + train, known_layer=known,
                val_samples=val)


def restore(config, model, pool, fold_dir: Path) -> tuple[dict, int]:
    """(params, step) of the latest checkpoint in ``fold_dir`` for ``model``."""
    state = create_train_state(model, config.train, pool.example(), jax.random.PRNGKey(0))
    misfit = (f"--checkpoint {fold_dir}: does not fit the model of the config "
              f"(model.asign.hidden={config.model.asign.hidden}, heads={config.model.asign.heads}, "
              f"gat_layers={config.model.asign.gat_layers}); pass the config it was trained with")
    try:
        return checkpoint.restore_params(state, fold_dir)
    except FileNotFoundError as e:
        raise DataError(f"--checkpoint {fold_dir}: {e}") from e
    except ConfigError as e:          # the checkpoint's shape fingerprint differs
        raise ConfigError(f"{misfit} ({e})") from e


def seed_finetune(config, model, pool, params, fold_dir: Path) -> None:
    """Writes ``params`` with a fresh optimiser as step 0 of ``fold_dir``, so ``train_fold``
    continues from them (no re-initialisation, no output-bias reset)."""
    state = create_train_state(model, config.train, pool.example(), jax.random.PRNGKey(0))
    mngr = checkpoint.checkpoint_manager(fold_dir)
    try:
        if mngr.latest_step() is None:
            checkpoint.save(mngr, state.replace(params=params))
            mngr.wait_until_finished()
    finally:
        mngr.close()


def fit(config, model, loss_fn, graphs: dict, fold: Fold, workdir: Path, *,
        init_params: Optional[dict] = None, progress: bool = True):
    """Trains (or fine-tunes from ``init_params``) on the fold; returns (pool, params, step):
    the validation-selected params and step when the fold has a validation role."""
    selection.check_config(config, fold.has_validation)
    pool = pools.fold_pool(config, model, graphs, fold, workdir)
    ckpt = pipeline.fold_dir(workdir, fold)
    if init_params is not None:
        seed_finetune(config, model, pool, init_params, ckpt)
    logger.info("%s for %d steps; checkpoints in %s", fold.describe() if fold.has_validation
                else f"training on {', '.join(fold.train_samples + fold.test_samples)} (no "
                "validation role: nothing is selected)", int(config.train.steps), ckpt)
    validator = (selection.Validator(config, fold, graphs, model, pool.pad,
                                     wrap_eval=pools.tiled_wrap(config, pool))
                 if fold.has_validation else None)
    state = train_fold(config, model, loss_fn, pool, fold.index, ckpt,
                       Path(workdir) / "metrics.jsonl", progress=progress, validate=validator)
    # the validation-selected params (and the known_mean warning), as cross-validation keeps
    params, kept = pipeline.kept_params(config, fold, workdir, jax.device_get(state.params))
    return pool, params, int(state.step) if kept is None else kept["step"]


OUTPUT_LAYERS = {"asign_model": "network", "asign_propagation": "propagation"}
"""ASIGN's two halves, written as layers of the volume beside the prediction."""


def predict(config, model, params, graph, pool) -> dict:
    """{"prediction": (N, G) float32} for every spot of the block (for ASIGN also "network"
    and "propagation", its eq.-6 halves), with every measured spot known to the CLI (its value
    is kept). Runs the model of ``config.model.name`` through the pool's eval functions
    (``pools.eval_fns``): padded, or tile by tile above ``train.max_graph_nodes``."""
    masked = roles.mask_sample(graph, "train")             # labels: measured sections only
    spot = masked.spot
    nodes = {**spot.nodes, "known": np.asarray(spot.nodes["label_mask"], bool).copy()}
    masked = masked.replace_graphs({"spot": spot._replace(nodes=nodes)})
    eval_fn, pad_fn = pools.eval_fns(config, model, params, pool)
    out = eval_fn(pad_fn(masked))
    n = int(np.asarray(graph.spot.n_node)[0])
    name = str(config.model.name)
    preds = {}
    for method, key in model_outputs(name).items():
        preds[OUTPUT_LAYERS.get(method, "prediction")] = np.asarray(out[key], np.float32)[:n]
    return preds
