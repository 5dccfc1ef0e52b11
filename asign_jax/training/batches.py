"""What a training step sees: masked, padded, stacked sample graphs.

Label hygiene is STRUCTURAL. ``mask_sample`` rebuilds the node arrays of a held-out sample:
on every node of a test layer (spot, region AND global graph) "label" is REPLACED by zeros and
"label_mask" set False (np.where on a fresh array, never a multiplication, so a NaN stays
out). Only contract fields are carried (anything else the builder adds is dropped), so no
other node array can smuggle a label in. The pool, the baselines and evaluation's model input
are all built from the masked sample; only the scorer reads the original labels.

Roles (a node whose graph has label_mask False, an image-only section, stays unlabelled):
  "train": a training sample; label_mask True on every real labelled node, known all False.
  "test":  a held-out sample; the known layer keeps its labels (label_mask True there) and
           "known" = its nodes (used at evaluation); the other layers are test layers.
  "val":   a validation sample, masked exactly like "test" (its other layers are scored for
           selection only, never trained on).
A held-out sample may also carry ``hidden`` spots (validation blocks of its known layer,
``folds.Fold.hidden_validation``): their labels are removed like a test layer's, and so are the
labels of every region / global tile that contains one of them (tile labels are sums over
their spots).

A batch is ``{"spot", "region", "global"}`` of ``jraph.GraphsTuple`` padded to the fold's
shared budget (``graph.padding.budget_for``); ``Pool.take`` stacks samples on a leading axis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import jax
import numpy as np

from asign_jax.graph.contract import SCALES
from asign_jax.graph.padding import budget_for, pad_sample, stack_samples
from asign_jax.training import subgraph

logger = logging.getLogger(__name__)

INPUT_FIELDS = ("feat", "tokens", "layer", "xy", "region_idx", "global_idx")
"""Node fields passed through unchanged (images and geometry: available in every layer)."""
LABEL_FIELDS = ("label", "label_mask", "known")
"""Node fields rewritten by ``mask_sample``."""
HELD_OUT_ROLES = ("val", "test")
"""Roles whose sample keeps the labels of its known layer only."""


def graph_dict(sample) -> dict:
    """{"spot", "region", "global"} GraphsTuples of a SampleGraph."""
    return {k: sample.graph(k) for k in SCALES}


def unpadded_nodes(sample, scale: str) -> dict:
    """Node arrays of the first (real) graph of ``scale``: {field: (n_real, ...)}."""
    g = sample.graph(scale)
    n = int(np.asarray(g.n_node)[0])
    return {k: np.asarray(v)[:n] for k, v in g.nodes.items()}


def _mask_nodes(nodes: dict, n_real: int, role: str, known_layer, hidden=None) -> dict:
    layer = np.asarray(nodes["layer"])
    # a node without a label (an image-only section) never gains one
    real = (np.arange(len(layer)) < n_real) & np.asarray(nodes["label_mask"], bool)
    if role == "train":
        keep = real
        known = np.zeros(len(layer), bool)
    elif role in HELD_OUT_ROLES:
        keep = real & (layer == known_layer)
        if hidden is not None:
            keep &= ~hidden
        known = keep.copy()
    else:
        raise ValueError(f"role must be 'train', 'val' or 'test', got {role!r}")
    label = np.asarray(nodes["label"])
    out = {k: nodes[k] for k in INPUT_FIELDS if k in nodes}
    out["label"] = np.where(keep[:, None], label, np.zeros_like(label))
    out["label_mask"] = keep
    out["known"] = known
    return out


def hidden_tiles(sample, hidden_spots: np.ndarray) -> dict:
    """{scale: (n_node,) bool}: the hidden spots and every region / global node containing one.

    ``hidden_spots`` is (n_real_spots,) or (n_spot_nodes,) bool; padded rows are False.
    """
    spot = sample.graph("spot")
    n_s = int(np.asarray(spot.n_node).sum())
    hs = np.zeros(n_s, bool)
    hs[:len(hidden_spots)] = hidden_spots
    out = {"spot": hs}
    for scale, field in (("region", "region_idx"), ("global", "global_idx")):
        m = np.zeros(int(np.asarray(sample.graph(scale).n_node).sum()), bool)
        m[np.asarray(spot.nodes[field])[hs]] = True
        out[scale] = m
    return out


def mask_sample(sample, role: str, known_layer: int | None = None,
                hidden: np.ndarray | None = None):
    """A copy of ``sample`` whose labels are those the given role may use (see module doc).

    Args:
      sample: SampleGraph (unpadded or padded).
      role: "train", "val" or "test".
      known_layer: the known layer of a held-out ("val" / "test") sample.
      hidden: optional (n_spots,) bool, held-out sample only: known-layer spots whose labels
        are removed too (validation blocks), with the tiles that contain them.
    """
    if role in HELD_OUT_ROLES and known_layer is None:
        raise ValueError("mask_sample: a held-out sample needs its known_layer")
    if hidden is not None and role not in HELD_OUT_ROLES:
        raise ValueError("mask_sample: hidden spots need a held-out role ('val' / 'test')")
    hide = hidden_tiles(sample, hidden) if hidden is not None and np.any(hidden) else {}
    new = {}
    for scale in SCALES:
        g = sample.graph(scale)
        dropped = sorted(set(g.nodes) - set(INPUT_FIELDS) - set(LABEL_FIELDS))
        if dropped:
            logger.debug("%s graph: dropping non-contract node fields %s", scale, dropped)
        n_real = int(np.asarray(g.n_node)[0])
        new[scale] = g._replace(nodes=_mask_nodes(g.nodes, n_real, role, known_layer,
                                                  hide.get(scale)))
    return sample.replace_graphs(new)


def fold_view(graph, fold, role: str | None = None, *, with_validation: bool = True):
    """``graph`` masked for its role in ``fold`` (``role`` overrides it: the scorer asks for
    a "test" view of a validation-block sample). ``with_validation=False`` keeps the
    validation blocks of the known layer as known spots (the test-time view)."""
    sid = graph.sample_id
    role = fold.role(sid) if role is None else role
    hidden = None
    if with_validation and role != "train" and sid in fold.val_blocks:
        spot = unpadded_nodes(graph, "spot")
        hidden = fold.hidden_validation(sid, spot["layer"], spot["xy"], spot.get("global_idx"))
    return mask_sample(graph, role, fold.known_layer.get(sid), hidden)


def isolate_hidden(sample, hidden: np.ndarray):
    """A copy of the (unpadded) ``sample`` whose spot graph has no edge between a ``hidden``
    spot and a non-hidden spot of the same layer (``train.val_block_edges = "cut"``).

    Why: a validation block of the known layer otherwise reaches labelled spots of its own
    section one pitch away, which no test spot can (a test layer's spots reach the known layer
    only across sections, through registration). Cut, a block's values arrive through the
    other layers, as a test spot's do, and the network sees no trained neighbour of its own
    section. Region / global graphs are unchanged. hidden: (n_real_spots,) bool.
    """
    g = sample.graph("spot")
    if len(np.asarray(g.n_node)) != 1:
        raise ValueError("isolate_hidden: expects an unpadded sample graph")
    hidden = np.asarray(hidden, bool)
    layer = np.asarray(g.nodes["layer"])
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    keep = ~((layer[s] == layer[r]) & (hidden[s] != hidden[r]))
    g = g._replace(senders=s[keep], receivers=r[keep],
                   edges={k: np.asarray(v)[keep] for k, v in g.edges.items()},
                   n_edge=np.asarray([int(keep.sum())], np.asarray(g.n_edge).dtype))
    return sample.replace_graphs({"spot": g})


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
