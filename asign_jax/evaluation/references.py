"""The 3D-imputation references that need no training (ASIGN App. E: overlap, similarity).

Both read ONLY the known layer's spot labels, and they read them from the masked sample that
training sees (``asign_jax.training.batches.mask_sample``), so a test label cannot reach them.

known_mean: every spot gets the known layer's mean expression profile.
overlap:    after registration every spot is a circle of radius ``config.graph.spot_radius`` (px,
            reference frame). A spot's prediction is the IoU-weighted mean of the known-layer
            spots whose circles overlap its circle (centre distance < 2 r). When none overlaps
            (tissue outside the known section, or a poor registration) it falls back to the
            NEAREST known spot (not to known_mean: the nearest spot stays spatially local, which
            is the idea of the baseline). The number of fallbacks is reported.
similarity: every spot gets the mean label of the ``k`` (App. E: 20) known-layer spots whose
            image features are most similar to its own (cosine of the spot features the
            model reads, i.e. the cached ResNet-50 feature z-scored per sample; ASIGN's code
            takes the cosine of ResNet-50 features through an untrained random Linear, which
            is a random projection of the same). Fewer than k known spots: all of them.
"""

from __future__ import annotations

import numpy as np

from asign_jax.graph.iou import circle_iou  # noqa: F401  (also this module's public name)

METHODS = ("known_mean", "overlap", "similarity")
SIMILARITY_K = 20


def known_mean(known_labels: np.ndarray, n_query: int) -> np.ndarray:
    """(n_query, G): the mean profile of ``known_labels`` (K, G) repeated."""
    return np.broadcast_to(known_labels.mean(axis=0), (n_query, known_labels.shape[1])).astype(np.float32)


def overlap(known_xy: np.ndarray, known_labels: np.ndarray, query_xy: np.ndarray, radius: float,
            chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """IoU-weighted mean of overlapping known spots; nearest known spot where none overlaps.

    Args:
      known_xy: (K, 2) registered centres of the known spots.
      known_labels: (K, G) their labels.
      query_xy: (M, 2) registered centres of the spots to predict.
      radius: spot circle radius (same units as the coordinates).

    Returns:
      (M, G) float32 predictions and an (M,) bool mask of the spots that used the fallback.
    """
    known_xy = np.asarray(known_xy, np.float64)
    known_labels = np.asarray(known_labels, np.float64)
    out = np.empty((len(query_xy), known_labels.shape[1]), np.float32)
    fallback = np.zeros(len(query_xy), bool)
    for start in range(0, len(query_xy), chunk):
        q = np.asarray(query_xy[start:start + chunk], np.float64)
        d = np.sqrt(((q[:, None, :] - known_xy[None, :, :]) ** 2).sum(-1))   # (m, K)
        w = circle_iou(d, radius)
        total = w.sum(1)
        none = total <= 0
        fallback[start:start + len(q)] = none
        w[none, d[none].argmin(1)] = 1.0
        out[start:start + len(q)] = (w @ known_labels) / w.sum(1, keepdims=True)
    return out, fallback


def similarity(known_feat: np.ndarray, known_labels: np.ndarray, query_feat: np.ndarray,
               k: int = SIMILARITY_K, chunk: int = 2048) -> np.ndarray:
    """Mean label of the ``k`` known spots most similar (cosine of features) to each query.

    Args:
      known_feat: (K, D) features of the known spots; known_labels: (K, G) their labels.
      query_feat: (M, D) features of the spots to predict.
      k: neighbours per query (clipped to K).

    Returns:
      (M, G) float32.
    """
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    kf = unit(np.asarray(known_feat, np.float64))
    labels = np.asarray(known_labels, np.float64)
    k = min(int(k), len(kf))
    out = np.empty((len(query_feat), labels.shape[1]), np.float32)
    for start in range(0, len(query_feat), chunk):
        cos = unit(np.asarray(query_feat[start:start + chunk], np.float64)) @ kf.T   # (m, K)
        top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        out[start:start + len(cos)] = labels[top].mean(1)
    return out


def predict_sample(spot_nodes: dict, known_layer: int, radius: float,
                   similarity_k: int = SIMILARITY_K) -> tuple[dict, dict]:
    """Baseline predictions for every real spot of one masked held-out sample.

    Args:
      spot_nodes: unpadded spot node arrays of the MASKED sample ("label", "label_mask",
        "layer", "xy", "feat"); labels are read only in rows with label_mask & layer ==
        known_layer.
      known_layer: the known layer.
      radius: spot circle radius, px.
      similarity_k: neighbours of the similarity reference (``evaluation.similarity_k``).

    Returns:
      ({method: (N, G) float32}, {"overlap_fallback": (N,) bool, spots that had no overlapping
      known spot and took the nearest one}).
    """
    src = np.asarray(spot_nodes["label_mask"], bool) & (np.asarray(spot_nodes["layer"]) == known_layer)
    if not src.any():
        raise ValueError(f"no labelled spot in known layer {known_layer}")
    labels = np.asarray(spot_nodes["label"])[src]
    xy = np.asarray(spot_nodes["xy"])
    n = len(xy)
    pred_overlap, fallback = overlap(xy[src], labels, xy, radius)
    feat = np.asarray(spot_nodes["feat"])
    pred_similar = similarity(feat[src], labels, feat, similarity_k)
    return ({"known_mean": known_mean(labels, n), "overlap": pred_overlap,
             "similarity": pred_similar}, {"overlap_fallback": fallback})
