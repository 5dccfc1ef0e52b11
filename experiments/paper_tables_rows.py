"""Running and reading back the rows of ``paper_tables.py`` (its module doc).

One row = one ``asign_jax.pipeline.train_and_evaluate`` run in ``rows/<model>-<hash>/``
(``run_row``; with ``--tune``, the chosen candidate of a validation sweep, ``tune_row``);
``read_row`` reads a finished one back, ``compute_rows`` runs and reads every needed row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from asign_jax import atomic, pipeline, runfolder
from asign_jax.config import set_field
from asign_jax.errors import ConfigError, DataError, TrainingError
from asign_jax.evaluation import references
from asign_jax.evaluation.metrics import METRICS, nan_or
from paper_tables_spec import ASIGN, ROWS, TUNE_METRIC, tune_grid, tuned_info
import sweep   # experiments/ (the script's folder) is on sys.path

logger = logging.getLogger("paper_tables")

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


HASHED_ADDED = frozenset(runfolder.ADDED) & {
    "features.histology_context", "graph.similarity_dims", "train.val_blend_score",
    "model.asign.blend_shrinkage"}
"""``runfolder.ADDED`` fields that entered the row hash before it learned to skip them: they
stay in it, so the rows computed since keep their folders. Every later ADDED field at its "as
before" value is left out of the hash, so adding a config field does not retrain every row."""


def row_hash_text(config) -> str:
    """The text a row's folder is named by: the resolved config as sorted JSON, without the
    ``runfolder.ADDED`` fields (other than ``HASHED_ADDED``) that hold their "as before" value."""
    tree = json.loads(config.to_json(sort_keys=True))
    for key, before in runfolder.ADDED.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.get(name, {}) if isinstance(node, dict) else {}
        if (key not in HASHED_ADDED and isinstance(node, dict) and leaf in node
                and node[leaf] == before):
            del node[leaf]
    return json.dumps(tree, sort_keys=True)


def row_dir(workdir: Path, config) -> Path:
    """``rows/<model>-<hash of the resolved config>`` (``row_hash_text``): equal configs share
    a run."""
    digest = hashlib.sha256(row_hash_text(config).encode()).hexdigest()[:10]
    return workdir / "rows" / f"{config.model.name}-{digest}"


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
    finally:
        sweep.release_compiled()       # one process trains every row (sweep.release_compiled)
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
