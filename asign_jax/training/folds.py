"""Sample-level cross-validation folds.

A fold holds out one or more 3D samples. Of every held-out sample ONE layer (the "known"
layer) keeps its labels and joins training; its other layers are the test sections. Every
other sample (and every sample in ``config.train.extra_train_samples``) is a training sample
with all layers labelled.

Validation (what early stopping, checkpoint choice, the eq.-6 blend and sweeps may read; test
labels are read once, for the final scores). Three designs, by dataset:

* validation samples (``config.train.val_samples``; the synthetic generator's own-seed blocks):
  held out in EVERY fold exactly like a test sample (known layer labelled and trained on, other
  layers hidden); their hidden layers are scored. They are never a test sample.
* an inner split (``config.train.inner_val`` = n > 0; K-fold datasets): in each fold, n of the
  fold's 3D training samples (rotating with the fold index) become validation samples of that
  fold, masked like a test sample.
* held-out blocks of the known layer (``config.train.val_known_fraction`` > 0; the shared
  HER2ST subset, whose only 3D sample is the test sample): about that fraction of the known
  layer of each test sample, in square blocks of ``val_block_px`` px or in whole global tiles
  (``val_block_unit``), is hidden from training (spot labels and every region/global tile that
  contains such a spot) and scored with the rest of the known layer as the CLI's known set;
  with ``val_block_edges="cut"`` the scored view also drops the spot-graph edges between a
  block and the rest of its section, so a block is reached only through the other layers, as
  a test spot is. Only known-layer labels are read; never a
  test layer, never a second layer of the held-out sample (that would make it a two-layer
  problem). At test time the whole known layer is the known set, as the setting gives it.

``config.train.folds``: tuple of tuples of held-out sample ids; ``()`` = leave one sample out
for each sample with >= 2 layers (in sorted id order) that is not a validation sample. ``config.train.known_layer`` picks the
known layer (negative values count from the end). With ``config.train.rotate_known_layer``
every fold is repeated once per layer, the known layer being layer ``r % n_layers`` of each
held-out sample in repetition ``r`` (a separate model is trained for each: the known layer is
training data).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Mapping, Sequence

import numpy as np

from asign_jax.config import check_choice
from asign_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Fold:
    """One train/evaluate split.

    Attributes:
      index: position in the fold list (names ``checkpoints/fold_<index>``).
      test_samples: held-out sample ids (each has a known layer and >= 1 test layer).
      train_samples: fully labelled training sample ids.
      known_layer: {held-out (test or validation) sample id: index of its known layer}.
      val_samples: validation sample ids (held out like test samples; selection reads them).
      val_blocks: held-out (test) samples whose known layer holds a validation block.
      val_block_fraction, val_block_px, val_block_unit, val_seed: the block design
        (``hidden_validation``).
      val_block_edges: "cut": the validation view drops the spot-graph edges between a block
        and the rest of its section (``roles.isolate_hidden``); "keep": it does not.
    """

    index: int
    test_samples: tuple[str, ...]
    train_samples: tuple[str, ...]
    known_layer: Mapping[str, int]
    val_samples: tuple[str, ...] = ()
    val_blocks: tuple[str, ...] = ()
    val_block_fraction: float = 0.0
    val_block_px: float = 500.0
    val_block_unit: str = "px"
    val_block_edges: str = "keep"
    val_seed: int = 0

    @property
    def name(self) -> str:
        return f"fold_{self.index}"

    def role(self, sample_id: str) -> str:
        """"test" (held out), "val" (validation), "train" or "unused"."""
        if sample_id in self.test_samples:
            return "test"
        if sample_id in self.val_samples:
            return "val"
        return "train" if sample_id in self.train_samples else "unused"

    def samples_of(self, role: str) -> tuple[str, ...]:
        """The sample ids of ``role`` ("test", "val" or "train"); "val" includes the samples
        whose known layer holds a validation block."""
        return {"test": self.test_samples, "val": self.val_samples + self.val_blocks,
                "train": self.train_samples}[role]

    @property
    def has_validation(self) -> bool:
        return bool(self.val_samples or self.val_blocks)

    def hidden_validation(self, sample_id: str, layer: np.ndarray, xy: np.ndarray,
                          tiles: np.ndarray | None = None) -> np.ndarray:
        """(N,) bool: the spots of ``sample_id``'s known layer held out as validation blocks.

        All False unless ``sample_id`` is in ``val_blocks``. The known layer's spots are
        grouped into cells: square cells of ``val_block_px`` px of the registered frame
        (``val_block_unit="px"``), or the section's global tiles (``"global_tile"``: ``tiles``
        (N,) = the spots' ``global_idx``, so no training spot shares a region or global tile,
        nor its image context, with a validation spot). Cells are taken in a random order
        (seeded by ``val_seed`` and the sample id, so the blocks are the same in every fold and
        every relaunch) until at least ``val_block_fraction`` of the layer's spots are hidden,
        never all of them. A pure function of the spot nodes: training (``batches``) and
        scoring compute the same blocks.
        """
        layer = np.asarray(layer)
        hidden = np.zeros(len(layer), bool)
        if sample_id not in self.val_blocks or self.val_block_fraction <= 0:
            return hidden
        idx = np.flatnonzero(layer == self.known_layer[sample_id])
        if len(idx) < 2:
            return hidden
        if self.val_block_unit == "global_tile":
            if tiles is None:
                raise ValueError("hidden_validation: val_block_unit='global_tile' needs the "
                                 "spots' global_idx (tiles)")
            cell = np.asarray(tiles, np.int64)[idx][:, None]
        else:
            pts = np.asarray(xy, np.float64)[idx]
            cell = np.floor((pts - pts.min(0)) / float(self.val_block_px)).astype(np.int64)
        _, cell_id = np.unique(cell, axis=0, return_inverse=True)
        cell_id = cell_id.ravel()
        rng = np.random.default_rng([int(self.val_seed), zlib.crc32(sample_id.encode())])
        target = int(np.ceil(self.val_block_fraction * len(idx)))
        taken = 0
        for c in rng.permutation(cell_id.max() + 1):
            members = cell_id == c
            if taken + members.sum() >= len(idx):
                continue                              # keep at least one known spot
            hidden[idx[members]] = True
            taken += int(members.sum())
            if taken >= target:
                break
        return hidden

    def describe(self) -> str:
        held = lambda ids: ", ".join(f"{s} (known layer {self.known_layer[s]})" for s in ids)
        parts = []
        if self.val_samples:
            parts.append(held(self.val_samples))
        if self.val_blocks:
            unit = ("global tiles" if self.val_block_unit == "global_tile"
                    else f"{self.val_block_px:.0f} px blocks")
            cut = ", in-section edges to them cut" if self.val_block_edges == "cut" else ""
            parts.append(", ".join(f"{self.val_block_fraction:.0%} of the known layer of {s} "
                                   f"({unit}{cut})" for s in self.val_blocks))
        val = f"; validate on {'; '.join(parts)}" if parts else "; no validation"
        return (f"{self.name}: held out {held(self.test_samples)}{val}; "
                f"train on {', '.join(self.train_samples) or '-'}")


def make_folds(train_cfg, n_layers: Mapping[str, int], seed: int = 0) -> list[Fold]:
    """Builds the folds.

    Args:
      train_cfg: ``config.train`` (folds, extra_train_samples, val_samples, inner_val,
        val_known_fraction, val_block_px, known_layer, rotate_known_layer).
      n_layers: {sample id: number of sections} of every prepared sample.
      seed: seeds the validation blocks of the known layer (``Fold.hidden_validation``).

    Returns:
      the folds, in config order (then rotation order).

    Raises:
      ConfigError: unknown sample ids, a held-out sample with < 2 layers, a sample held out
        twice in one fold, a held-out sample listed as extra training sample, a validation
        sample that is also a test sample, an inner split with no 3D training sample left to
        take, or a known layer outside a sample's layers.
    """
    samples = sorted(n_layers)
    extra, val, inner, frac, unit, edges = _check_roles(train_cfg, n_layers)
    folds: list[Fold] = []
    for fi, held in enumerate(_held_out_sets(train_cfg, n_layers, extra, val)):
        train = tuple(s for s in samples if s not in held and s not in val)
        fold_val = val
        if inner:
            cand = [s for s in train if n_layers[s] >= 2 and s not in extra]
            if len(cand) < inner:
                raise ConfigError(f"train.inner_val={inner}: fold {tuple(held)} has only "
                                  f"{len(cand)} 3D training sample(s) ({cand}) to validate on")
            fold_val = tuple(sorted(cand[(fi + j) % len(cand)] for j in range(inner)))
            train = tuple(s for s in train if s not in fold_val)
        for known in _known_sets(train_cfg, n_layers, held, tuple(held) + fold_val):
            folds.append(Fold(index=len(folds), test_samples=tuple(held), train_samples=train,
                              known_layer=dict(known), val_samples=fold_val,
                              val_blocks=tuple(held) if frac > 0 else (),
                              val_block_fraction=frac,
                              val_block_px=float(train_cfg.val_block_px),
                              val_block_unit=unit, val_block_edges=edges, val_seed=int(seed)))
    return folds


def _check_roles(train_cfg, n_layers: Mapping[str, int]) -> tuple:
    """(extra, val, inner, val_known_fraction, val_block_unit, val_block_edges) of
    ``train_cfg``, checked against the prepared samples (``make_folds``'s Raises)."""
    samples = sorted(n_layers)
    extra = tuple(str(s) for s in train_cfg.extra_train_samples)
    for s in extra:
        if s not in n_layers:
            raise ConfigError(f"train.extra_train_samples: unknown sample {s!r}; prepared: {samples}")
    val = tuple(str(s) for s in train_cfg.val_samples)
    for s in val:
        if s not in n_layers:
            raise ConfigError(f"train.val_samples: unknown sample {s!r}; prepared: {samples}")
        if s in extra:
            raise ConfigError(f"train.val_samples: {s!r} is also in train.extra_train_samples")
        if n_layers[s] < 2:
            raise ConfigError(f"train.val_samples: sample {s!r} has {n_layers[s]} layer(s); "
                              "a validation sample needs a known layer and >= 1 hidden layer")
    inner = int(train_cfg.inner_val)
    if inner < 0:
        raise ConfigError(f"train.inner_val must be >= 0, got {inner}")
    if inner and val:
        raise ConfigError("train.inner_val and train.val_samples are alternatives; set one")
    frac = float(train_cfg.val_known_fraction)
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"train.val_known_fraction must be in [0, 1), got {frac}")
    if frac and float(train_cfg.val_block_px) <= 0:
        raise ConfigError(f"train.val_block_px must be > 0, got {train_cfg.val_block_px}")
    unit = check_choice("train.val_block_unit", str(train_cfg.val_block_unit))
    edges = check_choice("train.val_block_edges", str(train_cfg.val_block_edges))
    return extra, val, inner, frac, unit, edges


