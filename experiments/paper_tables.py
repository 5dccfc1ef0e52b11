"""The paper's Tables I-IV on the data at hand, beside the paper's own numbers.

    python experiments/paper_tables.py --table 1,2,3,4 --config configs/synthetic.py \
        [--out DIR] [--data_dir PREPARED_RUN] [--rows asign,stnet] [--config.a.b=v ...] \
        [--tune [--tune_fields train.learning_rate,dropout]]

Every row is ONE run of ``asign_jax.pipeline.train_and_evaluate`` (the code behind
``python -m asign_jax.train``) with the dataset config plus the row's overrides (another
``model.name`` or an ablation switch): the same folds, validation protocol, genes, masking and
scoring code for every row (``DIR`` = ``--out``, default
``runs/experiments/paper_tables/<config name>``). The prepared data, registration and graphs
are built once in ``DIR/data`` (or read from ``--data_dir``, any prepared run folder) and shared by all rows.

  Table I    ST-Net, EGN, HisToGene, BLEEP, His2ST, TRIPLEX (App. Table V), ASIGN 2D; the
             references overlap, similarity (and known_mean, ridge when the project has it),
             scored in every run; ASIGN 3D.
  Table II   ASIGN without the GAT blocks / the cross-attention / both, and with both.
  Table III  ASIGN without the CLI (0 %) and with 10 / 20 / 30 % known spots per training step.
  Table IV   2D graph (= ASIGN 2D) vs 3D graph, both without the CLI (as in the paper, whose
             Table IV rows repeat Table I's "ASIGN 2D" and Table III's "w. 0 %").

Layout: ``DIR/rows/<model>-<hash>/`` is a normal run folder per distinct row config (rows of
several tables with the same config share it); a finished row (its metrics.json and
row.json with the same config) is not recomputed, an unfinished one resumes from its
checkpoints. ``DIR/tables/table<k>.{md,csv}`` and ``table<k>_<metric>.png`` (Fig. 4 style:
per-section box plots, Welch's t-test of each row against ASIGN, * = p < 0.05).
Numbers: mean +- population std over folds of the per-fold means over test sections (the
project's convention, ``evaluation/metrics.py``); pcc_gene = per gene across spots, pcc_spot =
per spot across genes. The paper's PCC is the official code's per-spot PCC, so it sits beside
pcc_spot. The paper's column is the dataset the data format corresponds to (her2st -> HER2,
visium -> DLPFC, stnet -> ST-Data); synthetic data shows HER2's numbers for orientation only.

``--tune``: every learned row is instead the best of a validation sweep
(``experiments/sweep.py``'s ``run_sweep``, mode ``half``) over ``TUNE_GRID``, the SAME grid,
number of candidates and ``train.steps`` for every row: candidate 0 is the row's config as
above (the method's current defaults; for ASIGN its hand-staged choices), the others the half
fraction of the two-level design over the grid's fields (9 candidates for its 4 fields;
``--tune_fields`` narrows the fields, for every row alike). Each candidate is a run folder
``rows/<model>-<hash>/`` trained with the test rows unscored; the candidate with the best
validation ``pcc_gene`` of the row's method wins (a candidate worse than ``known_mean`` on
validation MSE ranks last; one whose training diverged after that); the checkpoint step is
chosen on validation within each candidate as without ``--tune`` (``train.select``).
``tables/<dataset>/<row>/sweep.json`` holds every candidate's validation scores and the
choice, written before the chosen candidate is scored on test, once. The tables then show
per row the chosen candidate, the validation score that chose it, the test scores and the
budget (candidates x steps); the references are read from ASIGN's chosen run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path

from absl import flags

import numpy as np

from asign_jax import atomic, entry, pipeline, stages
from asign_jax.config import block_name, get_field, set_field
from asign_jax.errors import ConfigError, DataError, TrainingError
from asign_jax.evaluation import references
from asign_jax.evaluation.metrics import METRICS, nan_or, nanmean
import sweep   # experiments/ (the script's folder) is on sys.path

logger = logging.getLogger("paper_tables")

# ---- the rows ----------------------------------------------------------------------------------

ASIGN = "asign"
ROWS = {
    # id: (label, overrides) for learned rows; references have overrides None
    "stnet": ("ST-Net", {"model.name": "stnet"}),
    "egn": ("EGN", {"model.name": "egn"}),
    "histogene": ("HisToGene", {"model.name": "histogene"}),
    "bleep": ("BLEEP", {"model.name": "bleep"}),
    "his2st": ("His2ST", {"model.name": "his2st"}),
    "triplex": ("TRIPLEX", {"model.name": "triplex"}),
    "asign2d": ("ASIGN 2D", {"model.name": "asign2d"}),
    "overlap": ("Overlap", None),
    "similarity": ("Similarity", None),
    "known_mean": ("known_mean", None),
    "ridge": ("ridge", None),
    "label_propagation": ("label_propagation", None),
    ASIGN: ("ASIGN 3D", {}),
    "no_gat_no_xattn": ("w.o GAT & Cross-atten", {"model.asign.use_gat": False,
                                                  "model.asign.use_cross_attention": False}),
    "no_xattn": ("w.o Cross-atten", {"model.asign.use_cross_attention": False}),
    "no_gat": ("w.o GAT", {"model.asign.use_gat": False}),
    # no CLI, so no eq.-6 blend either (the configs fit it on validation)
    "no_cli": ("w. 0% (w.o CLI)", {"model.asign.use_cli": False, "model.asign.blend": "learned"}),
    "known_10": ("w. 10%", {"train.known_fraction": 0.1, "train.known_mode": "fraction"}),
    "known_20": ("w. 20% (ASIGN)", {"train.known_fraction": 0.2, "train.known_mode": "fraction"}),
    "known_30": ("w. 30%", {"train.known_fraction": 0.3, "train.known_mode": "fraction"}),
}
TABLES = {
    1: ("Table I: 2D WSI-wise and 3D sample-wise methods",
        ["stnet", "egn", "histogene", "bleep", "his2st", "triplex", "asign2d", "overlap",
         "similarity", "known_mean", "ridge", "label_propagation", ASIGN]),
    2: ("Table II: functional blocks", ["no_gat_no_xattn", "no_xattn", "no_gat", ASIGN]),
    3: ("Table III: CLI block and known-label proportion",
        ["no_cli", "known_10", "known_20", "known_30"]),
    4: ("Table IV: graph construction (both without the CLI)", ["asign2d", "no_cli"]),
}
TABLE4_LABELS = {"asign2d": "2D WSI-wise", "no_cli": "3D Sample-wise"}
TABLE_BASE = {1: ASIGN, 2: ASIGN, 3: "known_20", 4: "no_cli"}
"""The row each table's Welch tests compare against (ASIGN as the paper set it up)."""

