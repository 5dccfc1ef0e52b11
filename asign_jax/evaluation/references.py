"""Reference predictors scored beside ASIGN: ASIGN App. E's training-free 3D baselines
(overlap, similarity), a ridge regression on the image features, and (synthetic data only)
the oracle ceiling.

The references read ONLY the known layer's spot labels, and they read them from the masked
sample that training sees (``asign_jax.graph.roles.mask_sample``), so a test label cannot
reach them.

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
ridge:      a ridge regression from the spot's image feature (the model's input view: z-scored
            per sample) to its expression, fit on the known layer's spots alone, the penalty
            chosen by 5-fold CV inside the known layer. It shows how much of the expression the
            image features carry for this sample, with no other sample's expression levels.
label_propagation: the parameter-free label propagation through the sample's own 3D spot
            graph (eq. 5 with every alpha_j = 1, ``model.asign.cli_iterations`` iterations, unknown
            spots starting at the known layer's mean; ``models.cli.propagate``): what ASIGN's
            propagation half does with nothing learned. Scored on the view the model sees (a
            validation view with cut edges propagates through the cut graph).
oracle:     (synthetic data, ``oracle_labels``) the generator's noise-free expression of every
            spot, normalised like the labels: the best any method can do given the count noise.
noise_ceiling: (real data, ``noise_ceiling``; not a prediction) per scored section, each spot's
            raw counts are split into two halves by binomial thinning (p = 1/2, seeded), both
            halves normalised like the labels, and correlated per gene across the section's
            spots (r); Spearman-Brown gives the correlation a noise-free predictor would reach
            against the full labels, sqrt(2 r / (1 + r)) (r <= 0: 0); the row is its mean over
            genes (``pcc_gene`` only). It reads the scored spots' counts, after training, for
            this row alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.linalg

from asign_jax.data.synthetic import SUMMARY_FILE, load_expected
from asign_jax.errors import DataError
from asign_jax.graph.iou import circle_iou  # noqa: F401  (also this module's public name)
from asign_jax.models.cli import propagate_jit
from asign_jax.preprocess.normalize import normalize

METHODS = ("known_mean", "overlap", "ridge", "similarity", "label_propagation")
SIMILARITY_K = 20
CEILINGS = ("oracle", "noise_ceiling")
NOISE_SEED = 0
"""Rows that are not methods (they read the generator's truth) but are printed beside them."""

RIDGE_FOLDS = 5
RIDGE_PENALTIES = np.logspace(-3, 3, 13)
"""Ridge penalties tried, in units of the mean squared singular value of the centred features."""


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


def _ridge_basis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U (n, r), s^2 (r,)) of the centred ``x`` (n, D) from the eigendecomposition of the
    n x n Gram matrix (cheaper than an SVD when n <= D; eigenvalues ~0 dropped)."""
    x32 = np.asarray(x, np.float32)
    evals, u = scipy.linalg.eigh(x32 @ x32.T, driver="evd")     # float32: ~4x faster, enough
    evals, u = evals.astype(np.float64), u.astype(np.float64)
    keep = evals > max(float(evals.max()), 0.0) * 1e-10
    return u[:, keep], evals[keep]


def _ridge_paths(x: np.ndarray, y: np.ndarray, x_query: np.ndarray, penalties: np.ndarray
                 ) -> np.ndarray:
    """(P, M, G) ridge predictions of centred ``y`` (n, G) at ``x_query`` (M, D) for each
    absolute penalty (P,): x_q X^T U diag(1 / (s^2 + lambda)) U^T y (the kernel form)."""
    u, s2 = _ridge_basis(x)
    uty = u.T @ y                                                   # (r, G)
    kq = (np.asarray(x_query, np.float32) @ np.asarray(x, np.float32).T) @ u   # (M, r)
    return np.stack([(kq / (s2 + p)) @ uty for p in penalties])


def ridge_fit(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
              n_folds: int = RIDGE_FOLDS, penalties: np.ndarray = RIDGE_PENALTIES,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge regression of ``y`` (n, G) on ``x`` (n, D), the penalty chosen by CV.

    CV folds: leave one group out when ``groups`` (n,) has >= 2 values (e.g. samples, so
    spatial autocorrelation inside a sample does not favour a weak penalty), else a random
    ``n_folds``-fold split (``seed``). Penalties are relative: the absolute one is this x the
    mean squared singular value of the centred ``x`` (the grid does not depend on the scale).

    Returns (W (D, G), x mean (D,), y mean (G,), the chosen relative penalty); the prediction
    at x' is (x' - x mean) @ W + y mean.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    scale = float(np.einsum("ij,ij->", xc, xc)) / max(min(xc.shape), 1) or 1.0
    pen = np.asarray(penalties, np.float64) * scale
    n = len(x)
    if groups is not None and len(np.unique(groups)) >= 2:
        folds = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    else:
        folds = np.random.default_rng(seed).permutation(n) % max(2, min(n_folds, n))
    sse = np.zeros(len(pen))
    for f in np.unique(folds):
        tr, va = folds != f, folds == f
        if tr.sum() < 2:
            continue
        mxt, myt = x[tr].mean(0), y[tr].mean(0)
        pred = _ridge_paths(x[tr] - mxt, y[tr] - myt, x[va] - mxt, pen) + myt
        sse += ((pred - y[va]) ** 2).sum(axis=(1, 2))
    best = int(np.argmin(sse))
    u, s2 = _ridge_basis(xc)
    w = xc.T @ (u @ ((u.T @ yc) / (s2 + pen[best])[:, None]))
    return w, mx, my, float(penalties[best])


def ridge(known_feats: np.ndarray, known_labels: np.ndarray, query_feats: np.ndarray,
          n_folds: int = RIDGE_FOLDS, penalties: np.ndarray = RIDGE_PENALTIES,
          seed: int = 0) -> tuple[np.ndarray, float]:
    """Ridge regression fit on the known spots; the penalty by K-fold CV among them
    (``ridge_fit``). Returns ((M, G) float32 predictions at ``query_feats``, the chosen
    relative penalty). Intercept = the known mean."""
    w, mx, my, pen = ridge_fit(known_feats, known_labels, n_folds=n_folds, penalties=penalties,
                               seed=seed)
    out = (np.asarray(query_feats, np.float64) - mx) @ w + my
    return out.astype(np.float32), pen


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


def label_propagation(labels: np.ndarray, known: np.ndarray, senders: np.ndarray,
                      receivers: np.ndarray, weight: np.ndarray, n_iter: int) -> np.ndarray:
    """(N, G) parameter-free propagation (module doc): eq. 5 with alpha_j = 1 over the unpadded
    spot graph's edges (E,), ``known`` (N,) rows fixed at ``labels``, the others starting at
    the known rows' mean."""
    known = np.asarray(known, bool)
    labels = np.where(known[:, None], np.asarray(labels, np.float32), 0.0).astype(np.float32)
    n, e = len(known), len(senders)
    start = known_mean(labels[known], n)
    out, _ = propagate_jit(start, labels, known, np.asarray(senders), np.asarray(receivers),
                           np.asarray(weight, np.float32), np.ones(n, np.float32),
                           np.ones(e, bool), np.ones(n, bool), n_iter=int(n_iter))
    return np.asarray(out, np.float32)


