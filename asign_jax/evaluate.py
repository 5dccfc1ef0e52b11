"""Scoring, baselines next to ASIGN, and the reports of a run.

    python -m asign_jax.evaluate --config configs/<dataset>.py --workdir DIR

re-scores every fold from its latest checkpoint (``<workdir>/checkpoints/fold_<k>``).

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
  (``asign_jax.baselines``), all on the same spots.
- A fold's number = the UNWEIGHTED mean over its test sections (every section counts the same,
  whatever its spot count); a run's number = mean and population std (ddof 0) over folds.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from asign_jax import baselines

logger = logging.getLogger(__name__)

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


def _nanmean(x) -> float:
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
             "pcc_gene": _nanmean(r_gene), "pcc_spot": _nanmean(r_spot),
             "n_spots": int(pred.shape[0]),
             "n_genes_skipped": int(np.isnan(r_gene).sum()),
             "n_spots_skipped": int(np.isnan(r_spot).sum())}, r_gene)


MODEL_OUTPUTS = {"asign": "spot", "asign_model": "spot_model", "asign_propagation": "imputed"}
"""Method name -> key of the model's output dict (``models.msagnet.ASIGN``)."""
COMPONENTS = tuple(m for m in MODEL_OUTPUTS if m != "asign")
"""ASIGN's two halves, scored like methods: the network's p_s and the CLI propagation p_i
(p'_s = alpha p_s + (1 - alpha) p_i, eq. 6). They show where ASIGN's numbers come from."""


def fold_means(sections: Sequence[dict], method: str) -> dict:
    """Unweighted mean over sections of each metric of ``method``."""
    return {m: _nanmean([_f(s["methods"][method][m]) for s in sections]) for m in METRICS}


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def aggregate(fold_results: Sequence[dict]) -> dict:
    """{method: {"mean": {metric}, "std": {metric}}} over folds (population std)."""
    methods = list(fold_results[0]["mean"])
    agg = {}
    for meth in methods:
        vals = {m: np.array([_f(fr["mean"][meth][m]) for fr in fold_results]) for m in METRICS}
        agg[meth] = {"mean": {m: _nanmean(v) for m, v in vals.items()},
                     "std": {m: (float(np.std(v[~np.isnan(v)])) if (~np.isnan(v)).any()
                                 else float("nan")) for m, v in vals.items()}}
    return agg