# ---- --tune: one search space and one budget for every learned row ------------------------------

class Times(float):
    """A grid value that multiplies the row config's own value of the field."""

    def __repr__(self):
        return f"x{float(self):.3g}"


DROPOUT = "model.<method>.dropout"
"""TUNE_GRID's key for the method's dropout, resolved by ``dropout_field``."""

TUNE_GRID = {
    "train.learning_rate": (Times(1 / 3), Times(3)),   # around the dataset config's rate
    "train.weight_decay": (1e-4, 0.05),
    DROPOUT: (0.0, 0.3),
    "train.feature_norm": ("sample", "none"),
}
"""The fields every learned row is tuned over, two values each (sweep mode ``half``: the row's
own config + 2^(k-1) candidates; k = 4 -> 9). ``train.steps`` is the dataset config's for
every row (the step budget); the checkpoint step is chosen on validation (``train.select``)."""
TUNE_LABELS = {"train.learning_rate": "lr", "train.weight_decay": "wd", DROPOUT: "dropout",
               "train.feature_norm": "norm"}
TUNE_METRIC = "pcc_gene"


def dropout_field(model_name: str) -> str:
    """The dotted dropout field(s) of ``model_name`` ('+' joins several: one grid axis)."""
    block = block_name(model_name)                      # asign2d reads ASIGN's block
    if block == "triplex":
        return "+".join(f"model.triplex.dropout_{p}" for p in ("fusion", "global", "neighbor"))
    return f"model.{block}.dropout"


