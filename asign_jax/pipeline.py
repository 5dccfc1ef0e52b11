"""A run: the data stages (``asign_jax.stages``), then every fold trained, selected on
validation and scored on test once, then the run's reports.

    <workdir>/checkpoints/fold_<k>  training + scores of one fold   <- training, evaluation
    <workdir>/metrics.json, per_gene_pcc.csv, predictions/, plots/  <- evaluation.reports

A fold is reused when its manifest matches (``asign_jax.runfolder``: the fields of the chosen
model's block and the build ids of the data stages), resumed when killed, and with
``overwrite=True`` rebuilt. The ``python -m asign_jax.<command>`` mains (prepare, register,
train, evaluate, export) are a few lines each around the functions here and in ``stages``.
Every function validates the config first (``asign_jax.config_checks.validate``).
"""


from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from asign_jax import atomic, provenance
from asign_jax.errors import DataError
from asign_jax.evaluation import reports, scoring
from asign_jax.models import factory
from asign_jax.preprocess.prepared import PreparedSample, read_left_out
from asign_jax.runfolder import NEW, RESUME, REUSE, RunFolder, stage_fields
from asign_jax.stages import check_folds, load_inputs, validated
from asign_jax.training import checkpoint, pools, selection, sharding
from asign_jax.training.folds import Fold
from asign_jax.training.loop import train_fold
from asign_jax.training.pools import fold_pool
from asign_jax.training.state import count_params, create_train_state

logger = logging.getLogger(__name__)

EVALUATE_REMEDY = ("evaluate with the config the run was trained with, or retrain with "
                   "`python -m asign_jax.train --overwrite`")


# ---- folds ----------------------------------------------------------------------------------

def prediction_names(folds: list[Fold]) -> dict:
    """{fold index: {sample: file stem}}: ``<sample>``, or ``<sample>_known<k>`` / ``_fold<i>``
    when a sample is held out in more than one fold."""
    count: dict = {}
    for f in folds:
        for s in f.test_samples:
            count[s] = count.get(s, 0) + 1
    rotating = len({f.test_samples for f in folds}) < len(folds)
    names = {}
    for f in folds:
        names[f.index] = {}
        for s in f.test_samples:
            if count[s] == 1:
                names[f.index][s] = s
            elif rotating:
                names[f.index][s] = f"{s}_known{f.known_layer[s]}"
            else:
                names[f.index][s] = f"{s}_fold{f.index}"
    return names


def fold_dir(workdir: Path, fold: Fold) -> Path:
    return Path(workdir) / "checkpoints" / fold.name


def _mesh(config):
    if jax.device_count() <= 1:
        return None
    return sharding.make_mesh(int(config.train.samples_per_step))


def _score(config, workdir, fold, model, params, graphs, genes, pool, names, *,
           roles=("test", "val"), oracle=None, write: bool = True, data_dir=None) -> dict:
    """Scores the fold on its test (and validation) rows and writes the test predictions
    (``write=False``: graphs given in memory, no prepared data to place them; ``data_dir``:
    the run folder holding the prepared data, default ``workdir``)."""
    eval_fn, pad_fn = pools.eval_fns(config, model, params, pool)
    out = {}
    for role in roles:
        if not fold.samples_of(role):
            continue
        result, per_gene, predictions = scoring.evaluate_fold(config, fold, eval_fn, graphs,
                                                              pad_fn, role, oracle=oracle)
        out[role] = (result, per_gene)
        if role == "test" and write:
            for p in predictions:
                stem = names[fold.index].get(p.sample_id, p.sample_id)
                prepared = PreparedSample.load(data_dir or workdir, p.sample_id)
                reports.write_predictions(Path(workdir) / "predictions" / f"{stem}.h5ad", p,
                                          genes, fold.index, prepared)
                reports.plot_gene_maps(Path(workdir) / "plots", stem, p, genes,
                                       config.train.eval_genes, prepared)
    return out


def _save_fold(workdir: Path, fold: Fold, scores: dict, kept: Optional[dict] = None) -> None:
    """``done.json`` (the fold's results per role, and the validation selection ``kept``) and
    ``per_gene.npz``; the fold's manifest, written after them, marks the fold complete."""
    d = fold_dir(workdir, fold)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"{role}/{m}": v for role, (_, pg) in scores.items() for m, v in pg.items()}
    atomic.write_npz(d / "per_gene.npz", **arrays)
    if kept is not None and "val" in scores:
        scores["val"][0]["selection"] = kept
    atomic.write_json(d / "done.json", {"roles": sorted(scores),
                                        **{role: r for role, (r, _) in scores.items()}})


