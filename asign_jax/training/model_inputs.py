"""Per-model inputs beyond the three graphs ("extra"), built once per fold from its masked pool.

A model lists what it reads in ``inputs()`` (``models.factory.model_inputs``); ``attach`` builds
those inputs for every sample of the fold's ``batches.Pool`` and stores them as
``pool.arrays["extra"]`` (leading pool axis, padded like the graphs), so ``Pool.take`` batches
them with the graphs, ``Pool.pad`` hands a held-out sample its row at evaluation, and the train
and eval steps pass them to the model as ``extra=``. Inputs (N = padded spots of a sample):

  label_mean   (G,)        mean label of the pool's labelled spots (every head's offset)
  bank         {feat (B, D), label (B, G), sample (B,), layer (B,), valid (B,)}: every
               LABELLED spot of the pool (training samples' sections and the held-out
               samples' known layer), padded to a multiple of 64; ``self`` () = the sample's
               pool index, so a model can leave out its own section (EGN, BLEEP)
  exemplars    (N, K) int32 bank rows + exemplar_mask (N, K): the K nearest bank spots by
               L2 distance of the frozen (cached, z-scored) spot features, never from the
               query's own section (``nearest_exemplars``; K = model.egn.n_exemplars)
  spot_tokens  (N, T, D) float16: the cached token grid of the spot patch, z-scored with the
               sample's spot-feature statistics (like ``training.standardize``)
  array_xy     (N, 2) int32: array-grid position, shifted to start at 0 in each section
  grid_adj     (N, k) int32 + grid_adj_mask: His2ST's grid graph (k nearest spots of the same
               section by array distance, kept if <= model.his2st.grid_max_dist)
  window       (N, W^2) int32 + window_mask: TRIPLEX's window x window tiles of
               data.spot_size px around the spot, each the section's spot nearest the tile
               centre (masked if farther than half a tile)
  peg          (N, 9) int32 + peg_mask: the spots at the 3 x 3 array offsets (same section)
  counts       (N, G) float32 + size_factor (N,): raw counts of the selected genes of the
               LABELLED spots (zeros elsewhere) and n_counts / median over the section's
               labelled spots (His2ST's ZINB)
  patches      (N, S, S, 3) uint8 + backbone_stats: the spot patches at features.spot_input
               for ``model.backbone.mode="train"`` and the ResNet-50 batch statistics

Label hygiene: labels enter ONLY through the pool's masked spot arrays ("label",
"label_mask"; ``roles.mask_sample`` zeroed every test layer) and, for ``counts``, through
the prepared counts multiplied out by that same label_mask (``np.where``). Prepared data is
otherwise read through ``_image_fields`` (array / pixel positions, token grids, features,
image path). A test layer therefore has no bank row, no exemplar, no count and no share of
label_mean. Every neighbour table links spots of one section (2D methods stay 2D).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import jax
import numpy as np
from scipy.spatial import cKDTree

from asign_jax.data.slide import open_working
from asign_jax.errors import DataError
from asign_jax.features.patches import crop_patches
from asign_jax.models.blocks import backbone_variables
from asign_jax.preprocess.prepared import PreparedSample
from asign_jax.training.standardize import apply_stats, feature_stats

logger = logging.getLogger(__name__)

INPUTS = ("label_mean", "bank", "exemplars", "spot_tokens", "array_xy", "grid_adj", "window",
          "peg", "counts", "patches")
BANK_MULTIPLE = 64
PEG_OFFSETS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


# ---- what is read from the prepared data ----------------------------------------------------

def _image_fields(data_dir: Path, sample_id: str, want_tokens: bool) -> list[dict]:
    """Per section of the prepared sample: the image / geometry fields only (no labels)."""
    prepared = PreparedSample.load(data_dir, sample_id)
    out = []
    for s in prepared.sections:
        if want_tokens and s.spot_tokens is None:
            raise DataError(f"{Path(data_dir) / 'prepared' / sample_id}: section {s.name} has "
                            "no spot_tokens (prepared before spot token grids were cached); "
                            "re-run `python -m asign_jax.prepare` in a fresh folder")
        out.append({"name": s.name, "array_xy": np.asarray(s.array_xy, np.float64),
                    "pixel_xy": np.asarray(s.pixel_xy, np.float64),
                    "spot_feats": s.spot_feats,
                    "spot_tokens": s.spot_tokens if want_tokens else None,
                    "image_path": s.image_path, "image_scale": s.image_scale})
    return out


def _masked_counts(data_dir: Path, sample_id: str, label_mask: np.ndarray) -> np.ndarray:
    """(n, G) raw counts of the sample's spots where ``label_mask`` (n,) is True, 0 elsewhere."""
    prepared = PreparedSample.load(data_dir, sample_id)
    counts = np.concatenate([np.asarray(s.spot_counts, np.float32) for s in prepared.sections])
    return np.where(label_mask[:, None], counts, np.zeros_like(counts))