def tune_grid(config, fields=None) -> dict:
    """TUNE_GRID (or its ``fields``) for the row config ``config``: concrete dotted fields and
    values, as ``sweep.run_sweep`` takes them."""
    keys = list(TUNE_GRID) if fields is None else list(fields)
    unknown = [k for k in keys if k not in TUNE_GRID]
    if unknown or not keys:
        raise ConfigError(f"tune fields {unknown or 'none'}: expected TUNE_GRID's keys")
    grid = {}
    for key in keys:
        field = dropout_field(str(config.model.name)) if key == DROPOUT else key
        base = get_field(config, field.split("+")[0])
        grid[field] = [float(f"{float(base) * v:.3g}") if isinstance(v, Times) else v
                       for v in TUNE_GRID[key]]
    return grid


def tune_fields(text: str) -> list:
    """--tune_fields ("train.learning_rate,dropout") -> TUNE_GRID keys."""
    names = {TUNE_LABELS[k]: k for k in TUNE_GRID} | {k: k for k in TUNE_GRID}
    keys = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [k for k in keys if k not in names]
    if unknown or len(keys) < 2:
        what = f"unknown {unknown}" if unknown else "two or more"
        raise ConfigError(f"--tune_fields: {what} of {sorted(names)} (the half fraction needs "
                          "two fields)")
    return [names[k] for k in keys]


def candidate_label(overrides: dict, index: int) -> str:
    """"c0 (own config)" or "c3: lr=0.001 wd=0.05 dropout=0.3 norm=none"."""
    if not overrides:
        return f"c{index} (own config)"
    return f"c{index}: " + " ".join(f"{_short(f)}={_value(v)}" for f, v in overrides.items())


def _short(field: str) -> str:
    return "dropout" if "dropout" in field else TUNE_LABELS.get(field, field.rsplit(".", 1)[-1])


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def tune_row(config, workdir: Path, data_dir: Path, row_id: str, sweep_dir: Path,
             fields=None) -> tuple:
    """(run folder of the chosen candidate, sweep record) of one tuned row (module doc).

    A sweep.json of the same row config and grid that holds its test score (or whose every
    candidate failed) is read back, never recomputed; an unfinished one resumes (each
    candidate's run folder is reused or resumed)."""
    grid = tune_grid(config, fields)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "sweep.json"
    config_hash = row_dir(workdir, config).name
    if path.exists():
        old = json.loads(path.read_text())
        if (old.get("row_config") == config_hash and old.get("grid") == json.loads(json.dumps(grid))
                and ("test" in old or all(c.get("failed") for c in old["candidates"]))):
            logger.info("row %s: tuned sweep finished in %s; not recomputed", row_id, path)
            return Path(old["candidates"][old["chosen"]["index"]]["folder"]), old
    logger.info("row %s: tuning over %s", row_id, grid)
    t0 = time.time()
    record = sweep.run_sweep(config, grid, sweep_dir, mode="half", metric=TUNE_METRIC,
                             data_dir=data_dir, progress=False,
                             folder=lambda cfg: row_dir(workdir, cfg))
    record.update(row=row_id, row_config=config_hash, seconds=round(time.time() - t0, 1))
    atomic.write_json(path, record)
    return Path(record["candidates"][record["chosen"]["index"]]["folder"]), record


