"""A run folder's metrics.json as Markdown tables (the README's results tables come from this).

    python experiments/results_md.py RUN_FOLDER [--sections]

Prints, for the validation role (what every choice read) and the test layers (scored once):
every method row (the model, its components, the references, the synthetic oracle) with
MSE, MAE, pcc_gene (per gene across spots) and pcc_spot (per spot across genes), mean +- std
over folds; with ``--sections`` also MSE / pcc_gene per test section.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("mse", "mae", "pcc_gene", "pcc_spot")


def _cell(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "undefined"
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def _rows(block: dict) -> dict:
    """{method: {"mean": {...}, "std": {...}}} of a metrics.json test block."""
    rows = {}
    if "mean" in block:
        rows[block.get("method", "asign")] = {"mean": block["mean"], "std": block["std"]}
    for key in ("components", "baselines", "ceilings"):
        rows.update(block.get(key, {}))
    return rows


def table(rows: dict) -> str:
    lines = ["| method | MSE | MAE | pcc_gene (per gene) | pcc_spot (per spot) |",
             "|---|---|---|---|---|"]
    for m, v in rows.items():
        lines.append(f"| {m} | " + " | ".join(_cell(v["mean"].get(k), v["std"].get(k))
                                                for k in METRICS) + " |")
    return "\n".join(lines)


def section_table(metrics: dict) -> str:
    """MSE / pcc_gene of every method per test section (fold-major)."""
    secs = [s for f in metrics["folds"] for s in f["sections"]]
    methods = list(secs[0]["methods"])
    head = "| method | " + " | ".join(f"{s['section']} MSE / pcc_gene" for s in secs) + " |"
    lines = [head, "|---|" + "---|" * len(secs)]
    for m in methods:
        cells = [f"{_cell(s['methods'][m]['mse'])} / {_cell(s['methods'][m]['pcc_gene'])}"
                 for s in secs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--sections", action="store_true")
    args = ap.parse_args()
    path = args.run / "metrics.json"
    if not path.exists():
        raise SystemExit(f"error: {path}: no metrics.json (run python -m asign_jax.train first)")
    metrics = json.loads(path.read_text())
    val = metrics.get("validation")
    if val:
        print(f"Validation role ({len(val['folds'])} fold(s); what every choice read)\n")
        print(table(val["methods"]) + "\n")
    print(f"Test layers ({len(metrics['folds'])} fold(s), scored once)\n")
    print(table(_rows(metrics)))
    if args.sections:
        print("\nPer test section\n")
        print(section_table(metrics))


if __name__ == "__main__":
    main()