def json_safe(x):
    """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=1, allow_nan=False))
    tmp.replace(path)


# ---- one fold -------------------------------------------------------------------------------

def evaluate_fold(config, workdir: Path, fold, eval_fn, graphs: Mapping, genes: Sequence[str],
                  sections: Mapping[str, Sequence[str]], pad_fn, pred_names: Mapping[str, str],
                  write: bool = True) -> tuple[dict, dict]:
    """Scores ASIGN and the baselines on the test layers of one fold.

    Args:
      config: full config (graph.spot_radius, train.eval_genes).
      workdir: run folder (predictions/ and plots/ go there when ``write``).
      fold: ``training.folds.Fold``.
      eval_fn: ``(padded masked sample) -> model output dict`` (jitted ``loop.eval_step``).
      graphs: {sample id: SampleGraph} (unmasked: the truth comes from here).
      genes: (G,) gene names.
      sections: {sample id: section names in layer order}.
      pad_fn: ``SampleGraph -> padded batch dict`` (the fold's shared budget).
      pred_names: {sample id: file stem of predictions/<stem>.h5ad}.

    Returns:
      (fold result: {"fold", "test_samples", "known_layer", "sections": [{sample, section,
       layer, methods: {method: metrics}, overlap_fallback}], "mean": {method: metrics}},
       per-gene r: {method: (n_sections, G)}).
    """
    from asign_jax.training import batches

    methods = tuple(MODEL_OUTPUTS) + baselines.METHODS
    sec_results, per_gene = [], {m: [] for m in methods}
    for sid in fold.test_samples:
        k = fold.known_layer[sid]
        masked = batches.mask_sample(graphs[sid], "test", k)
        out = eval_fn(pad_fn(masked))
        spot = batches.unpadded_nodes(graphs[sid], "spot")
        mspot = batches.unpadded_nodes(masked, "spot")
        n = len(spot["layer"])
        truth = np.asarray(spot["label"], np.float32)
        layer = np.asarray(spot["layer"])
        preds = {m: np.asarray(out[key], np.float32)[:n] for m, key in MODEL_OUTPUTS.items()}
        base, info = baselines.predict_sample(mspot, k, float(config.graph.spot_radius))
        preds.update(base)
        names = (list(sections.get(sid, [])) or list(getattr(graphs[sid], "section_names", []))
                 or [f"layer{l}" for l in range(int(layer.max()) + 1)])
        for l in sorted(set(layer.tolist()) - {k}):
            rows = layer == l
            res = {"sample": sid, "section": names[l], "layer": int(l), "n_spots": int(rows.sum()),
                   "methods": {}, "overlap_fallback": int(np.sum(rows & info["overlap_fallback"]))}
            for m in methods:
                met, r = section_metrics(preds[m][rows], truth[rows])
                res["methods"][m] = met
                per_gene[m].append(r)
            sec_results.append(res)
        if write:
            write_predictions(Path(workdir) / "predictions" / f"{pred_names.get(sid, sid)}.h5ad",
                              preds, truth, spot, names, k, genes, fold)
            plot_gene_maps(Path(workdir) / "plots", pred_names.get(sid, sid), preds, truth, spot,
                           names, k, genes, config.train.eval_genes)
        logger.info("fold %d, sample %s: %d spots, %d test sections; overlap fallback for %d spots",
                    fold.index, sid, n, len(set(layer.tolist())) - 1,
                    int(np.sum(info["overlap_fallback"] & (layer != k))))
    result = {"fold": fold.index, "test_samples": list(fold.test_samples),
              "known_layer": dict(fold.known_layer), "sections": sec_results,
              "mean": {m: fold_means(sec_results, m) for m in methods}}
    return result, {m: np.stack(v) for m, v in per_gene.items()}


# ---- writers --------------------------------------------------------------------------------

def write_predictions(path: Path, preds: dict, truth: np.ndarray, spot: dict,
                      section_names: Sequence[str], known_layer: int, genes: Sequence[str],
                      fold) -> Path:
    """AnnData: X = ASIGN prediction, layers truth / known_mean / overlap, obs per spot."""
    import anndata as ad
    import pandas as pd

    layer = np.asarray(spot["layer"]).astype(int)
    xy = np.asarray(spot["xy"], np.float64)
    counters: dict = {}
    index = []
    for l in layer:
        counters[l] = counters.get(l, -1) + 1
        index.append(f"{section_names[l]}_{counters[l]}")
    # object-dtype strings: anndata 0.12 cannot write pandas 3's default Arrow strings
    obs = pd.DataFrame({"section": pd.Categorical.from_codes(
                            layer, categories=pd.Index(list(section_names), dtype=object)),
                        "layer": layer, "known": layer == known_layer, "x": xy[:, 0],
                        "y": xy[:, 1], "z": layer.astype(np.float64)},
                       index=pd.Index(index, dtype=object))
    adata = ad.AnnData(X=preds["asign"].astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index([str(g) for g in genes], dtype=object)))
    adata.layers["truth"] = truth.astype(np.float32)
    for m, p in preds.items():
        if m != "asign":
            adata.layers[m] = p.astype(np.float32)
    adata.uns["fold"] = int(fold.index)
    adata.uns["known_layer"] = int(known_layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def plot_gene_maps(out_dir: Path, stem: str, preds: dict, truth: np.ndarray, spot: dict,
                   section_names: Sequence[str], known_layer: int, genes: Sequence[str],
                   eval_genes: Sequence[str]) -> list[Path]:
    """Per test section and gene of ``eval_genes`` present: truth | ASIGN | overlap scatter."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genes = [str(g) for g in genes]
    layer = np.asarray(spot["layer"]).astype(int)
    xy = np.asarray(spot["xy"])
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for gname in eval_genes:
        if gname not in genes:
            continue
        g = genes.index(gname)
        for l in sorted(set(layer.tolist()) - {known_layer}):
            rows = layer == l
            panels = [("truth", truth[rows, g]), ("ASIGN", preds["asign"][rows, g]),
                      ("overlap", preds["overlap"][rows, g])]
            vmin, vmax = np.percentile(truth[rows, g], [1, 99])
            fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
            for ax, (title, v) in zip(axes, panels):
                sc = ax.scatter(xy[rows, 0], xy[rows, 1], c=v, s=12, cmap="viridis",
                                vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6)
                ax.set_title(f"{title}: {gname}")
                ax.set_aspect("equal")
                ax.invert_yaxis()
                ax.set_xticks([])
                ax.set_yticks([])
            fig.colorbar(sc, ax=axes, shrink=0.8)
            fig.suptitle(f"{stem} section {section_names[l]} (layer {l}; known layer {known_layer})")
            p = out_dir / f"genemap_{stem}_{section_names[l]}_{gname}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            written.append(p)
    return written


def plot_section_box(path: Path, fold_results: Sequence[dict]) -> Path:
    """Box plot of the per-section pcc_gene and pcc_spot of every method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(fold_results[0]["mean"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("pcc_gene", "pcc_spot")):
        data = []
        for m in methods:
            v = np.array([_f(s["methods"][m][metric]) for fr in fold_results for s in fr["sections"]])
            data.append(v[~np.isnan(v)])
        ax.boxplot(data, tick_labels=methods)
        ax.set_title(f"per-section {metric}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_per_gene(path: Path, genes: Sequence[str], per_gene_folds: Sequence[dict]) -> Path:
    """CSV gene, <method>...: per-gene PCC, mean over each fold's sections then over folds."""
    methods = list(per_gene_folds[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = {m: np.nanmean(np.stack([np.nanmean(pg[m], axis=0) for pg in per_gene_folds]), axis=0)
                 for m in methods}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["gene"] + [f"pcc_{m}" for m in methods])
        for i, g in enumerate(genes):
            w.writerow([g] + ["" if np.isnan(table[m][i]) else f"{table[m][i]:.6f}" for m in methods])
    return path


def summary_table(agg: dict) -> str:
    """Method x metric table, "mean +- std" over folds; "undefined" where a metric has no value
    (pcc_gene of ``known_mean``: a constant prediction has no correlation)."""
    head = ["method"] + list(METRICS)
    rows = [head]
    cell = lambda v, m: ("undefined" if np.isnan(v["mean"][m])
                         else f"{v['mean'][m]:.4f} +- {v['std'][m]:.4f}")
    for meth, v in agg.items():
        rows.append([meth] + [cell(v, m) for m in METRICS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_reports(workdir: Path, fold_results: Sequence[dict], per_gene_folds: Sequence[dict],
                  genes: Sequence[str]) -> dict:
    """metrics.json, per_gene_pcc.csv and plots/pcc_sections.png; returns the aggregate."""
    workdir = Path(workdir)
    agg = aggregate(fold_results)
    metrics = {"folds": list(fold_results), "mean": agg["asign"]["mean"], "std": agg["asign"]["std"],
               "components": {m: v for m, v in agg.items() if m in COMPONENTS},
               "baselines": {m: v for m, v in agg.items() if m in baselines.METHODS},
               "conventions": CONVENTIONS}
    write_json(workdir / "metrics.json", metrics)
    write_per_gene(workdir / "per_gene_pcc.csv", genes, per_gene_folds)
    plot_section_box(workdir / "plots" / "pcc_sections.png", fold_results)
    return agg


# ---- CLI: re-score from checkpoints ---------------------------------------------------------

def rescore(config, workdir) -> dict:
    """Re-evaluates every fold from its latest checkpoint and rewrites the reports."""
    from asign_jax.train import evaluate_all
    return evaluate_all(config, workdir)


def main(argv):
    from asign_jax.entry import start
    start(argv)
    rescore(_FLAGS.config, _FLAGS.workdir)


if __name__ == "__main__":
    from absl import app

    from asign_jax.train import define_flags

    _FLAGS = define_flags()
    app.run(main)
