"""What a run writes: metrics.json, per_gene_pcc.csv, predictions/<sample>.h5ad (and
<sample>.zarr, SpatialData, when spatialdata is installed), plots, and the summary table on
stdout."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax import atomic
from asign_jax.data.lattice import infer_lattice
from asign_jax.evaluation import references as baselines
from asign_jax.evaluation import spatial_data, spatialdata_out
from asign_jax.evaluation.figures import plot_gene_maps, plot_section_box  # noqa: F401
from asign_jax.evaluation.metrics import CONVENTIONS, METRICS, aggregate, nan_or  # noqa: F401
from asign_jax.evaluation.scoring import COMPONENTS, SamplePredictions


def write_predictions(path: Path, p: SamplePredictions, genes: Sequence[str],
                      fold_index: int, prepared) -> Path:
    """AnnData (``spatial_data`` convention): X = the model's prediction (``p.method``),
    layers truth / every other method (its components, the references), obs section, layer,
    spot_id (original), known; obsm spatial (the section's own pixels) and spatial_3d
    (registered x, y; z = layer index); uns spatial with each section's lowres image.

    ``prepared``: the sample's ``PreparedSample`` (spot ids, pixel centres and images, in the
    node order of the graph).
    """
    secs = prepared.sections
    if [s.name for s in secs] != list(p.section_names):
        raise ValueError(f"prepared sections {[s.name for s in secs]} != predicted "
                         f"{list(p.section_names)}")
    layer = np.asarray(p.spot["layer"]).astype(int)
    xy = np.asarray(p.spot["xy"], np.float64)
    adata = spatial_data.make_adata(
        p.preds[p.method], genes, p.section_names, layer,
        np.concatenate([s.spot_ids for s in secs]),
        np.concatenate([s.pixel_xy for s in secs]),
        np.column_stack([xy, layer.astype(np.float64)]),
        columns={"known": layer == p.known_layer},
        layers={"truth": p.truth, **{m: v for m, v in p.preds.items() if m != p.method}})
    adata.uns["method"] = p.method
    adata.uns["fold"] = int(fold_index)
    adata.uns["known_layer"] = int(p.known_layer)
    adata.uns["spatial"] = {
        s.name: spatial_data.spatial_library(
            s.image_path, infer_lattice(s.pixel_xy, where=s.name).spot_diameter, hires=False,
            image_scale=float(getattr(s, "image_scale", 1.0)))
        for s in secs if s.image_path}
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    # the same table as SpatialData (optional); block system = the least-squares affine of
    # each section's pixels onto its registered coordinates
    affines = np.stack([_fit_affine(s.pixel_xy, xy[layer == l]) for l, s in enumerate(secs)])
    spatialdata_out.write_volume_zarr(
        path.with_suffix(".zarr"), adata, secs, affines, list(range(len(secs))),
        {s.name: infer_lattice(s.pixel_xy, where=s.name).spot_diameter for s in secs},
        image_long_side=PREDICTION_IMAGE_LONG_SIDE)
    return path


PREDICTION_IMAGE_LONG_SIDE = 1024


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 3) least-squares affine src (n, 2) -> dst (n, 2) (identity for < 3 points)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if len(src) < 3:
        return np.eye(3)
    m, *_ = np.linalg.lstsq(np.c_[src, np.ones(len(src))], dst, rcond=None)
    return np.vstack([m.T, [0.0, 0.0, 1.0]])


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
                  genes: Sequence[str], val_results: Sequence[dict] = (),
                  method: str = "asign", n_params: Optional[int] = None,
                  provenance: Optional[dict] = None,
                  run_warnings: Optional[Sequence[str]] = None) -> dict:
    """metrics.json, per_gene_pcc.csv and plots/pcc_sections.png; returns the test aggregate.

    metrics.json: the test block ("method", "folds", "mean"/"std" of the model ``method``,
    "components" (ASIGN's halves), "baselines" (the references), on synthetic data "ceilings"
    = the oracle, "n_params") and, when the folds have a validation role, a "validation" block
    ("folds" with each fold's selection record, "methods") beside it: the only scores any
    selection read. The test block is scored once, with the selected params. ``provenance``
    (``asign_jax.provenance.record``: commit, command, config.json) and ``run_warnings`` (the
    WARNING lines of the run, "warnings") are stored as given.
    """
    workdir = Path(workdir)
    agg = aggregate(fold_results)
    metrics = {"method": method, "folds": list(fold_results), "mean": agg[method]["mean"],
               "std": agg[method]["std"],
               "components": {m: v for m, v in agg.items() if m in COMPONENTS},
               "baselines": {m: v for m, v in agg.items() if m in baselines.METHODS},
               "conventions": CONVENTIONS}
    ceilings = {m: v for m, v in agg.items() if m in baselines.CEILINGS}
    if ceilings:
        metrics["ceilings"] = ceilings
    if n_params is not None:
        metrics["n_params"] = int(n_params)
    if provenance is not None:
        metrics["provenance"] = provenance
    if run_warnings is not None:
        metrics["warnings"] = list(run_warnings)
    if val_results:
        vagg = aggregate(val_results)
        metrics["validation"] = {"folds": list(val_results), "methods": vagg}
    atomic.write_json(workdir / "metrics.json", metrics)
    write_per_gene(workdir / "per_gene_pcc.csv", genes, per_gene_folds)
    plot_section_box(workdir / "plots" / "pcc_sections.png", fold_results)
    return agg