# ---- the inputs -----------------------------------------------------------------------------

def build_bank(feat: np.ndarray, label: np.ndarray, label_mask: np.ndarray,
               layer: np.ndarray) -> dict:
    """The retrieval bank of the pool: every labelled spot (see the module docstring).

    feat (P, N, D), label (P, N, G), label_mask (P, N) bool, layer (P, N) -> bank dict.
    """
    p_idx, n_idx = np.nonzero(np.asarray(label_mask, bool))
    b = len(p_idx)
    if b == 0:
        raise DataError("the fold's pool has no labelled spot to build a retrieval bank from")
    size = -(-b // BANK_MULTIPLE) * BANK_MULTIPLE
    pad = lambda a: np.concatenate([a, np.zeros((size - b,) + a.shape[1:], a.dtype)])
    return {"feat": pad(np.asarray(feat[p_idx, n_idx], np.float32)),
            "label": pad(np.asarray(label[p_idx, n_idx], np.float32)),
            "sample": pad(p_idx.astype(np.int32)),
            "layer": pad(np.asarray(layer[p_idx, n_idx], np.int32)),
            "valid": pad(np.ones(b, bool))}


def nearest_exemplars(query_feat: np.ndarray, query_layer: np.ndarray, self_index: int,
                      bank: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """EGN's exemplars: for each query row, the ``k`` nearest valid bank rows by L2 distance,
    leaving out the query's own section (bank sample == self_index and layer == its layer).

    query_feat (N, D), query_layer (N,) -> (indices (N, k) int32 ascending by distance,
    mask (N, k) bool, False where fewer than k bank rows are allowed).
    """
    q = np.asarray(query_feat, np.float64)
    b = np.asarray(bank["feat"], np.float64)
    d2 = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    own = (bank["sample"][None, :] == self_index) & (bank["layer"][None, :]
                                                      == np.asarray(query_layer)[:, None])
    d2 = np.where(bank["valid"][None, :] & ~own, d2, np.inf)
    k = min(int(k), d2.shape[1])
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d2, part, 1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    return idx.astype(np.int32), np.isfinite(np.take_along_axis(d2, idx, 1))


def _sections(layer: np.ndarray, n_real: int) -> list[np.ndarray]:
    """Row indices of each layer among the first n_real rows."""
    lay = np.asarray(layer)[:n_real]
    return [np.flatnonzero(lay == l) for l in np.unique(lay)]


def grid_adjacency(array_xy: np.ndarray, layer: np.ndarray, n_real: int, n_pad: int, k: int,
                   max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """His2ST's grid graph: each spot's k nearest same-section spots by array distance
    (self excluded), kept if <= max_dist. -> (idx (n_pad, k) int32, mask (n_pad, k) bool)."""
    idx = np.zeros((n_pad, k), np.int32)
    mask = np.zeros((n_pad, k), bool)
    for rows in _sections(layer, n_real):
        if len(rows) < 2:
            continue
        kk = min(k, len(rows) - 1)
        d, j = cKDTree(array_xy[rows]).query(array_xy[rows], kk + 1)
        d, j = d[:, 1:], j[:, 1:]                      # drop the spot itself (distance 0)
        idx[rows, :kk] = rows[j]
        mask[rows, :kk] = d <= max_dist
    return idx, mask


def tile_window(pixel_xy: np.ndarray, layer: np.ndarray, n_real: int, n_pad: int, window: int,
                tile: float) -> tuple[np.ndarray, np.ndarray]:
    """TRIPLEX's neighbour window: window x window tiles of side ``tile`` px centred on each
    spot (row-major, dy outer); each tile is the section's spot nearest its centre, masked if
    farther than tile / 2. -> (idx (n_pad, W^2) int32, mask (n_pad, W^2) bool)."""
    r = window // 2
    offsets = np.array([(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1)],
                       np.float64) * tile
    idx = np.zeros((n_pad, len(offsets)), np.int32)
    mask = np.zeros((n_pad, len(offsets)), bool)
    for rows in _sections(layer, n_real):
        centres = pixel_xy[rows][:, None, :] + offsets[None]          # (n, W^2, 2)
        d, j = cKDTree(pixel_xy[rows]).query(centres.reshape(-1, 2))
        idx[rows] = rows[j].reshape(len(rows), -1)
        mask[rows] = (d <= tile / 2).reshape(len(rows), -1)
    return idx, mask


def grid_offsets(array_xy: np.ndarray, layer: np.ndarray, n_real: int, n_pad: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The spots at the 3 x 3 integer array offsets of each spot in its section (PEG)."""
    idx = np.zeros((n_pad, len(PEG_OFFSETS)), np.int32)
    mask = np.zeros((n_pad, len(PEG_OFFSETS)), bool)
    for rows in _sections(layer, n_real):
        where = {tuple(p): i for p, i in zip(np.rint(array_xy[rows]).astype(int).tolist(), rows)}
        for a, i in enumerate(rows):
            x, y = np.rint(array_xy[i]).astype(int)
            for o, (dx, dy) in enumerate(PEG_OFFSETS):
                j = where.get((x + dx, y + dy))
                if j is not None:
                    idx[i, o], mask[i, o] = j, True
    return idx, mask


def size_factors(counts: np.ndarray, label_mask: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """n_counts / median(n_counts) over each section's labelled spots; 1 elsewhere."""
    total = counts.sum(1)
    sf = np.ones(len(total), np.float32)
    for l in np.unique(layer[label_mask]):
        rows = label_mask & (layer == l)
        med = float(np.median(total[rows]))
        if med > 0:
            sf[rows] = total[rows] / med
    return sf


def _patches(fields: list[dict], size: int, out_size: int) -> np.ndarray:
    parts = []
    for f in fields:
        if not f["image_path"]:
            raise DataError(f"section {f['name']}: no image path in the prepared data; "
                            "model.backbone.mode='train' needs the images")
        p = crop_patches(open_working(Path(f["image_path"]), f.get("image_scale", 1.0)),
                         f["pixel_xy"], size)
        parts.append(np.stack([cv2.resize(x, (out_size, out_size), interpolation=cv2.INTER_AREA)
                               for x in p]) if out_size != size else p)
    return np.concatenate(parts)


def _pad(a: np.ndarray, n_pad: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((n_pad - len(a),) + a.shape[1:], a.dtype)])


def attach(config, names: tuple, data_dir, pool):
    """``pool`` with ``arrays["extra"]`` holding the inputs ``names`` (see the module doc).

    Args:
      config: full config (model.<method>, data.spot_size, features, train.feature_norm).
      names: ``models.factory.model_inputs(model)``.
      data_dir: the run folder holding ``prepared/`` (token grids, positions, counts).
      pool: the fold's ``batches.Pool`` (masked, padded, stacked).
    """
    names = tuple(names)
    unknown = sorted(set(names) - set(INPUTS))
    if unknown:
        raise ValueError(f"unknown model inputs {unknown}; known: {INPUTS}")
    if not names:
        return pool
    nodes = pool.arrays["spot"].nodes
    n_real = np.asarray(pool.arrays["spot"].n_node)[:, 0]
    n_samples, n_pad = np.asarray(nodes["layer"]).shape
    layer, label_mask = np.asarray(nodes["layer"]), np.asarray(nodes["label_mask"], bool)
    label, feat = np.asarray(nodes["label"]), np.asarray(nodes["feat"])
    per_sample: list[dict] = [{} for _ in range(n_samples)]
    shared: dict = {}
    m = config.model

    if "label_mean" in names:
        shared["label_mean"] = label[label_mask].astype(np.float64).mean(0).astype(np.float32)
    if "bank" in names or "exemplars" in names:
        shared["bank"] = _retrieval(names, m, feat, label, label_mask, layer, per_sample,
                                    pool.sample_ids)
    if GEOMETRY & set(names):
        for p, sid in enumerate(pool.sample_ids):
            per_sample[p].update(_geometry(config, names, data_dir, sid, int(n_real[p]), n_pad,
                                           layer[p], label_mask[p]))
        if "patches" in names:
            shared["backbone_stats"] = backbone_variables(
                str(m.backbone_weights or ""), int(m.backbone_init_seed))["batch_stats"]

    extra = {k: np.stack([s[k] for s in per_sample]) for k in per_sample[0]}
    for k, v in shared.items():
        extra[k] = jax.tree.map(lambda a: np.broadcast_to(a, (n_samples,) + np.shape(a)), v)
    return dataclasses.replace(pool, arrays={**pool.arrays, "extra": extra})


# the inputs read from a sample's prepared sections (positions, token grids, counts, patches)
GEOMETRY = {"spot_tokens", "array_xy", "grid_adj", "window", "peg", "counts", "patches"}


def _retrieval(names, m, feat, label, label_mask, layer, per_sample: list, sample_ids) -> dict:
    """The pool's retrieval bank (``build_bank``); each sample's own index and, for
    ``"exemplars"``, its ``model.egn.n_exemplars`` nearest bank spots go into ``per_sample``."""
    bank = build_bank(feat, label, label_mask, layer)
    for p in range(len(per_sample)):
        per_sample[p]["self"] = np.int32(p)
    logger.info("retrieval bank: %d labelled spots of %s", int(bank["valid"].sum()),
                ", ".join(sample_ids))
    if "exemplars" in names:
        for p in range(len(per_sample)):
            idx, ok = nearest_exemplars(feat[p], layer[p], p, bank, int(m.egn.n_exemplars))
            per_sample[p]["exemplars"], per_sample[p]["exemplar_mask"] = idx, ok
    return bank


def _geometry(config, names, data_dir, sid: str, n: int, n_pad: int, lay: np.ndarray,
              label_mask: np.ndarray) -> dict:
    """The ``GEOMETRY`` inputs of one sample of ``n`` real nodes, padded to ``n_pad``; ``lay``
    (n_pad,) its node layers, ``label_mask`` (n_pad,) its labelled nodes (counts elsewhere 0)."""
    m = config.model
    fields = _image_fields(data_dir, sid, "spot_tokens" in names)
    if sum(len(f["pixel_xy"]) for f in fields) != n:
        raise DataError(f"{Path(data_dir) / 'prepared' / sid}: "
                        f"{sum(len(f['pixel_xy']) for f in fields)} prepared spots, "
                        f"{n} graph nodes; the graphs are stale (rebuild them)")
    out = {}
    array_xy = np.concatenate([f["array_xy"] - f["array_xy"].min(0) for f in fields])
    pixel_xy = np.concatenate([f["pixel_xy"] for f in fields])
    if "spot_tokens" in names:
        raw = np.concatenate([f["spot_feats"] for f in fields])
        tokens = np.concatenate([f["spot_tokens"] for f in fields])
        if str(config.train.feature_norm) == "sample":
            tokens = apply_stats(tokens, *feature_stats(raw, n))
        out["spot_tokens"] = _pad(tokens.astype(np.float16), n_pad)
    if "array_xy" in names:
        out["array_xy"] = _pad(np.rint(array_xy).astype(np.int32), n_pad)
    if "grid_adj" in names:
        out["grid_adj"], out["grid_adj_mask"] = grid_adjacency(
            array_xy, lay, n, n_pad, int(m.his2st.grid_k), float(m.his2st.grid_max_dist))
    if "window" in names:
        out["window"], out["window_mask"] = tile_window(
            pixel_xy, lay, n, n_pad, int(m.triplex.window), float(config.data.spot_size))
    if "peg" in names:
        out["peg"], out["peg_mask"] = grid_offsets(array_xy, lay, n, n_pad)
    if "counts" in names:
        counts = _pad(_masked_counts(data_dir, sid, label_mask[:n]), n_pad)
        out["counts"] = counts
        out["size_factor"] = size_factors(counts, label_mask, lay)
    if "patches" in names:
        out["patches"] = _pad(_patches(fields, int(config.data.spot_size),
                                       int(config.features.spot_input)), n_pad)
    return out
