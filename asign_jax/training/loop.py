"""Pure train / eval steps and the per-fold training loop (resumable, checkpointed).

A batch is ``{"spot", "region", "global"}`` of padded ``jraph.GraphsTuple`` whose leaves carry
a leading sample axis S (``batches.Pool.take``); the model is vmapped over it and the loss is
the mean of the per-sample losses (every sample weighs the same, whatever its size).

Spot loss and the CLI ("known") input. In every training step a random ``known_fraction`` of
each sample's LABELLED spots is marked known (drawn from the step rng; exactly
round(fraction x n_labelled) spots). Known spots feed the CLI (their labels are its input); the
spot loss is over the labelled spots that are NOT known this step, so the model is trained to
impute, not to copy an input. Region / global PCC terms use those graphs' label_mask. Labels of
test layers never reach this function: they are zeros with label_mask False (``batches``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from asign_jax.training.state import TrainState, create_train_state, make_schedule

logger = logging.getLogger(__name__)


def _default_loss():
    from asign_jax.losses import asign_loss
    return asign_loss


def draw_known(rng: jax.Array, label_mask: jax.Array, fraction: float) -> jax.Array:
    """(N,) bool: exactly round(fraction x #labelled) of the labelled nodes, uniformly at random."""
    n_known = jnp.round(fraction * label_mask.sum()).astype(jnp.int32)
    scores = jnp.where(label_mask, jax.random.uniform(rng, label_mask.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))
    return label_mask & (rank < n_known)


def draw_known_layer(rng: jax.Array, label_mask: jax.Array, layer: jax.Array,
                     fraction: float) -> jax.Array:
    """(N,) bool: every labelled node of ONE labelled layer drawn uniformly at random.

    This mimics evaluation (one whole known layer, the rest imputed). A sample with fewer than
    two labelled layers (a 2D section, or a held-out sample with only its known layer) falls
    back to ``draw_known(fraction)``, so it still has unknown spots to learn from.
    """
    n = label_mask.shape[0]
    lay = jnp.where(label_mask, layer, 0).astype(jnp.int32)
    present = jax.ops.segment_max(label_mask.astype(jnp.int32), lay, n) > 0     # per layer id
    n_present = present.sum()
    pick_rng, frac_rng = jax.random.split(rng)
    k = jax.random.randint(pick_rng, (), 0, jnp.maximum(n_present, 1))
    chosen = jnp.argmax(jnp.cumsum(present) > k)                  # the (k+1)-th present layer
    return jnp.where(n_present >= 2, label_mask & (lay == chosen),
                     draw_known(frac_rng, label_mask, fraction))


def _with_known(graph, known):
    return graph._replace(nodes={**graph.nodes, "known": known})


def sample_loss(params, sample: dict, rng: jax.Array, *, model, loss_cfg, known_fraction: float,
                loss_fn: Optional[Callable] = None, known_mode: str = "fraction"):
    """Loss of ONE sample (no leading axis) with a freshly drawn known set; returns (loss, terms).

    known_mode: "fraction" (``draw_known``, the paper's 20% of labelled spots) or "layer"
    (``draw_known_layer``: one whole labelled layer, as at evaluation).
    """
    loss_fn = loss_fn or _default_loss()
    known_rng, dropout_rng = jax.random.split(rng)
    spot, region, glob = sample["spot"], sample["region"], sample["global"]
    spot_labelled = spot.nodes["label_mask"]
    if known_mode == "layer":
        known = draw_known_layer(known_rng, spot_labelled, spot.nodes["layer"], known_fraction)
    elif known_mode == "fraction":
        known = draw_known(known_rng, spot_labelled, known_fraction)
    else:
        raise ValueError(f"train.known_mode must be 'fraction' or 'layer', got {known_mode!r}")
    spot = _with_known(spot, known)
    out = model.apply({"params": params}, spot, region, glob, known, train=True,
                      rngs={"dropout": dropout_rng})
    return loss_fn(out, spot, region, glob, spot_labelled & ~known,
                   region.nodes["label_mask"], glob.nodes["label_mask"], loss_cfg)


def batch_loss(params, batch: dict, rng: jax.Array, **kw):
    """Mean over the S samples of ``batch`` of ``sample_loss``; returns (loss, {term: mean})."""
    n = jax.tree.leaves(batch)[0].shape[0]
    rngs = jax.random.split(rng, n)
    losses, terms = jax.vmap(lambda s, r: sample_loss(params, s, r, **kw))(batch, rngs)
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    return jnp.mean(losses), terms


def loss_and_grads(params, batch: dict, rng: jax.Array, **kw):
    """((loss, terms), grads) of ``batch_loss`` w.r.t. params."""
    return jax.value_and_grad(functools.partial(batch_loss, **kw), has_aux=True)(params, batch, rng)


def train_step(state: TrainState, batch: dict, rng: jax.Array, **kw):
    """One optimiser step. The step's rng is ``fold_in(rng, state.step)``.

    Args:
      state: TrainState (replicated).
      batch: {"spot", "region", "global"} stacked GraphsTuples, leading axis S.
      rng: the fold's base key.
      **kw: model, loss_cfg, known_fraction (bound with functools.partial before jit).

    Returns:
      (new state, {"loss": scalar, **loss terms}).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, terms), grads = loss_and_grads(state.params, batch, step_rng, **kw)
    state = state.apply_gradients(grads=grads)
    return state, {**terms, "loss": loss}


def eval_step(params, sample: dict, *, model) -> dict:
    """Deterministic forward pass of ONE sample (no leading axis); known = nodes["known"].

    Returns the model's output dict ("spot": (Ns, G) final prediction p'_s, ...).
    """
    spot = sample["spot"]
    return model.apply({"params": params}, spot, sample["region"], sample["global"],
                       spot.nodes["known"], train=False)


_JIT_CACHE: dict = {}


def _cached(key, build):
    """Process-wide memo of jitted functions, so folds / relaunches reuse one compilation.

    Keys hold ``id()`` of the model; the value keeps a reference to it (ids are never reused
    while the entry lives).
    """
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = build()
    return _JIT_CACHE[key][0]


def make_train_step(model, config, *, mesh=None, loss_fn: Optional[Callable] = None):
    """The jitted train step ``(state, batch, rng) -> (state, metrics)`` (memoised).

    With a ``mesh`` (``sharding.make_mesh``) the batch is sharded over its "data" axis and the
    state replicated (``sharding.shard_train_step``); without, a plain ``jax.jit``.
    """
    fraction = float(config.train.known_fraction)
    mode = str(config.train.get("known_mode", "fraction"))
    key = ("train", id(model), id(loss_fn), fraction, mode, config.loss.to_json(),
           None if mesh is None else (tuple(d.id for d in mesh.devices.flat), mesh.axis_names))

    def build():
        step = functools.partial(train_step, model=model, loss_cfg=config.loss,
                                 known_fraction=fraction, loss_fn=loss_fn, known_mode=mode)
        if mesh is None:
            fn = jax.jit(step, donate_argnums=0)
        else:
            from asign_jax.training.sharding import shard_train_step
            fn = shard_train_step(step, mesh)
        return fn, model, loss_fn

    return _cached(key, build)


def make_eval_fn(model) -> Callable:
    """Jitted ``(params, sample) -> output dict`` of ``eval_step`` (memoised per model)."""
    return _cached(("eval", id(model)),
                   lambda: (jax.jit(functools.partial(eval_step, model=model)), model))


# ---- checkpoints ----------------------------------------------------------------------------

def checkpoint_manager(directory: Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager for one fold (atomic saves; keeps the latest ``max_to_keep`` steps)."""
    return ocp.CheckpointManager(Path(directory).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                      create=True))


