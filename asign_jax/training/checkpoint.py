"""Orbax checkpoints of one fold: ``<workdir>/checkpoints/fold_<k>/<step>/{state,meta}``.

``state`` holds params, optimiser state and step; ``meta`` the shape fingerprint of params and
optimiser state (every leaf's path, shape and dtype). Restoring checks the fingerprint first,
so a checkpoint of another model or optimiser (e.g. another ``model.asign.hidden``) is refused in
one line instead of failing deep in Flax. A checkpoint that cannot be read (a damaged latest
step) is reported in one warning line, set aside as ``damaged_<step>``, and the previous step
is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from asign_jax.errors import ConfigError, DataError
from asign_jax.training.state import TrainState

logger = logging.getLogger(__name__)


def checkpoint_manager(directory: Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager for one fold (atomic saves; keeps the latest ``max_to_keep`` steps)."""
    return ocp.CheckpointManager(Path(directory).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                      create=True))


def _tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def structure(state: TrainState) -> dict:
    """{"params/...": "float32[32,40]", "opt_state/...": ...}: the shapes a checkpoint fits."""
    tree = {"params": state.params, "opt_state": state.opt_state}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"):
            f"{np.dtype(jnp.result_type(leaf)).name}{list(np.shape(leaf))}"
            for path, leaf in leaves}


def fingerprint(struct: dict) -> str:
    """Hash of a ``structure`` (16 hex characters)."""
    return hashlib.sha256(json.dumps(struct, sort_keys=True).encode()).hexdigest()[:16]


def save(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Saves ``state`` under its step (asynchronously; ``mngr.wait_until_finished`` joins)."""
    tree = jax.device_get(_tree(state))
    struct = structure(state)
    meta = {"fingerprint": fingerprint(struct), "structure": struct}
    mngr.save(int(tree["step"]), args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                         meta=ocp.args.JsonSave(meta)))


def _mismatch(directory: Path, step: int, saved: dict, now: dict) -> str:
    """One line naming the first leaf (parameters before optimiser state) whose shape differs."""
    for key in sorted(set(saved) | set(now), key=lambda k: (not k.startswith("params/"), k)):
        if saved.get(key) != now.get(key):
            return (f"{directory}/{step}: checkpoint of another model or optimiser "
                    f"({key} is {saved.get(key, 'absent')} there, {now.get(key, 'absent')} "
                    "now): use the config it was trained with, a new --workdir, or --overwrite")
    return f"{directory}/{step}: checkpoint of another model or optimiser"


def _read(mngr: ocp.CheckpointManager, step: int, **items) -> Optional[dict]:
    """The ``items`` of checkpoint ``step``, or None (one warning line) when it cannot be read;
    an unreadable step folder is renamed ``damaged_<step>`` (kept for inspection)."""
    try:
        return mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many types
        logger.warning("%s/%d: checkpoint cannot be read (%s); set aside as damaged_%d, trying "
                       "the previous one", mngr.directory, step, str(e).splitlines()[0][:120],
                       step)
    src = Path(mngr.directory) / str(step)
    if src.exists() and not src.with_name(f"damaged_{step}").exists():
        src.rename(src.with_name(f"damaged_{step}"))
    mngr.reload()
    return None


def restore(mngr: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """``state`` with params / opt_state / step of the latest READABLE checkpoint.

    Raises ConfigError when the checkpoint was made for another model/optimiser structure,
    DataError when no checkpoint can be read, FileNotFoundError when there is none.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"{mngr.directory}: no checkpoint")
    now = structure(state)
    target = jax.device_get(_tree(state))
    for step in steps:
        meta = _read(mngr, step, meta=ocp.args.JsonRestore())
        if meta is None:
            continue
        if meta["meta"]["fingerprint"] != fingerprint(now):
            raise ConfigError(_mismatch(Path(mngr.directory), step, meta["meta"]["structure"],
                                        now))
        tree = _read(mngr, step, state=ocp.args.StandardRestore(target))
        if tree is None:
            continue
        tree = tree["state"]
        return state.replace(params=tree["params"], opt_state=tree["opt_state"],
                             step=jnp.asarray(tree["step"], jnp.int32))
    raise DataError(f"{mngr.directory}: no readable checkpoint (steps {steps} are damaged); "
                    "pass --overwrite to train this fold again")


def restore_params(state: TrainState, ckpt_dir: Path) -> tuple[dict, int]:
    """(params, step) of the latest readable checkpoint in ``ckpt_dir`` (see ``restore``);
    ``state`` gives the structure. Raises FileNotFoundError when the folder holds none."""
    mngr = checkpoint_manager(ckpt_dir)
    try:
        restored = restore(mngr, state)
        return restored.params, int(restored.step)
    finally:
        mngr.close()
