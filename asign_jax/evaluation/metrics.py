"""Metrics of imputed expression and their aggregation over sections and folds.

Conventions (also written into metrics.json under "conventions"):
- Scored spots: every real spot of every TEST layer of a held-out sample (the known layer is
  not scored), on the normalised labels the model is trained on.
- Per test section: MSE and MAE over spots x genes; ``pcc_gene`` = Pearson per gene across the
  section's spots, mean over genes (the ST-Net / HisToGene / TRIPLEX metric); ``pcc_spot`` =
  Pearson per spot across genes, mean over spots (the official ASIGN code's metric; much easier,
  it is dominated by the mean gene profile). A gene (spot) whose truth or prediction is
  constant has no Pearson correlation: it is skipped and counted (``n_genes_skipped``,
  ``n_spots_skipped``); for a prediction that is constant across spots (known_mean) pcc_gene is
  therefore undefined (NaN in the arrays, null in JSON, "undefined" in the summary table).
- Methods: ``asign`` (the final p'_s), its two halves ``asign_model`` (the network's p_s) and
  ``asign_propagation`` (the CLI's p_i), and the references ``known_mean`` and ``overlap``
  (``asign_jax.evaluation.references``), all on the same spots.
- A fold's number = the UNWEIGHTED mean over its test sections (every section counts the same,
  whatever its spot count); a run's number = mean and population std (ddof 0) over folds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("mse", "mae", "pcc_gene", "pcc_spot")
CONVENTIONS = {
    "scored_spots": "all real spots of the test layers (known layer excluded), normalised labels",
    "mse_mae": "mean over spots x genes of one test section",
    "pcc_gene": "Pearson per gene across the section's spots, mean over genes; genes with "
                "constant truth or prediction skipped (n_genes_skipped)",
    "pcc_spot": "Pearson per spot across genes, mean over spots (official ASIGN code metric); "
                "constant spots skipped (n_spots_skipped)",
    "fold": "unweighted mean over the fold's test sections",
    "run": "mean and population std (ddof=0) over folds",
}


# ---- metrics --------------------------------------------------------------------------------

def pearson(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson r of ``a`` and ``b`` (same 2-D shape) along ``axis``; NaN where either is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ok = (np.ptp(a, axis=axis) > 0) & (np.ptp(b, axis=axis) > 0)
    a = a - a.mean(axis, keepdims=True)
    b = b - b.mean(axis, keepdims=True)
    va, vb = (a * a).sum(axis), (b * b).sum(axis)
    r = np.full(va.shape, np.nan)
    r[ok] = (a * b).sum(axis)[ok] / np.sqrt(va[ok] * vb[ok])
    return np.clip(r, -1.0, 1.0)


def nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def section_metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[dict, np.ndarray]:
    """Metrics of one section. pred, truth: (N, G). Returns (metrics dict, per-gene r (G,))."""
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[0] == 0:
        raise ValueError(f"section_metrics: pred {pred.shape} vs truth {truth.shape}")
    diff = pred - truth
    r_gene = pearson(pred, truth, axis=0)
    r_spot = pearson(pred, truth, axis=1)
    return ({"mse": float(np.mean(diff * diff)), "mae": float(np.mean(np.abs(diff))),
             "pcc_gene": nanmean(r_gene), "pcc_spot": nanmean(r_spot),
             "n_spots": int(pred.shape[0]),
             "n_genes_skipped": int(np.isnan(r_gene).sum()),
             "n_spots_skipped": int(np.isnan(r_spot).sum())}, r_gene)


def fold_means(sections: Sequence[dict], method: str) -> dict:
    """Unweighted mean over sections of each metric of ``method``."""
    return {m: nanmean([nan_or(s["methods"][method][m]) for s in sections]) for m in METRICS}


def nan_or(x) -> float:
    """None (a JSON null) -> NaN; anything else -> float."""
    return float("nan") if x is None else float(x)


def aggregate(fold_results: Sequence[dict]) -> dict:
    """{method: {"mean": {metric}, "std": {metric}}} over folds (population std)."""
    methods = list(fold_results[0]["mean"])
    agg = {}
    for meth in methods:
        vals = {m: np.array([nan_or(fr["mean"][meth][m]) for fr in fold_results]) for m in METRICS}
        agg[meth] = {"mean": {m: nanmean(v) for m, v in vals.items()},
                     "std": {m: (float(np.std(v[~np.isnan(v)])) if (~np.isnan(v)).any()
                                 else float("nan")) for m, v in vals.items()}}
    return agg
