"""Sample-level cross-validation folds.

A fold holds out one or more 3D samples. Of every held-out sample ONE layer (the "known"
layer) keeps its labels and joins training; its other layers are the test sections. Every
other sample (and every sample in ``config.train.extra_train_samples``) is a training sample
with all layers labelled.

Validation samples (``config.train.val_samples``) are held out in EVERY fold exactly like a
test sample (known layer labelled and trained on, other layers hidden), but their hidden layers
are what selection (early stopping, checkpoint, sweeps) may read; they are never a test sample.
Test labels are read once, for the final scores.

``config.train.folds``: tuple of tuples of held-out sample ids; ``()`` = leave one sample out
for each sample with >= 2 layers (in sorted id order) that is not a validation sample. ``config.train.known_layer`` picks the
known layer (negative values count from the end). With ``config.train.rotate_known_layer``
every fold is repeated once per layer, the known layer being layer ``r % n_layers`` of each
held-out sample in repetition ``r`` (a separate model is trained for each: the known layer is
training data).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

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
    """

    index: int
    test_samples: tuple[str, ...]
    train_samples: tuple[str, ...]
    known_layer: Mapping[str, int]
    val_samples: tuple[str, ...] = ()

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
        """The sample ids of ``role`` ("test", "val" or "train")."""
        return {"test": self.test_samples, "val": self.val_samples,
                "train": self.train_samples}[role]

    def describe(self) -> str:
        held = lambda ids: ", ".join(f"{s} (known layer {self.known_layer[s]})" for s in ids)
        val = f"; validate on {held(self.val_samples)}" if self.val_samples else ""
        return (f"{self.name}: held out {held(self.test_samples)}{val}; "
                f"train on {', '.join(self.train_samples) or '-'}")


def make_folds(train_cfg, n_layers: Mapping[str, int]) -> list[Fold]:
    """Builds the folds.

    Args:
      train_cfg: ``config.train`` (folds, extra_train_samples, val_samples, known_layer,
        rotate_known_layer).
      n_layers: {sample id: number of sections} of every prepared sample.

    Returns:
      the folds, in config order (then rotation order).

    Raises:
      ConfigError: unknown sample ids, a held-out sample with < 2 layers, a sample held out
        twice in one fold, a held-out sample listed as extra training sample, or a known layer
        outside a sample's layers.
    """
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
    folds_cfg: Sequence[Sequence[str]] = tuple(tuple(str(s) for s in f) for f in train_cfg.folds)
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

    folds: list[Fold] = []
    for held in folds_cfg:
        train = tuple(s for s in samples if s not in held and s not in val)
        held_out = tuple(held) + val
        if train_cfg.rotate_known_layer:
            rotations = range(max(n_layers[s] for s in held))
            known_sets = [{s: r % n_layers[s] for s in held_out} for r in rotations]
        else:
            k = int(train_cfg.known_layer)
            known = {}
            for s in held_out:
                if not -n_layers[s] <= k < n_layers[s]:
                    raise ConfigError(f"train.known_layer={k}: sample {s!r} has {n_layers[s]} layers")
                known[s] = k % n_layers[s]
            known_sets = [known]
        for known in known_sets:
            folds.append(Fold(index=len(folds), test_samples=tuple(held), train_samples=train,
                              known_layer=dict(known), val_samples=val))
    return folds
