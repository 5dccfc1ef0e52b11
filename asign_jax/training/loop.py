"""The per-fold training loop: resumable from orbax checkpoints, logged to metrics.jsonl.

One fold = ``config.train.steps`` calls of the jitted ``step.train_step`` on batches drawn from
the fold's ``batches.Pool`` (a pure function of the seed and the step number, so a relaunch
replays exactly the steps it lost). A non-finite loss stops the fold at once (TrainingError
naming the fold and the step, as big_vision does); the checkpoints before it are kept.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from asign_jax import atomic
from asign_jax.config import check_choice
from asign_jax.errors import ConfigError, TrainingError
from asign_jax.evaluation import references
from asign_jax.training import checkpoint, selection, sharding
from asign_jax.training.state import TrainState, create_train_state, make_schedule
from asign_jax.training.step import make_train_step

logger = logging.getLogger(__name__)


def _truncate_log(path: Path, fold: int, after_step: int) -> None:
    """Drops the lines of ``fold`` with step > after_step (they are recomputed on resume)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("fold") == fold and rec.get("step", 0) > after_step:
            continue
        keep.append(line)
    atomic.write_text(path, "".join(l + "\n" for l in keep))


# ---- the loop -------------------------------------------------------------------------------

HEADS = {"spot": "spot_head", "region": "region_head", "global": "global_head"}
"""Scale -> the ASIGN module whose ``out`` Dense is that scale's regression head."""


def label_means(pool) -> dict:
    """{scale: (G,) mean label over the pool's usable labels} (``label_mask``).

    Only labels the fold may train on enter: test layers and padding have label_mask False
    (``batches``).
    """
    out = {}
    for scale in HEADS:
        g = pool.arrays[scale]
        mask = np.asarray(g.nodes["label_mask"])
        labels = np.asarray(g.nodes["label"], np.float64)[mask]
        out[scale] = labels.mean(0) if len(labels) else np.zeros(labels.shape[1:])
    return out


def init_output_bias(state: TrainState, pool, skip: tuple = ()) -> TrainState:
    """``state`` with each regression head's bias set to the mean training label of its scale.

    Labels are log-normalised (around -5 to -7 for 250 genes), so a zero-initialised bias makes
    the first steps spend the whole network on the constant offset (MSE ~20 at init); starting
    at the mean leaves the network the spatial variation. Optimiser moments start at zero
    whatever the parameter values, so ``opt_state`` stays valid. Scales in ``skip`` keep their
    zero bias (the spot head with ``model.asign.spot_offset="known"`` predicts a deviation).
    """
    params = dict(state.params)
    means = label_means(pool)
    for scale, head in HEADS.items():
        if head not in params or scale in skip:
            continue
        out = dict(params[head]["out"])
        out["bias"] = jnp.asarray(means[scale], out["bias"].dtype)
        params[head] = {**params[head], "out": out}
    return state.replace(params=params)


def init_image_skip(state: TrainState, pool, relative: bool, fit: str = "all"
                    ) -> tuple[TrainState, float]:
    """``state`` with the linear image path (``model.asign.image_skip``) at the ridge fit of the
    pool's usable spot labels (``label_mask``: never a test layer) on their features.
    ``fit="held_out"`` (``model.asign.skip_fit``) uses only the held-out samples' known layers.

    The targets are the labels minus each sample's mean labelled profile when ``relative``
    (``model.asign.spot_offset="known"``: the model adds the known spots' mean itself), else the
    labels minus their pooled mean (the spot head's bias holds it). The penalty is chosen by
    leave-one-sample-out CV (``references.ridge_fit``). Returns (state, relative penalty).
    """
    g = pool.arrays["spot"]
    mask = np.asarray(g.nodes["label_mask"])
    feats = np.asarray(g.nodes["feat"], np.float64)
    labels = np.asarray(g.nodes["label"], np.float64)
    xs, ys, groups = [], [], []
    check_choice("model.asign.skip_fit", fit)
    for i in range(len(pool)):
        m = mask[i]
        if not m.any() or (fit == "held_out" and pool.roles[i] == "train"):
            continue
        y = labels[i][m]
        xs.append(feats[i][m])
        ys.append(y - y.mean(0) if relative else y)
        groups.append(np.full(int(m.sum()), i))
    if not xs:
        raise ConfigError(f"model.asign.skip_fit={fit!r}: no labelled spot to fit the linear image "
                          "path on (held_out needs a held-out sample with a known layer; "
                          "use 'all')")
    w, mx, _, penalty = references.ridge_fit(np.concatenate(xs), np.concatenate(ys),
                                             groups=np.concatenate(groups))
    params = dict(state.params)
    skip = dict(params["image_skip"])
    skip["kernel"] = jnp.asarray(w, skip["kernel"].dtype)
    skip["bias"] = jnp.asarray(-(mx @ w), skip["bias"].dtype)
    params["image_skip"] = skip
    return state.replace(params=params), penalty


