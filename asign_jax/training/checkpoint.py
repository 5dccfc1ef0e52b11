"""Orbax checkpoints of one fold: ``<workdir>/checkpoints/fold_<k>/<step>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from asign_jax.training.state import TrainState


def checkpoint_manager(directory: Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager for one fold (atomic saves; keeps the latest ``max_to_keep`` steps)."""
    return ocp.CheckpointManager(Path(directory).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                      create=True))


def _tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def save(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Saves ``state`` under its step (asynchronously; ``mngr.wait_until_finished`` joins)."""
    tree = jax.device_get(_tree(state))
    mngr.save(int(tree["step"]), args=ocp.args.StandardSave(tree))


def restore(mngr: ocp.CheckpointManager, state: TrainState,
            step: Optional[int] = None) -> TrainState:
    """``state`` with params / opt_state / step of checkpoint ``step`` (default: the latest)."""
    step = mngr.latest_step() if step is None else step
    target = jax.device_get(_tree(state))
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return state.replace(params=tree["params"], opt_state=tree["opt_state"],
                         step=jnp.asarray(tree["step"], jnp.int32))


def restore_params(state: TrainState, ckpt_dir: Path) -> tuple[dict, int]:
    """(params, step) of the latest checkpoint in ``ckpt_dir``; ``state`` gives the structure.

    Raises FileNotFoundError when the folder holds no checkpoint.
    """
    mngr = checkpoint_manager(ckpt_dir)
    try:
        if mngr.latest_step() is None:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint")
        restored = restore(mngr, state)
        return restored.params, int(restored.step)
    finally:
        mngr.close()