def _load_fold(workdir: Path, fold: Fold) -> dict:
    d = fold_dir(workdir, fold)
    results = json.loads((d / "done.json").read_text())
    results.pop("roles", None)
    with np.load(d / "per_gene.npz") as z:
        per_gene = {k: z[k] for k in z.files}
    return {role: (r, {k.split("/", 1)[1]: v for k, v in per_gene.items()
                       if k.startswith(role + "/")}) for role, r in results.items()}


def run_warnings(config, data_dir: Path, genes) -> list[str]:
    """The warnings a report must carry: those recorded when the data stages of ``data_dir``
    were built (gene losses, image scales, ...) and configured eval genes not in the panel."""
    rf = RunFolder(data_dir)
    out = [w for stage in ("prepare", "register", "graph") for w in rf.warnings(stage)]
    missing = [g for g in config.train.eval_genes if g not in set(genes)]
    if missing:
        msg = (f"train.eval_genes: {', '.join(missing)} not among the {len(genes)} genes of "
               f"this run ({Path(data_dir) / 'prepared' / 'genes.txt'}); no map is drawn for "
               "them")
        logger.warning("%s", msg)
        out.append(msg)
    return out


def _finish(config, rf: RunFolder, scores: list[dict], genes: list, builds: dict,
            n_params: Optional[int] = None, warnings=()) -> dict:
    """The reports stage: metrics.json, per_gene_pcc.csv, plots/pcc_sections.png and the
    summary table, from the folds' results; ``builds``: {fold name: its build id};
    ``warnings`` (`run_warnings`) go into metrics.json ("warnings")."""
    workdir = rf.workdir
    method = str(config.model.name)
    rf.start("reports", stage_fields("reports", config), builds, NEW)
    test = [s["test"] for s in scores]
    val = [s["val"][0] for s in scores if "val" in s]
    agg = reports.write_reports(workdir, [r for r, _ in test], [pg for _, pg in test], genes,
                                val_results=val, method=method, n_params=n_params,
                                provenance=provenance.record(workdir, config),
                                run_warnings=warnings)
    rf.finish("reports")
    if warnings:
        print(f"\n{len(warnings)} warning(s), also in metrics.json:")
        for w in warnings:
            print(f"  WARNING: {w}")
    if n_params is not None:
        print(f"\nmodel {method}: {n_params:,} trainable parameters")
    if val:
        print(f"\nValidation role of {len(val)} fold(s) (what every choice read); mean +- std "
              "over folds")
        print(reports.summary_table(reports.aggregate(val)))
    print(f"\nTest layers of {len(test)} fold(s), scored once; mean +- std over folds "
          f"(pcc_gene: per gene across spots; pcc_spot: per spot across genes, official-code metric)")
    print(reports.summary_table(agg))
    print(f"\nmetrics:     {workdir / 'metrics.json'} (per fold/section), {workdir / 'metrics.jsonl'} (training log)")
    print(f"per gene:    {workdir / 'per_gene_pcc.csv'}")
    print(f"predictions: {workdir / 'predictions'}/<sample>.h5ad; plots: {workdir / 'plots'}")
    return agg


# ---- train + evaluate -----------------------------------------------------------------------

def _check_against_known_mean(fold: Fold, record: dict) -> dict:
    """Warns when the kept model is worse than ``known_mean`` on validation; returns a summary."""
    m = record["metrics"]
    worse = m["val_mse"] > m["val_mse_known_mean"]
    if worse:
        logger.warning("%s: ASIGN at step %d is WORSE than known_mean on validation (MSE %.4f vs "
                       "%.4f): the model adds nothing over the known layer's mean profile; check "
                       "the training log (metrics.jsonl, \"split\": \"val\" lines)", fold.name,
                       record["step"], m["val_mse"], m["val_mse_known_mean"])
    return {"step": int(record["step"]), "score": record["score"], "metrics": m,
            "worse_than_known_mean": bool(worse)}


