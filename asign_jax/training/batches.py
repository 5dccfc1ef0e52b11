"""What a training step sees: masked, padded, stacked sample graphs.

Label hygiene is STRUCTURAL. ``mask_sample`` rebuilds the node arrays of a held-out sample:
on every node of a test layer (spot, region AND global graph) "label" is REPLACED by zeros and
"label_mask" set False (np.where on a fresh array, never a multiplication, so a NaN stays
out). Only contract fields are carried (anything else the builder adds is dropped), so no
other node array can smuggle a label in. The pool, the baselines and evaluation's model input
are all built from the masked sample; only the scorer reads the original labels.

Roles:
  "train": a training sample; label_mask True on every real node, known all False.
  "test":  a held-out sample; the known layer keeps its labels (label_mask True there) and
           "known" = its nodes (used at evaluation); the other layers are test layers.

A batch is ``{"spot", "region", "global"}`` of ``jraph.GraphsTuple`` padded to the fold's
shared budget (``graph.padding.budget_for``); ``Pool.take`` stacks samples on a leading axis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

import jax
import jraph
import numpy as np

from asign_jax.graph.padding import budget_for, pad_sample, stack_samples

logger = logging.getLogger(__name__)

SCALES = ("spot", "region", "global")
INPUT_FIELDS = ("feat", "tokens", "layer", "xy", "region_idx", "global_idx")
"""Node fields passed through unchanged (images and geometry: available in every layer)."""
LABEL_FIELDS = ("label", "label_mask", "known")
"""Node fields rewritten by ``mask_sample``."""


def graph_dict(sample) -> dict:
    """{"spot", "region", "global"} GraphsTuples of a SampleGraph."""
    return {k: sample.graph(k) for k in SCALES}


def unpadded_nodes(sample, scale: str) -> dict:
    """Node arrays of the first (real) graph of ``scale``: {field: (n_real, ...)}."""
    g = sample.graph(scale)
    n = int(np.asarray(g.n_node)[0])
    return {k: np.asarray(v)[:n] for k, v in g.nodes.items()}


def _mask_nodes(nodes: dict, n_real: int, role: str, known_layer) -> dict:
    layer = np.asarray(nodes["layer"])
    real = np.arange(len(layer)) < n_real
    if role == "train":
        keep = real
        known = np.zeros(len(layer), bool)
    elif role == "test":
        keep = real & (layer == known_layer)
        known = keep.copy()
    else:
        raise ValueError(f"role must be 'train' or 'test', got {role!r}")
    label = np.asarray(nodes["label"])
    out = {k: nodes[k] for k in INPUT_FIELDS if k in nodes}
    out["label"] = np.where(keep[:, None], label, np.zeros_like(label))
    out["label_mask"] = keep
    out["known"] = known
    return out


def mask_sample(sample, role: str, known_layer: int | None = None):
    """A copy of ``sample`` whose labels are those the given role may use (see module doc).

    Args:
      sample: SampleGraph (unpadded or padded).
      role: "train" or "test".
      known_layer: the known layer of a held-out ("test") sample.
    """
    if role == "test" and known_layer is None:
        raise ValueError("mask_sample: a held-out sample needs its known_layer")
    new = {}
    for scale in SCALES:
        g = sample.graph(scale)
        dropped = sorted(set(g.nodes) - set(INPUT_FIELDS) - set(LABEL_FIELDS))
        if dropped:
            logger.debug("%s graph: dropping non-contract node fields %s", scale, dropped)
        n_real = int(np.asarray(g.n_node)[0])
        new[scale] = g._replace(nodes=_mask_nodes(g.nodes, n_real, role, known_layer))
    return sample.replace_graphs(new)


FEATURE_NORMS = ("sample", "none")


def standardize_features(sample, mode: str = "sample"):
    """Per-sample, per-dimension z-scoring of the image features of every scale (model input).

    ``mode="sample"``: for each scale, feat (N, D) and tokens (N, T, D) become
    (x - mean) / (std + 1e-3) with mean / std (D,) over the sample's REAL nodes' ``feat``
    (tokens use the same statistics, so they stay comparable with their tile's feature).
    Why: the pooled ResNet features share a large common component (per-dimension std across
    spots ~0.3 against a mean |x| ~1.6 on the synthetic demo), so the first Dense layer mostly
    sees the constant part; standardising exposes the variation between spots, and per sample
    it also removes slide-level stain / scanner offsets. Images only, no labels: a held-out
    sample is standardised by its own images. ``mode="none"`` returns ``sample`` unchanged.
    """
    if mode == "none":
        return sample
    if mode not in FEATURE_NORMS:
        raise ValueError(f"train.feature_norm must be one of {FEATURE_NORMS}, got {mode!r}")
    new = {}
    for scale in SCALES:
        g = sample.graph(scale)
        n_real = int(np.asarray(g.n_node)[0])
        nodes = dict(g.nodes)
        feat = np.asarray(nodes["feat"], np.float32)
        mean = feat[:n_real].mean(0) if n_real else np.zeros(feat.shape[1:], np.float32)
        std = feat[:n_real].std(0) if n_real else np.ones(feat.shape[1:], np.float32)
        for key in ("feat", "tokens"):
            if key in nodes:
                x = np.asarray(nodes[key])
                nodes[key] = ((x.astype(np.float32) - mean) / (std + 1e-3)).astype(x.dtype)
        new[scale] = g._replace(nodes=nodes)
    return sample.replace_graphs(new)


def _pad(sample, budget) -> dict:
    return graph_dict(pad_sample(sample, budget))


@dataclasses.dataclass
class Pool:
    """The training samples of one fold, masked, padded to one budget and stacked.

    Attributes:
      sample_ids: (P,) ids in pool order (sorted).
      roles: (P,) "train" / "test" (a held-out sample enters with only its known layer).
      arrays: {"spot", "region", "global"} GraphsTuples of numpy arrays, leading axis P.
      budget: the padding budget (graph.padding.budget_for) shared by every sample.
      seed: sample-order seed.
    """

    sample_ids: tuple
    roles: tuple
    arrays: dict
    budget: object
    seed: int

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
        """Pads one (masked) SampleGraph to the pool's budget -> {"spot", "region", "global"}."""
        return _pad(sample, self.budget)


def stack(samples: Sequence[dict]) -> dict:
    """Stacks padded {"spot", "region", "global"} dicts on a new leading axis."""
    return jax.tree.map(lambda *a: np.stack(a), *samples)


def build_pool(graphs: Mapping[str, object], fold, seed: int) -> Pool:
    """The masked training pool of ``fold``: its training samples + its held-out samples.

    The padding budget covers every sample of the fold (training and held-out), so evaluation
    uses the same shapes.
    """
    ids, roles, masked = [], [], []
    for sid in sorted(set(fold.train_samples) | set(fold.test_samples)):
        role = fold.role(sid)
        ids.append(sid)
        roles.append(role)
        masked.append(mask_sample(graphs[sid], role, fold.known_layer.get(sid)))
    budget = budget_for([graphs[s] for s in ids])
    arrays = stack_samples([pad_sample(m, budget) for m in masked])
    logger.info("pool: %s, padded to %s", ", ".join(f"{s} ({r})" for s, r in zip(ids, roles)),
                budget)
    return Pool(sample_ids=tuple(ids), roles=tuple(roles), arrays=arrays, budget=budget,
                seed=int(seed))


def random_sample_graph(seed: int, *, n_layers: int, spots_per_layer: int, n_region: int,
                        n_global: int, n_genes: int, feat_dim: int, n_tokens: int,
                        k=8, k_cross=None, sample_id: str = "rand", token_dtype=np.float16):
    """A random SampleGraph of the contract's shapes (tests and benchmarks).

    Spots sit on a jittered grid per layer; every node receives ``k`` random edges from its own
    layer and ``k_cross`` (default k // 2) from other layers, plus the symmetric counterparts;
    ``k`` / ``k_cross`` are ints or {"spot"|"region"|"global": int}. Region / global nodes are
    split evenly over the layers and spots point to random tiles of their layer.
    """
    from asign_jax.graph.build import SampleGraph
    from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA

    rng = np.random.default_rng(seed)

    def layers_of(n):
        return np.sort(np.arange(n) % n_layers).astype(np.int32)

    def per_scale(v, scale, default):
        v = default if v is None else v
        return int(v[scale]) if isinstance(v, dict) else int(v)

    def edges(layer, scale):
        k_in = per_scale(k, scale, 8)
        k_cr = per_scale(k_cross, scale, k_in // 2)
        n = len(layer)
        s, r, t = [], [], []
        for i in range(n):
            same = np.flatnonzero(layer == layer[i])
            other = np.flatnonzero(layer != layer[i])
            same = same[same != i]
            for pool, kk, typ in ((same, k_in, EDGE_INTRA), (other, k_cr, EDGE_CROSS)):
                if len(pool) == 0 or kk == 0:
                    continue
                js = rng.choice(pool, size=min(kk, len(pool)), replace=False)
                s += list(js) + [i] * len(js)
                r += [i] * len(js) + list(js)
                t += [typ] * (2 * len(js))
        pairs = np.unique(np.stack([r, s, t], 1), axis=0)     # sorted by (receiver, sender)
        return (pairs[:, 1].astype(np.int32), pairs[:, 0].astype(np.int32),
                rng.uniform(0.05, 1.0, len(pairs)).astype(np.float32), pairs[:, 2].astype(np.int32))

    def graph(layer, extra, scale):
        n = len(layer)
        s, r, w, t = edges(layer, scale)
        nodes = {"feat": rng.normal(size=(n, feat_dim)).astype(np.float32),
                 "label": rng.normal(-5.0, 1.0, size=(n, n_genes)).astype(np.float32),
                 "label_mask": np.ones(n, bool), "known": np.zeros(n, bool),
                 "layer": layer, "xy": rng.uniform(0, 2000, size=(n, 2)).astype(np.float32),
                 **extra}
        return jraph.GraphsTuple(nodes=nodes, edges={"weight": w, "type": t}, senders=s,
                                 receivers=r, globals=None, n_node=np.array([n], np.int32),
                                 n_edge=np.array([len(s)], np.int32))

    def idx_into(layer_from, layer_to):
        out = np.empty(len(layer_from), np.int32)
        for l in range(n_layers):
            cand = np.flatnonzero(layer_to == l)
            sel = layer_from == l
            out[sel] = rng.choice(cand, size=sel.sum())
        return out

    l_s = np.repeat(np.arange(n_layers, dtype=np.int32), spots_per_layer)
    l_r, l_g = layers_of(n_region), layers_of(n_global)
    tok = lambda n: rng.normal(size=(n, n_tokens, feat_dim)).astype(token_dtype)
    glob = graph(l_g, {"tokens": tok(n_global)}, "global")
    region = graph(l_r, {"tokens": tok(n_region), "global_idx": idx_into(l_r, l_g)}, "region")
    spot = graph(l_s, {"region_idx": idx_into(l_s, l_r), "global_idx": idx_into(l_s, l_g)}, "spot")
    # a spot's global tile is its region's global tile
    spot.nodes["global_idx"] = region.nodes["global_idx"][spot.nodes["region_idx"]]
    side = int(np.ceil(np.sqrt(spots_per_layer)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:spots_per_layer]
    spot.nodes["xy"] = (np.tile(grid, (n_layers, 1)) * 200.0
                        + rng.normal(0, 30, size=(len(l_s), 2))).astype(np.float32)
    offs = lambda lay: np.concatenate([[0], np.cumsum(np.bincount(lay, minlength=n_layers))])
    return SampleGraph(sample_id=sample_id, section_names=[f"{sample_id}{l}" for l in range(n_layers)],
                       spot=spot, region=region, global_=glob,
                       layer_offsets={"spot": offs(l_s), "region": offs(l_r), "global": offs(l_g)})