def predict_sample(spot_nodes: dict, known_layer: int, radius: float,
                   similarity_k: int = SIMILARITY_K, spot_graph=None,
                   n_iter: int = 10) -> tuple[dict, dict]:
    """Baseline predictions for every real spot of one masked held-out sample.

    Args:
      spot_nodes: unpadded spot node arrays of the MASKED sample ("label", "label_mask",
        "layer", "xy", "feat"); labels are read only in rows with label_mask & layer ==
        known_layer.
      known_layer: the known layer.
      radius: spot circle radius, px.
      similarity_k: neighbours of the similarity reference (``evaluation.similarity_k``).
      spot_graph: the masked sample's unpadded spot ``GraphsTuple`` (senders, receivers,
        edges["weight"]); None leaves out ``label_propagation``.
      n_iter: iterations of ``label_propagation`` (``model.asign.cli_iterations``).

    Returns:
      ({method: (N, G) float32}, {"overlap_fallback": (N,) bool, spots that had no overlapping
      known spot and took the nearest one; "ridge_penalty": the CV-chosen relative penalty}).
    """
    src = np.asarray(spot_nodes["label_mask"], bool) & (np.asarray(spot_nodes["layer"]) == known_layer)
    if not src.any():
        raise ValueError(f"no labelled spot in known layer {known_layer}")
    labels = np.asarray(spot_nodes["label"])[src]
    xy = np.asarray(spot_nodes["xy"])
    n = len(xy)
    pred_overlap, fallback = overlap(xy[src], labels, xy, radius)
    feats = np.asarray(spot_nodes["feat"])
    pred_ridge, penalty = ridge(feats[src], labels, feats)
    pred_similar = similarity(feats[src], labels, feats, similarity_k)
    preds = {"known_mean": known_mean(labels, n), "overlap": pred_overlap, "ridge": pred_ridge,
             "similarity": pred_similar}
    if spot_graph is not None:          # label_propagation masks the rows outside src itself
        preds["label_propagation"] = label_propagation(
            np.asarray(spot_nodes["label"]), src, spot_graph.senders, spot_graph.receivers,
            spot_graph.edges["weight"], n_iter)
    return preds, {"overlap_fallback": fallback, "ridge_penalty": penalty}