def fold_rng(seed: int, fold_index: int) -> jax.Array:
    """The key of a fold; split into (init key, step key); steps fold their number into the latter."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), fold_index)


def _log_line(log_path: Optional[Path], rec: dict) -> None:
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(json.dumps(atomic.json_safe(rec)) + "\n")


def train_fold(config, model, loss_fn: Callable, pool, fold_index: int, ckpt_dir: Path,
               log_path: Optional[Path], *, mesh=None, stop_after: Optional[int] = None,
               progress: bool = True, validate: Optional[Callable] = None
               ) -> Optional[TrainState]:
    """Trains one fold for ``config.train.steps`` steps, resuming from ``ckpt_dir`` if possible.

    With ``validate`` (``training.selection.Validator``: params -> Validation) the fold's
    validation role is scored every ``train.val_every`` steps and at the last step; each pass
    is a ``"split": "val"`` line of metrics.jsonl. The step to keep is chosen there
    (``train.select``: the best validation score, ties to the earlier step, or the last step)
    and its params (blend refit on validation when configured) are written by
    ``selection.save_selected``. A relaunch recomputes the lost steps bit-identically, so the
    choice is the one an uninterrupted run makes.

    Args:
      config: full config (train, loss, seed).
      model: flax module (``models.factory.build``).
      loss_fn: its loss (``models.factory.build``).
      pool: ``batches.Pool`` of the fold's training samples.
      fold_index: used for the rng and the log.
      ckpt_dir: orbax directory of this fold (``<workdir>/checkpoints/fold_<k>``).
      log_path: metrics.jsonl (one JSON line per log step: fold, step, loss terms, lr) or None.
      mesh: data-parallel mesh (``sharding.make_mesh``) or None.
      stop_after: simulate an interruption: return None once this many steps are done (after
        pending checkpoint writes finish), without the final checkpoint.
      progress: show a tqdm bar.

    Returns:
      the final TrainState (params on host-accessible devices), or None if stopped early.
    """
    tc = config.train
    total = int(tc.steps)
    init_rng, rng = jax.random.split(fold_rng(int(config.seed), fold_index))
    state = create_train_state(model, tc, pool.example(), init_rng)
    mngr = checkpoint.checkpoint_manager(ckpt_dir)
    state, start = _start(state, mngr, model, pool, tc, fold_index, ckpt_dir)
    if log_path is not None:
        _truncate_log(Path(log_path), fold_index, start)
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    step_fn = make_train_step(model, loss_fn, config, mesh=mesh)
    keep = None if validate is None else _Keeper(validate, log_path, fold_index, ckpt_dir,
                                                 str(tc.select), total, start)
    val_every = int(tc.val_every)
    bar = tqdm(total=total, initial=start, desc=f"fold {fold_index}", disable=not progress,
               dynamic_ncols=True)
    log = _StepLog(log_path, fold_index, make_schedule(tc), int(tc.log_every), total, mngr,
                   ckpt_dir)                  # its clock starts with the steps, as before
    try:
        for step in range(start, total):
            batch = pool.take(pool.step_indices(step, int(tc.samples_per_step)))
            state, metrics = step_fn(state, batch, rng)
            done = step + 1
            log.pending.append(metrics)
            validating = keep is not None and (done == total or
                                               (val_every and done % val_every == 0))
            saving = done % int(tc.checkpoint_every) == 0 and done != total
            stopping = stop_after is not None and done >= stop_after and done != total
            if done % int(tc.log_every) == 0 or done == total or validating or saving or \
                    stopping:
                log.flush(done, bar)
            if validating:
                keep(state, done)
            bar.update(1)
            if saving:
                checkpoint.save(mngr, state)
            if stopping:
                mngr.wait_until_finished()
                logger.info("fold %d: stopped after step %d (stop_after)", fold_index, done)
                return None
        latest = mngr.latest_step()
        if latest is None or latest < int(state.step):
            checkpoint.save(mngr, state)
        mngr.wait_until_finished()
    finally:
        bar.close()
        mngr.close()
    return state


def _start(state, mngr, model, pool, tc, fold_index: int, ckpt_dir: Path):
    """(state, first step): the fold's latest checkpoint, or the fresh ``state`` started from
    the training labels (head bias at the mean label; the model's own ``output_init``, e.g.
    ASIGN's relative spot bias and its image path at the ridge fit)."""
    if mngr.latest_step() is not None:
        try:
            state = checkpoint.restore(mngr, state)
        except BaseException:
            mngr.close()
            raise
        start = int(state.step)
        logger.info("fold %d: resumed from %s at step %d", fold_index, ckpt_dir, start)
        if start > int(tc.steps):
            logger.warning("fold %d: checkpoint step %d is beyond train.steps=%d; using it as is",
                           fold_index, start, int(tc.steps))
        return state, start
    logger.info("fold %d: training from scratch, checkpoints in %s", fold_index, ckpt_dir)
    # the model's own start from the training labels (ASIGN.output_init); a baseline keeps
    # its plain head bias at the mean training label
    init = model.output_init() if hasattr(model, "output_init") else {}
    relative = bool(init.get("relative_spot_bias"))
    if tc.init_output_bias:
        state = init_output_bias(state, pool, ("spot",) if relative else ())
    if init.get("image_skip"):
        state, penalty = init_image_skip(state, pool, relative, init["image_skip"])
        logger.info("fold %d: linear image path at the ridge fit of the training labels "
                    "(relative penalty %g, leave-one-sample-out CV)", fold_index, penalty)
    return state, 0


class _StepLog:
    """The step metrics of a fold: ``pending`` (device arrays not yet fetched) are fetched in
    ONE host sync per ``flush``, checked for a non-finite loss, and their mean is logged at log
    steps. The steps are not waited for one by one (big_vision-style: the host runs ahead and
    the loss is checked at log, validation and checkpoint steps), so a NaN stops the fold at
    the next of those, before any checkpoint or log line of a later step is written."""

    def __init__(self, log_path, fold_index: int, schedule, log_every: int, total: int, mngr,
                 ckpt_dir: Path):
        self.log_path, self.fold_index, self.schedule = log_path, fold_index, schedule
        self.log_every, self.total, self.mngr, self.ckpt_dir = log_every, total, mngr, ckpt_dir
        self.pending: list = []       # metrics of the steps not yet fetched (device arrays)
        self.fetched: list = []       # fetched and checked, not yet in a log line
        self.t0 = time.time()

    def flush(self, done: int, bar) -> None:
        got = jax.device_get(self.pending)
        first = done - len(got) + 1
        for i, m in enumerate(got):
            loss = float(m["loss"])
            if not np.isfinite(loss):
                self.mngr.wait_until_finished()
                terms = ", ".join(f"{k}={float(v):.4g}" for k, v in m.items() if k != "loss")
                kept = self.mngr.latest_step()
                kept = f"checkpoint of step {kept} kept" if kept else "no checkpoint yet"
                raise TrainingError(
                    f"fold {self.fold_index}: training loss is {loss} at step {first + i} "
                    f"({terms}); stopped, {kept} in {self.ckpt_dir}: lower "
                    "train.learning_rate or look for NaN/inf in the inputs")
        self.pending, self.fetched = [], self.fetched + got
        if self.fetched and (done % self.log_every == 0 or done == self.total):
            mean = {k: float(np.mean([m[k] for m in self.fetched])) for k in self.fetched[0]}
            self.fetched = []
            rec = {"fold": self.fold_index, "step": done, **mean,
                   "lr": float(self.schedule(done - 1)), "seconds": round(time.time() - self.t0, 3)}
            _log_line(self.log_path, rec)
            bar.set_postfix(loss=f"{mean['loss']:.4f}")


class _Keeper:
    """Scores the validation role (``validate``: params -> Validation), logs it as a
    ``"split": "val"`` line and keeps the step ``train.select`` chooses (the best score, ties
    to the earlier step, or the last step) with ``selection.save_selected``; a resumed fold
    starts from the score of the step it had kept."""

    def __init__(self, validate, log_path, fold_index: int, ckpt_dir: Path, select: str,
                 total: int, start: int):
        self.validate, self.log_path, self.fold_index = validate, log_path, fold_index
        self.ckpt_dir, self.select, self.total = ckpt_dir, select, total
        prior = selection.load_selected(ckpt_dir) if start else None
        self.best = -np.inf if prior is None else float(prior[1]["score"])

    def __call__(self, state, done: int) -> None:
        v = self.validate(jax.device_get(state.params))
        _log_line(self.log_path, {"fold": self.fold_index, "step": done, "split": "val",
                                  **v.metrics, "score": v.score})
        if (self.select == "last" and done == self.total) or \
                (self.select != "last" and v.score > self.best):
            self.best = v.score
            selection.save_selected(self.ckpt_dir, done, v)