def tuned_info(record: dict) -> dict:
    """What a table shows of a row's sweep: the chosen candidate, its validation score, the
    budget."""
    chosen = record["candidates"][record["chosen"]["index"]]
    method = record["method"]
    val = chosen["validation"][method]["mean"] if chosen["validation"] else None
    return {"chosen": chosen["index"], "label": candidate_label(chosen["overrides"],
                                                                 chosen["index"]),
            "overrides": chosen["overrides"], "metric": record["metric"],
            "val": nan_or(val[record["metric"]]) if val else float("nan"),
            "val_mse": nan_or(val["mse"]) if val else float("nan"),
            "guard_ok": bool(chosen["key"][1]), "candidates": record["budget"]["candidates"],
            "steps": record["budget"]["steps"],
            "n_failed": sum(1 for c in record["candidates"] if c.get("failed")),
            "grid": ", ".join(f"{_short(f)} {'/'.join(map(_value, v))}"
                              for f, v in record["grid"].items())}


# ---- the paper's numbers (MSE, MAE, PCC); PCC = the official code's per-spot PCC -----------------

PAPER = {
    "HER2": {
        "stnet": (0.663, 0.633, 0.430), "egn": (0.580, 0.585, 0.442),
        "histogene": (0.669, 0.644, 0.432), "bleep": (0.743, 0.665, 0.340),
        "his2st": (0.591, 0.591, 0.441), "triplex": (0.592, 0.591, 0.450),
        "asign2d": (0.579, 0.590, 0.476), "overlap": (0.461, 0.532, 0.625),
        "similarity": (0.449, 0.517, 0.649), ASIGN: (0.363, 0.473, 0.693),
        "no_gat_no_xattn": (0.674, 0.531, 0.659), "no_xattn": (0.578, 0.692, 0.686),
        "no_gat": (0.466, 0.627, 0.677), "no_cli": (0.622, 0.606, 0.635),
        "known_10": (0.542, 0.563, 0.677), "known_20": (0.363, 0.473, 0.693),
        "known_30": (0.397, 0.492, 0.708)},
    "DLPFC": {
        "stnet": (0.496, 0.552, 0.738), "egn": (0.401, 0.490, 0.757),
        "histogene": (0.348, 0.472, 0.753), "bleep": (0.304, 0.429, 0.737),
        "his2st": (0.409, 0.494, 0.764), "triplex": (0.645, 0.621, 0.766),
        "asign2d": (0.275, 0.411, 0.766), "overlap": (0.292, 0.422, 0.749),
        "similarity": (0.278, 0.412, 0.762), ASIGN: (0.353, 0.458, 0.773),
        "no_gat_no_xattn": (0.405, 0.497, 0.767), "no_xattn": (0.364, 0.470, 0.770),
        "no_gat": (0.368, 0.475, 0.768), "no_cli": (0.420, 0.503, 0.770),
        "known_10": (0.402, 0.494, 0.772), "known_20": (0.353, 0.458, 0.773),
        "known_30": (0.278, 0.416, 0.767)},
    "ST-Data": {
        "stnet": (0.804, 0.705, 0.517), "egn": (0.674, 0.644, 0.554),
        "histogene": (0.575, 0.598, 0.552), "bleep": (0.581, 0.590, 0.496),
        "his2st": (0.534, 0.568, 0.539), "triplex": (0.627, 0.621, 0.553),
        "asign2d": (0.528, 0.566, 0.552), "overlap": (0.447, 0.525, 0.663),
        "similarity": (0.579, 0.548, 0.696), ASIGN: (0.332, 0.459, 0.739),
        "no_gat_no_xattn": (0.541, 0.571, 0.706), "no_xattn": (0.472, 0.535, 0.710),
        "no_gat": (0.451, 0.528, 0.708), "no_cli": (0.485, 0.545, 0.604),
        "known_10": (0.406, 0.499, 0.708), "known_20": (0.332, 0.459, 0.739),
        "known_30": (0.329, 0.458, 0.741)},
}
"""Tables I, II, III (HER2), V (TRIPLEX), VI (DLPFC), VII (ST-Data). Table IV's rows are
Table I's ASIGN 2D and Table III's w. 0 % (identical numbers in the paper; for DLPFC Table VI's
"2D WSI-wise" / "3D Sample-wise" equal ASIGN 2D / w. 0 % too). ST-Data's Table VII has no
"3D Sample-wise" row; w. 0 % stands in."""
PAPER_DATASET = {"her2st": "HER2", "visium": "DLPFC", "stnet": "ST-Data", "synthetic": "HER2"}