def noise_ceiling(counts: np.ndarray, normalization: str, seed: int = NOISE_SEED,
                  all_totals: np.ndarray | None = None, n_all_genes: int | None = None
                  ) -> np.ndarray:
    """(G,) per-gene ceiling sqrt(2 r / (1 + r)) of one section (module doc; NaN for a gene
    constant in a half). ``counts`` (N, G) raw; ``all_totals`` (N,) / ``n_all_genes``:
    stnet only (the other genes' counts are thinned alike, binomially from the remainder)."""
    c = np.rint(np.asarray(counts, np.float64)).clip(0).astype(np.int64)
    rng = np.random.default_rng(seed)
    a = rng.binomial(c, 0.5)
    b = c - a
    kw = {}
    if normalization == "stnet":
        rest = np.rint(np.asarray(all_totals, np.float64) - c.sum(1)).clip(0).astype(np.int64)
        ra = rng.binomial(rest, 0.5)
        kw = [dict(all_totals=a.sum(1) + ra, n_all_genes=n_all_genes),
              dict(all_totals=b.sum(1) + rest - ra, n_all_genes=n_all_genes)]
    else:
        kw = [{}, {}]
    ya = normalize(a, normalization, **kw[0]).astype(np.float64)
    yb = normalize(b, normalization, **kw[1]).astype(np.float64)
    ya -= ya.mean(0)
    yb -= yb.mean(0)
    den = np.sqrt((ya * ya).sum(0) * (yb * yb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (ya * yb).sum(0) / np.where(den > 0, den, 1.0), np.nan)
    r = np.where(np.isnan(r), np.nan, np.clip(r, 0.0, 1.0))
    return np.sqrt(2 * r / (1 + r))


def oracle_labels(root: Path, prepared, normalization: str) -> np.ndarray:
    """(N, G) the generator's noise-free expression of every spot of a prepared synthetic
    sample, in graph node order (sections in layer order, spots in prepared order), normalised
    like the labels (``data.normalization``, over the sample's selected genes).

    Smoothing (triplex ``data.smooth``) is not applied: the oracle is the expression itself.
    """
    root = Path(root)
    file_genes = json.loads((root / SUMMARY_FILE).read_text())["genes"]
    col = {g: i for i, g in enumerate(file_genes)}
    try:
        sel = np.asarray([col[str(g)] for g in prepared.genes])
    except KeyError as e:
        raise DataError(f"{root / SUMMARY_FILE}: gene {e} of the prepared sample is not "
                        "generated") from e
    out = []
    for sec in prepared.sections:
        ids, mu = load_expected(root, sec.name)
        row = {str(i): r for r, i in enumerate(ids)}
        missing = [i for i in sec.spot_ids if str(i) not in row]
        if missing:
            raise DataError(f"{root}: section {sec.name} has no expected counts for spots "
                            f"{missing[:3]}")
        mu = np.asarray(mu, np.float64)[[row[str(i)] for i in sec.spot_ids]]
        out.append(normalize(mu[:, sel], normalization, all_totals=mu.sum(1),
                             n_all_genes=mu.shape[1]))
    return np.concatenate(out).astype(np.float32)
