"""Writing one table of ``paper_tables.py`` (its module doc): markdown, CSV and box plots.

``write_table`` turns the rows' results (``paper_tables_rows.read_row``) into
``table<k>.md`` / ``table<k>.csv`` / ``table<k>_<metric>.png``, with each row's Welch's t-test
against the table's base row and the paper's numbers beside.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from asign_jax import atomic
from asign_jax.evaluation.metrics import METRICS, nanmean
from paper_tables_spec import PAPER, ROWS, TABLE4_LABELS, TABLE_BASE, TABLES, TUNE_METRIC


def summarise(values: np.ndarray) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    return (nanmean(v), float(np.std(v))) if v.size else (float("nan"), float("nan"))


def welch(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's two-sided t-test p-value of the per-section values (NaN if undefined)."""
    from scipy import stats

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def fmt(mean: float, std: float) -> str:
    return "undefined" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def write_table(out_dir: Path, k: int, dataset: str, paper_set: str, results: dict,
                synthetic: bool) -> dict:
    """table<k>.md / .csv / _<metric>.png; returns {row: {metric: p-value}}."""
    title, rows = TABLES[k]
    rows = [r for r in rows if r in results]
    base_id = TABLE_BASE[k]
    base = results.get(base_id)
    label = lambda r: TABLE4_LABELS[r] if k == 4 else ROWS[r][0]
    pvals = {r: {m: (welch(results[r]["sections"][m], base["sections"][m])
                     if base is not None and r != base_id else float("nan"))
                 for m in METRICS} for r in rows}
    paper = PAPER.get(paper_set, {})
    tuned = [results[r]["tuned"] for r in rows if results[r].get("tuned")]
    metric = tuned[0]["metric"] if tuned else TUNE_METRIC
    head = (["row", "encoder", "params", "run (s)"]
            + (["chosen on validation", f"val {metric}", "budget"] if tuned else [])
            + [f"test {m}" if tuned else m for m in METRICS]
            + ["paper MSE", "paper MAE", "paper PCC (per spot)"])
    note = (f"Paper columns: {paper_set} (ASIGN paper; on other data they are for orientation "
            "only)." if synthetic else f"Paper columns: {paper_set} (ASIGN paper).")
    if tuned:
        note += (" Every learned row tuned on validation under one budget: "
                 f"{tuned[0]['candidates']} candidates x {tuned[0]['steps']} steps.")
    lines = [f"### {title} — {dataset}", "", note, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_rows = []
    for r in rows:
        ref = paper.get(r)
        lines.append("| " + " | ".join(_md_cells(r, results[r], label(r), tuned, pvals[r], ref))
                     + " |")
        csv_rows.append(_csv_row(k, dataset, r, results[r], label(r), tuned, pvals[r], ref))
    lines += _footnotes(results, rows, label, base_id, tuned)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / f"table{k}.md", "\n".join(lines) + "\n")
    with open(out_dir / f"table{k}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    tick = lambda r: (f"{label(r)} [c{results[r]['tuned']['chosen']}]"
                      if results[r].get("tuned") else label(r))
    plot_boxes(out_dir, k, dataset, [tick(r) for r in rows],
               [results[r]["sections"] for r in rows], [pvals[r] for r in rows], label(base_id),
               note=(f"\ntuned on validation: {tuned[0]['candidates']} candidates x "
                     f"{tuned[0]['steps']} steps per row; [cN] = the chosen candidate"
                     if tuned else ""))
    return pvals



def _md_cells(r: str, res: dict, label: str, tuned: list, pvals: dict, ref) -> list:
    """The markdown cells of row ``r``: label, encoder, params, time, the tuned choice (with
    ``--tune``), mean ± std of every metric (* = p < 0.05), the paper's three numbers."""
    cells = [label, res["encoder"], f"{res['n_params']:,}" if res.get("n_params") else "-",
             f"{res['seconds']:.0f}" if res.get("seconds") else "-"]
    tu = res.get("tuned")
    if tuned:
        cells += ([tu["label"], ("undefined" if np.isnan(tu["val"]) else f"{tu['val']:.3f}")
                   + ("" if tu["guard_ok"] else " (MSE > known_mean)"),
                   f"{tu['candidates']} x {tu['steps']} steps"
                   + (f" ({tu['n_failed']} diverged)" if tu["n_failed"] else "")]
                  if tu else ["- (reference)" if ROWS[r][1] is None else "-", "-", "-"])
    for m in METRICS:
        mean, std = summarise(res["per_fold"][m])
        star = "*" if pvals[m] < 0.05 else ""
        cells.append("failed" if res.get("failed") else fmt(mean, std) + star)
    return cells + ([f"{v:.3f}" for v in ref] if ref else ["-", "-", "-"])