# ---- running the rows -----------------------------------------------------------------------

def row_config(config, overrides: dict):
    """A copy of ``config`` with the dotted ``overrides`` applied."""
    c = config.copy_and_resolve_references()
    for key, value in overrides.items():
        try:
            set_field(c, key, value)
        except ConfigError:
            raise ConfigError(f"paper_tables: unknown config field {key!r}") from None
    return c


def row_dir(workdir: Path, config) -> Path:
    """``rows/<model>-<hash of the whole resolved config>``: equal configs share a run."""
    text = config.to_json(sort_keys=True)
    return workdir / "rows" / f"{config.model.name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def run_row(config, workdir: Path, data_dir: Path, row_id: str) -> Path:
    """Trains and scores one row unless its run folder holds a finished run of this config.

    A row whose training stops on a non-finite loss (``TrainingError``) is recorded as failed
    (``failed.json``, shown as such in the table) and the other rows go on. Training is
    deterministic, so a failed row is not retried (delete its folder to run it again)."""
    d = row_dir(workdir, config)
    meta = d / "row.json"
    if ((d / "metrics.json").exists() and meta.exists()) or (d / "failed.json").exists():
        logger.info("row %s: finished%s in %s; not recomputed", row_id,
                    " (FAILED)" if (d / "failed.json").exists() else "", d)
        return d
    logger.info("row %s: running in %s", row_id, d)
    t0 = time.time()
    try:
        agg = pipeline.train_and_evaluate(config, d, data_dir=data_dir, progress=False)
    except TrainingError as e:
        logger.error("row %s FAILED: %s", row_id, e)
        atomic.write_json(d / "failed.json", {"row": row_id, "error": str(e),
                                               "seconds": round(time.time() - t0, 1)})
        return d
    if agg is None:
        raise RuntimeError(f"row {row_id}: training stopped early")
    atomic.write_json(meta, {"row": row_id, "config": json.loads(config.to_json()),
                             "seconds": round(time.time() - t0, 1)})
    return d


def read_row(run: Path, method: str) -> dict:
    """Per-fold means and per-section values of ``method`` in a finished run folder (NaN and
    ``failed`` = the error when the row's training failed)."""
    if (run / "failed.json").exists():
        err = json.loads((run / "failed.json").read_text())
        nan = np.array([np.nan])
        return {"per_fold": {k: nan for k in METRICS}, "sections": {k: nan for k in METRICS},
                "n_folds": 0, "n_params": None, "seconds": err.get("seconds"),
                "run": str(run), "failed": err["error"]}
    m = json.loads((run / "metrics.json").read_text())
    folds = m["folds"]
    if method not in folds[0]["mean"]:
        raise DataError(f"{run / 'metrics.json'}: no method {method!r}")
    per_fold = {k: np.array([nan_or(f["mean"][method][k]) for f in folds]) for k in METRICS}
    sections = {k: np.array([nan_or(s["methods"][method][k]) for f in folds
                             for s in f["sections"]]) for k in METRICS}
    meta = json.loads((run / "row.json").read_text()) if (run / "row.json").exists() else {}
    return {"per_fold": per_fold, "sections": sections, "n_folds": len(folds),
            "n_params": m.get("n_params"), "seconds": meta.get("seconds"), "run": str(run)}


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


