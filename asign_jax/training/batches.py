"""What a training step sees: masked, padded, stacked sample graphs (the masking by role
is ``graph/roles.py``).

A batch is ``{"spot", "region", "global"}`` of ``jraph.GraphsTuple`` padded to the fold's
shared budget (``graph.padding.budget_for``); ``Pool.take`` stacks samples on a leading axis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import jax
import numpy as np

from asign_jax.graph.padding import budget_for, pad_sample, stack_samples
from asign_jax.graph.roles import fold_view, graph_dict
from asign_jax.training import subgraph

logger = logging.getLogger(__name__)


def model_extra(sample: dict) -> dict:
    """``{"extra": ...}`` when a (padded) sample carries per-model inputs
    (``training.model_inputs``), else {}: a model without ``inputs()`` keeps the plain
    ``model(spot, region, glob, known, train=...)`` call."""
    return {"extra": sample["extra"]} if "extra" in sample else {}


def _pad(sample, budget) -> dict:
    return graph_dict(pad_sample(sample, budget))


@dataclasses.dataclass
class Pool:
    """The training samples of one fold, masked, padded to one budget and stacked.

    Attributes:
      sample_ids: (P,) ids in pool order (sorted).
      roles: (P,) "train" / "val" / "test" (a held-out sample enters with only its known layer).
      arrays: {"spot", "region", "global"} GraphsTuples of numpy arrays, leading axis P, and
        "extra" (the model's own inputs, ``training.model_inputs.attach``) when it has any.
      budget: the padding budget (graph.padding.budget_for) shared by every sample.
      seed: sample-order seed.
      tiled: True when some sample entered as spatial tiles ("<sample>#<k>" ids).
    """

    sample_ids: tuple
    roles: tuple
    arrays: dict
    budget: object
    seed: int
    tiled: bool = False

    def __len__(self) -> int:
        return len(self.sample_ids)

    def take(self, idx: np.ndarray) -> dict:
        """Batch of the samples ``idx`` (S,) -> leaves with leading axis S (numpy)."""
        idx = np.asarray(idx)
        return jax.tree.map(lambda a: a[idx], self.arrays)

    def example(self) -> dict:
        """One padded sample, no leading axis (for model.init)."""
        return jax.tree.map(lambda a: a[0], self.arrays)

    def step_indices(self, step: int, samples_per_step: int) -> np.ndarray:
        """The pool indices of training step ``step`` (a pure function of seed and step).

        Positions step*S ... step*S+S-1 of an endless sequence of epochs; epoch e is the
        permutation ``default_rng([seed, e]).permutation(P)``. A pool smaller than S repeats
        samples within a step.
        """
        n = len(self)
        pos = np.arange(step * samples_per_step, (step + 1) * samples_per_step)
        out = np.empty(len(pos), np.int64)
        for e in np.unique(pos // n):
            perm = np.random.default_rng([self.seed, int(e)]).permutation(n)
            sel = pos // n == e
            out[sel] = perm[pos[sel] % n]
        return out

    def pad(self, sample) -> dict:
        """Pads one (masked) SampleGraph to the pool's budget -> {"spot", "region", "global"},
        plus its row of the per-model inputs ("extra", ``training.model_inputs``) if any."""
        out = _pad(sample, self.budget)
        if "extra" in self.arrays:
            i = self.sample_ids.index(sample.sample_id)
            out["extra"] = jax.tree.map(lambda a: a[i], self.arrays["extra"])
        return out


def build_pool(graphs: Mapping[str, object], fold, seed: int, *, max_nodes: int = 0,
               halo: int = 0) -> Pool:
    """The masked training pool of ``fold``: its training samples + its held-out samples.

    The padding budget covers every sample of the fold (training and held-out), so evaluation
    uses the same shapes. With ``max_nodes`` > 0, a sample with more spots than that is cut
    into spatial tiles with a ``halo``-hop halo (``training.subgraph``; halo labels hidden),
    each tile an item of the pool; the budget then covers the tiles (``Pool.tiled``).
    """
    ids, roles, masked = [], [], []
    for sid in sorted(set(fold.train_samples) | set(fold.val_samples) | set(fold.test_samples)):
        role = fold.role(sid)
        m = fold_view(graphs[sid], fold)
        n_spot = int(np.asarray(m.spot.n_node)[0])
        if max_nodes and n_spot > max_nodes:
            for t in subgraph.tile_sample(m, max_nodes, halo, hide_halo_labels=True):
                ids.append(t.graph.sample_id)
                roles.append(role)
                masked.append(t.graph)
        else:
            ids.append(sid)
            roles.append(role)
            masked.append(m)
    budget = budget_for(masked)
    arrays = stack_samples([pad_sample(m, budget) for m in masked])
    logger.info("pool: %s, padded to %s", ", ".join(f"{s} ({r})" for s, r in zip(ids, roles)),
                budget)
    return Pool(sample_ids=tuple(ids), roles=tuple(roles), arrays=arrays, budget=budget,
                seed=int(seed), tiled=any("#" in i for i in ids))