def kept_params(config, fold: Fold, workdir: Path, final_params) -> tuple[dict, Optional[dict]]:
    """The params scored for ``fold``: its validation-selected params (``train.select``, the
    eq.-6 blend refit when configured) when the fold has a validation role, else the final
    ones. Returns (params, selection summary or None)."""
    found = selection.load_selected(fold_dir(workdir, fold)) if fold.has_validation else None
    if found is None:
        return final_params, None
    params, record = found
    logger.info("%s: scoring the params of step %d (train.select=%s, model.asign.blend=%s)",
                fold.name, record["step"], config.train.select, config.model.asign.blend)
    return params, _check_against_known_mean(fold, record)


def _folds(config, workdir: Path, graphs: dict) -> list[Fold]:
    return check_folds(config, {s: len(g.section_names) for s, g in graphs.items()},
                       read_left_out(workdir))


def _done_roles(workdir: Path, fold: Fold) -> set:
    done = fold_dir(workdir, fold) / "done.json"
    return set(json.loads(done.read_text()).get("roles", ["test"])) if done.exists() else set()


def train_and_evaluate(config, workdir, *, overwrite: bool = False,
                       stop_after: Optional[int] = None, progress: bool = True,
                       score_test: bool = True, inputs: Optional[tuple] = None,
                       data_dir=None) -> Optional[dict]:
    """The whole pipeline; returns {method: {"mean", "std"}} or None if stopped (``stop_after``).

    Every stage is reused when its manifest matches; a fold that did not finish resumes from
    its latest checkpoint. ``overwrite``: rebuild stages made with another config (and every
    stage after them) instead of stopping. ``stop_after`` (testing): stop the first unfinished
    fold after that many steps, as if the process had been killed.
    ``score_test=False`` (sweeps): the test rows are never scored; returns the VALIDATION
    aggregate and writes ``validation.json`` instead of the reports (a later call with
    ``score_test=True`` scores the same kept params on test, without training again).
    ``inputs``: (genes, graphs, oracle) to use instead of the run folder's data (tests).
    ``data_dir``: the run folder whose prepared data, registration and graphs are used (built
    there if missing); default ``workdir``. Several runs (the rows of
    ``experiments/paper_tables.py``) share one; checkpoints and reports go to ``workdir``.
    """
    config = validated(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir if data_dir is None else Path(data_dir)
    rf = RunFolder(workdir, overwrite=overwrite)
    if inputs is None:
        genes, graphs, oracle = load_inputs(config, data_dir, overwrite=overwrite)
        stage_inputs = {"graph": RunFolder(data_dir).build_id("graph")}
    else:
        (genes, graphs, oracle), stage_inputs = inputs, {}
    warnings = run_warnings(config, data_dir, genes) if inputs is None else []
    folds = _folds(config, data_dir, graphs)
    selection.check_config(config, all(f.has_validation for f in folds))
    fields = {f.name: stage_fields(f.name, config, fold=f) for f in folds}
    states = {f.name: rf.check(f.name, fields[f.name], stage_inputs) for f in folds}  # before work
    names = prediction_names(folds)
    model, loss_fn = factory.build(config, len(genes))
    mesh = _mesh(config)
    logger.info("%d fold(s), %d genes, %d devices; run folder %s", len(folds), len(genes),
                jax.device_count(), workdir)
    roles = ("test", "val") if score_test else ("val",)
    scores, builds, n_params = [], {}, None
    for fold in folds:
        st = states[fold.name]
        done = st == REUSE and _done_roles(workdir, fold) >= set(roles)
        pool = fold_pool(config, model, graphs, fold, data_dir) if not (done and n_params) else None
        if n_params is None:
            n_params = count_params(model, pool.example())
            logger.info("model %s: %d trainable parameters", config.model.name, n_params)
        if done:
            logger.info("%s: done with the same config; reusing %s", fold.name,
                        fold_dir(workdir, fold))
            scores.append(_load_fold(workdir, fold))
            builds[fold.name] = rf.build_id(fold.name)
            continue
        # a fold scored on validation only (a sweep candidate) is scored on test from its kept
        # params: training resumes at its last checkpoint, i.e. does nothing
        rf.start(fold.name, fields[fold.name], stage_inputs, RESUME if st == REUSE else st)
        logger.info("%s", fold.describe())
        validator = (selection.Validator(config, fold, graphs, model, pool.pad,
                                         wrap_eval=pools.tiled_wrap(config, pool))
                     if fold.has_validation else None)
        state = train_fold(config, model, loss_fn, pool, fold.index, fold_dir(workdir, fold),
                           workdir / "metrics.jsonl", mesh=mesh, stop_after=stop_after,
                           progress=progress, validate=validator)
        if state is None:
            return None
        params, kept = kept_params(config, fold, workdir, jax.device_get(state.params))
        fold_scores = _score(config, workdir, fold, model, params, graphs, genes, pool, names,
                             roles=roles, oracle=oracle, write=inputs is None, data_dir=data_dir)
        _save_fold(workdir, fold, fold_scores, kept)
        builds[fold.name] = rf.finish(fold.name, files=fold_files(config))
        scores.append(fold_scores)
    if not score_test:
        return _finish_validation(workdir, scores)
    return _finish(config, rf, scores, genes, builds, n_params, warnings)


def fold_files(config) -> list:
    """Input files a fold reads itself (the data reach it through the graph stage): the
    starting weights of a backbone trained end to end."""
    w = str(config.model.backbone.weights or "")
    return [Path(w).expanduser()] if config.model.backbone.mode == "train" and w else []


def _finish_validation(workdir: Path, scores: list[dict]) -> dict:
    """validation.json (no test block) for a sweep candidate; returns the validation aggregate."""
    val = [s["val"][0] for s in scores]
    agg = reports.aggregate(val)
    atomic.write_json(workdir / "validation.json", {"folds": val, "methods": agg})
    print("\nValidation role only (test rows not scored)")
    print(reports.summary_table(agg))
    return agg


def evaluate_all(config, workdir, *, data_dir=None) -> dict:
    """Re-scores every fold from its latest checkpoint (no training); rewrites the reports.

    Needs the data stages and each fold's manifest to match ``config``; a fold that never
    started is skipped, an unfinished one is scored at its latest checkpoint (with a warning).
    The folds' own results (done.json) are left alone. ``data_dir`` as in
    ``train_and_evaluate``.
    """
    config = validated(config)
    workdir = Path(workdir)
    data_dir = workdir if data_dir is None else Path(data_dir)
    rf = RunFolder(workdir, remedy=EVALUATE_REMEDY)
    genes, graphs, oracle = load_inputs(config, data_dir, build=False)
    folds = _folds(config, data_dir, graphs)
    inputs = {"graph": RunFolder(data_dir).build_id("graph")}
    names = prediction_names(folds)
    model, _ = factory.build(config, len(genes))
    scores, builds = [], {}
    for fold in folds:
        if rf.check(fold.name, stage_fields(fold.name, config, fold=fold),
                    inputs) == NEW:
            logger.warning("%s: never trained (no %s); skipped", fold.name,
                           rf.manifest_path(fold.name))
            continue
        pool = fold_pool(config, model, graphs, fold, data_dir)
        state = create_train_state(model, config.train, pool.example(), jax.random.PRNGKey(0))
        try:
            params, step = checkpoint.restore_params(state, fold_dir(workdir, fold))
        except FileNotFoundError as e:
            logger.warning("%s: %s; skipped", fold.name, e)
            continue
        if step < int(config.train.steps):
            logger.warning("%s: latest checkpoint is step %d of %d (training unfinished)",
                           fold.name, step, int(config.train.steps))
        params, kept = kept_params(config, fold, workdir, params)
        step = step if kept is None else kept["step"]
        logger.info("%s: re-scoring from %s (step %d)", fold.name, fold_dir(workdir, fold), step)
        fold_scores = _score(config, workdir, fold, model, params, graphs, genes, pool, names,
                             oracle=oracle, data_dir=data_dir)
        for r, _ in fold_scores.values():
            r["step"] = step
        scores.append(fold_scores)
        builds[fold.name] = rf.read(fold.name)["build"]
    if not scores:
        raise DataError(f"{workdir / 'checkpoints'}: no fold checkpoint to evaluate; run "
                        "`python -m asign_jax.train` first")
    return _finish(config, rf, scores, genes, builds, warnings=run_warnings(config, data_dir,
                                                                           genes))