def compute_rows(config, workdir: Path, data_dir: Path, row_ids: list[str], *,
                 tune: bool = False, fields=None) -> dict:
    """{row id: read_row(...)} for every row (references read from the ASIGN run; with
    ``tune``, from ASIGN's chosen candidate, and every learned row has "tuned": tuned_info)."""
    runs, out, sweeps = {}, {}, {}
    learned = [r for r in row_ids if ROWS[r][1] is not None]
    needs_reference = any(ROWS[r][1] is None for r in row_ids)
    if needs_reference and ASIGN not in learned:
        learned.append(ASIGN)
    for r in learned:
        cfg = row_config(config, ROWS[r][1])
        if tune:
            run, sweeps[r] = tune_row(cfg, workdir, data_dir, r,
                                      sweep_folder(workdir, config) / r, fields)
        else:
            run = run_row(cfg, workdir, data_dir, r)
        runs[r] = (run, str(cfg.model.name))
    for r in row_ids:
        if ROWS[r][1] is None:
            if r not in references.METHODS:
                logger.info("row %s: no such reference in this project; left out", r)
                continue
            out[r] = {**read_row(runs[ASIGN][0], r), "n_params": None, "seconds": None}
        else:
            out[r] = read_row(*runs[r])
            if r in sweeps:        # (every candidate diverged: the chosen one is failed)
                out[r]["tuned"] = tuned_info(sweeps[r])
                out[r]["seconds"] = sweeps[r]["seconds"]
        out[r]["encoder"] = encoder_label(row_config(config, ROWS[r][1] or {}), r)
    return out


def sweep_folder(workdir: Path, config) -> Path:
    """``tables/<dataset>``: the folder of each tuned row's ``<row>/sweep.json``."""
    return Path(workdir) / "tables" / str(config.data.format)


def encoder_label(config, row_id: str) -> str:
    if ROWS[row_id][1] is None:
        return "cached (cosine)" if row_id == "similarity" else "-"
    if config.model.name in ("asign", "asign2d"):
        return "cached"
    return "trained" if config.model.backbone.mode == "train" else "cached"