def _ckpt_tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def save_checkpoint(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    tree = jax.device_get(_ckpt_tree(state))
    mngr.save(int(tree["step"]), args=ocp.args.StandardSave(tree))


def restore_checkpoint(mngr: ocp.CheckpointManager, state: TrainState,
                       step: Optional[int] = None) -> TrainState:
    """``state`` with params / opt_state / step of checkpoint ``step`` (default: the latest)."""
    step = mngr.latest_step() if step is None else step
    target = jax.device_get(_ckpt_tree(state))
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return state.replace(params=tree["params"], opt_state=tree["opt_state"],
                         step=jnp.asarray(tree["step"], jnp.int32))


# ---- metrics log ----------------------------------------------------------------------------

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
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    tmp.replace(path)


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


def init_output_bias(state: TrainState, pool) -> TrainState:
    """``state`` with each regression head's bias set to the mean training label of its scale.

    Labels are log-normalised (around -5 to -7 for 250 genes), so a zero-initialised bias makes
    the first steps spend the whole network on the constant offset (MSE ~20 at init); starting
    at the mean leaves the network the spatial variation. Optimiser moments start at zero
    whatever the parameter values, so ``opt_state`` stays valid.
    """
    params = dict(state.params)
    means = label_means(pool)
    for scale, head in HEADS.items():
        if head not in params:
            continue
        out = dict(params[head]["out"])
        out["bias"] = jnp.asarray(means[scale], out["bias"].dtype)
        params[head] = {**params[head], "out": out}
    return state.replace(params=params)


def fold_rng(seed: int, fold_index: int) -> jax.Array:
    """The key of a fold; split into (init key, step key); steps fold their number into the latter."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), fold_index)


def train_fold(config, model, pool, fold_index: int, ckpt_dir: Path, log_path: Optional[Path],
               *, mesh=None, loss_fn: Optional[Callable] = None,
               stop_after: Optional[int] = None, progress: bool = True) -> Optional[TrainState]:
    """Trains one fold for ``config.train.steps`` steps, resuming from ``ckpt_dir`` if possible.

    Args:
      config: full config (train, loss, seed).
      model: flax module.
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
    mngr = checkpoint_manager(ckpt_dir)
    start = 0
    if mngr.latest_step() is not None:
        state = restore_checkpoint(mngr, state)
        start = int(state.step)
        logger.info("fold %d: resumed from %s at step %d", fold_index, ckpt_dir, start)
        if start > total:
            logger.warning("fold %d: checkpoint step %d is beyond train.steps=%d; using it as is",
                           fold_index, start, total)
    else:
        logger.info("fold %d: training from scratch, checkpoints in %s", fold_index, ckpt_dir)
        if tc.get("init_output_bias", True):
            state = init_output_bias(state, pool)
    if log_path is not None:
        _truncate_log(Path(log_path), fold_index, start)
    if mesh is not None:
        from asign_jax.training.sharding import replicate
        state = replicate(state, mesh)
    step_fn = make_train_step(model, config, mesh=mesh, loss_fn=loss_fn)
    schedule = make_schedule(tc)

    pending: list = []
    bar = tqdm(total=total, initial=start, desc=f"fold {fold_index}", disable=not progress,
               dynamic_ncols=True)
    t0 = time.time()
    try:
        for step in range(start, total):
            batch = pool.take(pool.step_indices(step, int(tc.samples_per_step)))
            state, metrics = step_fn(state, batch, rng)
            # wait for the step so the bar's rate is the real one (batches are assembled on
            # the host in ~1 ms, so little overlap is lost)
            jax.block_until_ready(metrics["loss"])
            pending.append(metrics)
            done = step + 1
            if done % int(tc.log_every) == 0 or done == total:
                mean = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
                pending = []
                rec = {"fold": fold_index, "step": done, **mean, "lr": float(schedule(step)),
                       "seconds": round(time.time() - t0, 3)}
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{mean['loss']:.4f}")
            bar.update(1)
            if done % int(tc.checkpoint_every) == 0 and done != total:
                save_checkpoint(mngr, state)
            if stop_after is not None and done >= stop_after and done != total:
                mngr.wait_until_finished()
                logger.info("fold %d: stopped after step %d (stop_after)", fold_index, done)
                return None
        latest = mngr.latest_step()
        if latest is None or latest < int(state.step):
            save_checkpoint(mngr, state)
        mngr.wait_until_finished()
    finally:
        bar.close()
        mngr.close()
    return state


def restore_params(config, model, pool, ckpt_dir: Path, step: Optional[int] = None,
                   return_step: bool = False):
    """Params of the latest (or given) checkpoint of a fold (and its step if ``return_step``)."""
    state = create_train_state(model, config.train, pool.example(), jax.random.PRNGKey(0))
    mngr = checkpoint_manager(ckpt_dir)
    try:
        if mngr.latest_step() is None:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint")
        restored = restore_checkpoint(mngr, state, step)
        return (restored.params, int(restored.step)) if return_step else restored.params
    finally:
        mngr.close()