def _csv_row(k: int, dataset: str, r: str, res: dict, label: str, tuned: list, pvals: dict,
             ref) -> dict:
    """The csv row of row ``r`` (every number of its markdown row, unrounded)."""
    row = {"table": k, "dataset": dataset, "row": r, "label": label,
           "encoder": res["encoder"], "n_params": res.get("n_params") or "",
           "n_folds": res["n_folds"], "seconds": res.get("seconds") or ""}
    if tuned:
        tu = res.get("tuned") or {}
        row.update(tuned_candidate=tu.get("chosen", ""),
                   tuned_overrides=json.dumps(tu["overrides"]) if tu else "",
                   tuned_metric=tu.get("metric", ""), tuned_val=tu.get("val", ""),
                   tuned_val_mse=tu.get("val_mse", ""), tuned_guard_ok=tu.get("guard_ok", ""),
                   budget_candidates=tu.get("candidates", ""),
                   budget_steps=tu.get("steps", ""), budget_failed=tu.get("n_failed", ""))
    for m in METRICS:
        mean, std = summarise(res["per_fold"][m])
        row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_p_welch"] = mean, std, pvals[m]
    for name, v in zip(("paper_mse", "paper_mae", "paper_pcc_spot"), ref or ("",) * 3):
        row[name] = v
    return row


def _footnotes(results: dict, rows: list, label, base_id: str, tuned: list) -> list:
    """The lines under the table: failed rows, what the columns mean, the tuning protocol."""
    lines = []
    n_folds = max(res["n_folds"] for res in results.values())
    failed = [f"{label(r)}: {results[r]['failed']}" for r in rows if results[r].get("failed")]
    if failed:
        lines += ["", "Failed rows (training stopped; no number is reported): "
                  + "; ".join(failed)]
    lines += ["", f"Mean ± population std over {n_folds} fold(s). pcc_gene: per gene across "
              "spots; pcc_spot: per spot across genes (the paper's PCC). * = Welch's t-test "
              f"of the per-section values against {label(base_id)}, p < 0.05. Encoder 'cached': "
              "the frozen cached patch features / token grids (the config's features.encoder) "
              "every method reads on a CPU. "
              "run (s): wall time of the row's run (training + scoring of every fold) when it "
              "was computed" + (", of every candidate of its sweep plus the test scoring, with "
                                "--tune." if tuned else ".")]
    if tuned:
        t = tuned[0]
        lines += ["", f"Tuned (--tune): each learned row is the candidate with the best "
                  f"validation {t['metric']} of its method among {t['candidates']} (c0 = the "
                  "row's own config, the others the half fraction of the two-level design over "
                  f"{t['grid']}; lr is train.learning_rate, and ASIGN's rows train at lr x "
                  "the config's model.asign.lr_multiplier), "
                  f"{t['steps']} steps each, the step chosen on validation; a candidate worse "
                  "than known_mean on validation MSE ranks last. val: that candidate's "
                  "validation score (mean over folds); test: scored once, for it only. "
                  "References: read from ASIGN's chosen candidate. Every candidate's score: "
                  "tables/<dataset>/<row>/sweep.json."]
    return lines


def plot_boxes(out_dir: Path, k: int, dataset: str, labels: list, sections: list,
               pvals: list, base: str, note: str = "") -> None:
    """Fig. 4 style: one box per row of the per-section values of each metric, * if p < 0.05
    (``note``: appended to the title, e.g. the tuning budget)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for m in METRICS:
        data = [s[m][~np.isnan(s[m])] for s in sections]
        fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(labels)), 4))
        ax.boxplot([d if d.size else [np.nan] for d in data], tick_labels=labels)
        top = np.nanmax([d.max() for d in data if d.size]) if any(d.size for d in data) else 1
        for i, p in enumerate(pvals):
            if p[m] < 0.05:
                ax.text(i + 1, top, "*", ha="center", va="bottom", fontsize=14)
        ax.set_title(f"Table {k}, {dataset.split(' (')[0]}: {m} per test section "
                     f"(* p < 0.05 vs {base}){note}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for t in ax.get_xticklabels():           # right-aligned to the tick: no overlap
            t.set_ha("right")
            t.set_rotation_mode("anchor")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / f"table{k}_{m}.png", dpi=90)
        plt.close(fig)