# ---- writing the tables ---------------------------------------------------------------------

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
        res = results[r]
        cells = [label(r), res["encoder"], f"{res['n_params']:,}" if res.get("n_params") else "-",
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
            star = "*" if pvals[r][m] < 0.05 else ""
            cells.append("failed" if res.get("failed") else fmt(mean, std) + star)
        ref = paper.get(r)
        cells += [f"{v:.3f}" for v in ref] if ref else ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
        row = {"table": k, "dataset": dataset, "row": r, "label": label(r),
               "encoder": res["encoder"], "n_params": res.get("n_params") or "",
               "n_folds": res["n_folds"], "seconds": res.get("seconds") or ""}
        if tuned:
            tu = tu or {}
            row.update(tuned_candidate=tu.get("chosen", ""),
                       tuned_overrides=json.dumps(tu["overrides"]) if tu else "",
                       tuned_metric=tu.get("metric", ""), tuned_val=tu.get("val", ""),
                       tuned_val_mse=tu.get("val_mse", ""), tuned_guard_ok=tu.get("guard_ok", ""),
                       budget_candidates=tu.get("candidates", ""),
                       budget_steps=tu.get("steps", ""), budget_failed=tu.get("n_failed", ""))
        for m in METRICS:
            mean, std = summarise(res["per_fold"][m])
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_p_welch"] = mean, std, pvals[r][m]
        for name, v in zip(("paper_mse", "paper_mae", "paper_pcc_spot"), ref or ("",) * 3):
            row[name] = v
        csv_rows.append(row)
    n_folds = max(res["n_folds"] for res in results.values())
    failed = [f"{label(r)}: {results[r]['failed']}" for r in rows if results[r].get("failed")]
    if failed:
        lines += ["", "Failed rows (training stopped; no number is reported): "
                  + "; ".join(failed)]
    lines += ["", f"Mean ± population std over {n_folds} fold(s). pcc_gene: per gene across "
              "spots; pcc_spot: per spot across genes (the paper's PCC). * = Welch's t-test "
              f"of the per-section values against {label(base_id)}, p < 0.05. Encoder 'cached': "
              "the frozen cached ResNet-50 features / token grids every method reads on a CPU. "
              "run (s): wall time of the row's run (training + scoring of every fold) when it "
              "was computed" + (", of every candidate of its sweep plus the test scoring, with "
                                "--tune." if tuned else ".")]
    if tuned:
        t = tuned[0]
        lines += ["", f"Tuned (--tune): each learned row is the candidate with the best "
                  f"validation {t['metric']} of its method among {t['candidates']} (c0 = the "
                  "row's own config, the others the half fraction of the two-level design over "
                  f"{t['grid']}), "
                  f"{t['steps']} steps each, the step chosen on validation; a candidate worse "
                  "than known_mean on validation MSE ranks last. val: that candidate's "
                  "validation score (mean over folds); test: scored once, for it only. "
                  "References: read from ASIGN's chosen candidate. Every candidate's score: "
                  "tables/<dataset>/<row>/sweep.json."]
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


def make_tables(config, workdir, tables: list[int], data_dir=None, only_rows=None, *,
                tune: bool = False, fields=None) -> dict:
    """Prepares (once) the shared data, runs every needed row and writes the tables.

    ``tune``: every learned row tuned on validation (module doc); ``fields``: the TUNE_GRID
    keys to tune over (default all). Returns {table: {row: read_row(...)}}.
    """
    workdir = Path(workdir)
    data_dir = Path(data_dir) if data_dir else workdir / "data"
    for k in tables:
        if k not in TABLES:
            raise ConfigError(f"--table: {k} is not one of {sorted(TABLES)}")
    stages.load_inputs(config, data_dir)          # prepare + register + graphs, once
    wanted = []
    for k in tables:
        wanted += [r for r in TABLES[k][1] if only_rows is None or r in only_rows]
    wanted = list(dict.fromkeys(wanted))
    results = compute_rows(config, workdir, data_dir, wanted, tune=tune, fields=fields)
    fmt_name = str(config.data.format)
    dataset = f"{fmt_name} ({data_dir})"
    out = {}
    for k in tables:
        res = {r: results[r] for r in TABLES[k][1] if r in results}
        if res:
            write_table(workdir / "tables", k, dataset, PAPER_DATASET.get(fmt_name, "HER2"), res,
                        synthetic=fmt_name == "synthetic")
            print((workdir / "tables" / f"table{k}.md").read_text())
        out[k] = res
    print(f"tables: {workdir / 'tables'}/table<k>.{{md,csv}}, table<k>_<metric>.png; "
          f"row runs: {workdir / 'rows'}"
          + (f"; sweeps: {sweep_folder(workdir, config)}/<row>/sweep.json" if tune else ""))
    return out


# ---- main -------------------------------------------------------------------------------------

def main(args) -> None:
    out = args.out
    if out == f"{entry.EXPERIMENTS_OUT}/paper_tables":      # the default: one folder per config
        out = f"{out}/{Path(flags.FLAGS['config'].config_filename).stem}"
    tables = [int(t) for t in args.table.split(",") if t.strip()]
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    if rows:
        unknown = sorted(set(rows) - set(ROWS))
        if unknown:
            raise ConfigError(f"--rows: unknown {unknown}; known {sorted(ROWS)}")
    fields = tune_fields(args.tune_fields) if args.tune_fields else None
    if fields and not args.tune:
        raise ConfigError("--tune_fields needs --tune")
    t0 = time.time()
    make_tables(args.config, out, tables, args.data_dir, rows, tune=args.tune, fields=fields)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    entry.run_script(
        main, "paper_tables", config="required",
        table=("1", "Comma-separated tables: 1, 2, 3, 4."),
        data_dir=(None, "A prepared run folder to read the data and graphs from (default "
                        "<out>/data, prepared there if missing)."),
        rows=(None, f"Only these row ids (comma-separated) of {sorted(ROWS)}."),
        tune=(False, "Tune every learned row on validation over TUNE_GRID, the same candidates "
                     "and steps for every row (tables/<dataset>/<row>/sweep.json)."),
        tune_fields=(None, "With --tune: only these TUNE_GRID fields (comma-separated; lr, wd, "
                           "dropout, norm or the dotted names), for every row alike."))
