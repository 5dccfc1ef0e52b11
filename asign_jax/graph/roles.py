"""A sample graph masked for its role in a fold: what training, selection and scoring may see.

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
"""

from __future__ import annotations

import logging

import numpy as np

from asign_jax.graph.contract import SCALES

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