def _held_out_sets(train_cfg, n_layers: Mapping[str, int], extra: tuple,
                   val: tuple) -> Sequence[Sequence[str]]:
    """The held-out (test) samples of each fold: ``train.folds``, or every 3D sample that is
    neither an extra training nor a validation sample, one per fold; checked."""
    samples = sorted(n_layers)
    folds_cfg = tuple(tuple(str(s) for s in f) for f in train_cfg.folds)
    if not folds_cfg:
        folds_cfg = tuple((s,) for s in samples
                          if n_layers[s] >= 2 and s not in extra and s not in val)
        if not folds_cfg:
            raise ConfigError(f"no sample has >= 2 layers to hold out (layers: {dict(n_layers)})")
    for f in folds_cfg:
        if not f:
            raise ConfigError("train.folds: an empty fold")
        if len(set(f)) != len(f):
            raise ConfigError(f"train.folds: fold {f} lists a sample twice")
        for s in f:
            if s not in n_layers:
                raise ConfigError(f"train.folds: unknown sample {s!r}; prepared: {samples}")
            if s in extra:
                raise ConfigError(f"train.folds: {s!r} is also in train.extra_train_samples")
            if s in val:
                raise ConfigError(f"train.folds: {s!r} is also in train.val_samples (validation "
                                  "samples are never test samples)")
            if n_layers[s] < 2:
                raise ConfigError(f"train.folds: sample {s!r} has {n_layers[s]} layer(s); "
                                  "a held-out sample needs a known layer and >= 1 test layer")
    return folds_cfg


def _known_sets(train_cfg, n_layers: Mapping[str, int], held, held_out: tuple) -> list[dict]:
    """The known layer of every held-out (test and validation) sample, per fold copy: one set
    (``train.known_layer``), or one per rotation (``train.rotate_known_layer``)."""
    if train_cfg.rotate_known_layer:
        rotations = range(max(n_layers[s] for s in held))
        return [{s: r % n_layers[s] for s in held_out} for r in rotations]
    k = int(train_cfg.known_layer)
    known = {}
    for s in held_out:
        if not -n_layers[s] <= k < n_layers[s]:
            raise ConfigError(f"train.known_layer={k}: sample {s!r} has {n_layers[s]} layers")
        known[s] = k % n_layers[s]
    return [known]
