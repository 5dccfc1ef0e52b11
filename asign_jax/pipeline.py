"""The stages of a run folder, each reused when its manifest matches, else built.

    <workdir>/synthetic_data   (synthetic only) generated sections  <- data.synthetic.generate
    <workdir>/prepared         genes, normalised labels, tiles, features <- preprocess
    <workdir>/registration     per-sample affines, QC, overlays     <- registration
    <workdir>/graphs           3D spot graphs                       <- graph
    <workdir>/checkpoints/fold_<k>  training + scores of one fold   <- training, evaluation
    <workdir>/metrics.json, per_gene_pcc.csv, predictions/, plots/  <- evaluation.reports
    <workdir>/tfds             (export) the prepared + registered sections as a tfds dataset

Every stage writes a manifest (``asign_jax.runfolder``): the config fields it depends on, the
build ids of the stages it read, and a completion marker written last. A stage is reused only
when it completed with the same fields and inputs; a killed stage is resumed; a stage made
with another config stops the command with one line, or with ``overwrite=True`` is rebuilt
together with every stage after it. Registration is a stage of its own: a multi-section sample
is never turned into a graph before its registration completed.

The ``python -m asign_jax.<command>`` mains (prepare, register, train, evaluate, export) are a
few lines each around the functions here. Every function validates the config first
(``asign_jax.config.validate``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm import tqdm

from asign_jax import atomic, provenance
from asign_jax.config import validate
from asign_jax.data import validate as validate_data
from asign_jax.data.lattice import FORMAT_KIND
from asign_jax.data.loaders import load_samples
from asign_jax.data.synthetic import EMBEDDINGS_FILE, generate
from asign_jax.errors import ConfigError, DataError
from asign_jax.evaluation import references, reports, scoring
from asign_jax.features.extract import input_files
from asign_jax.graph import io as graph_io
from asign_jax.models import factory
from asign_jax.preprocess.prepare import prepare_samples, prepared_table
from asign_jax.preprocess.prepared import (PreparedSample, left_out_note, list_prepared,
                                           read_left_out)
from asign_jax.registration import tfds as tfds_export
from asign_jax.registration.ground_truth import load_ground_truth
from asign_jax.registration.qc import format_table
from asign_jax.registration.stack import register_sample
from asign_jax.runfolder import (NEW, RESUME, REUSE, RunFolder, capturing_warnings,
                                 stage_fields)
from asign_jax.training import checkpoint, pools, selection, sharding
from asign_jax.training.folds import Fold, make_folds
from asign_jax.training.loop import train_fold
from asign_jax.training.pools import fold_pool
from asign_jax.training.standardize import standardize_features
from asign_jax.training.state import count_params, create_train_state

logger = logging.getLogger(__name__)

EVALUATE_REMEDY = ("evaluate with the config the run was trained with, or retrain with "
                   "`python -m asign_jax.train --overwrite`")


def validated(config):
    """``config`` checked (``config.validate`` + a known ``model.name``), as a resolved copy
    (the caller's config is never modified)."""
    validate(config)
    if config.model.name not in factory.MODELS:
        raise ConfigError(f"model.name={config.model.name!r}: expected one of "
                          f"{', '.join(sorted(factory.MODELS))}")
    return config.copy_and_resolve_references()


def check_folds(config, n_layers: dict, left_out: dict, *, strict: bool = True):
    """``make_folds`` on the samples' layer counts; its error says which sections the reader
    left out (e.g. a missing image). ``strict=False`` (prepare) only warns."""
    try:
        return make_folds(config.train, n_layers, seed=int(config.seed))
    except ConfigError as e:
        msg = f"{e}{left_out_note(left_out)}"
        if strict:
            raise ConfigError(msg) from None
        logger.warning("training with this config would stop: %s", msg)
        return None


# ---- data stages ----------------------------------------------------------------------------

def _prepare_stage(config, rf: RunFolder, *, strict_folds: bool) -> None:
    """Builds ``prepared/`` unless it matches (generate -> read -> genes, tiles, features)."""
    workdir = rf.workdir
    fields = stage_fields("prepare", config)
    state = rf.check("prepare", fields, {})
    if state == REUSE:
        logger.info("prepared data: reusing %s (same config and input files)",
                    workdir / "prepared")
        rf.replay_warnings("prepare")
        return
    rf.start("prepare", fields, {}, state)
    with rf.recording() as rec, capturing_warnings() as found:
        samples = _read_samples(config, workdir, strict_folds, rec)
        prepare_samples(samples, config, workdir)
        for path in input_files(config.features):    # read by the feature extractor
            rec.add(path)
    rf.finish("prepare", files=rec.files, warnings=found)


def data_warnings(config, samples, digests: dict) -> None:
    """Inputs checked against each other (``data.validate``): one image listed twice (same
    path or same bytes, ``digests``: {path: fingerprint}) is an error; a section whose spot
    pitch says its image is at another scale is a warning."""
    validate_data.check_distinct_images(
        [(x.name, x.image_path) for s in samples for x in s.sections], digests)
    synthetic = config.data.format == "synthetic"
    expected = float(config.data.spot_pitch_px) or (
        float(config.synthetic.spot_pitch) if synthetic else 0.0)
    kind = str(config.synthetic.lattice) if synthetic else FORMAT_KIND.get(config.data.format, "")
    for w in validate_data.pitch_warnings(samples, kind, expected):
        logger.warning("%s", w)


def _read_samples(config, workdir: Path, strict_folds: bool, rec):
    """The samples of ``config.data`` (generated first for synthetic data), checked; ``rec``:
    the stage's recording of the input files read."""
    if config.data.format == "synthetic":
        root = Path(config.data.root) if config.data.root else workdir / "synthetic_data"
        logger.info("stage 0/3: generating synthetic data in %s", root)
        generate(config.synthetic, root, seed=config.seed)
        config.data.root = str(root)
        if config.features.encoder == "embeddings" and not config.features.embeddings:
            config.features.embeddings = str(root / EMBEDDINGS_FILE)   # drawn by the generator

    logger.info("stage 1/3: loading %s samples from %s", config.data.format, config.data.root)
    dropped: dict = {}
    samples = load_samples(config, dropped=dropped)
    logger.info("loaded %d samples: %s", len(samples),
                ", ".join(f"{s.sample_id}[{','.join(x.name for x in s.sections)}]"
                          for s in samples))
    check_folds(config, {s.sample_id: s.n_layers for s in samples},
                {**dropped, **{s.sample_id: s.left_out for s in samples if s.left_out}},
                strict=strict_folds)
    for x in (x for s in samples for x in s.sections if x.image_path is not None):
        rec.add(x.image_path)
    data_warnings(config, samples, rec.files)

    logger.info("stage 2/3: genes (%d, %s normalisation), tiles (%d/%d px), features (%s)",
                config.data.n_genes, config.data.normalization, config.data.region_size,
                config.data.global_size, config.features.encoder)
    return samples


def _register_stage(config, rf: RunFolder, only: Optional[list[str]] = None) -> None:
    """Registers every prepared sample (or those in ``only``) not registered yet under the
    same config; single-section samples and ``registration.enabled=False`` get identity
    coordinates. The stage completes once every prepared sample is registered."""
    workdir = rf.workdir
    fields = stage_fields("register", config)
    inputs = {"prepare": rf.build_id("prepare")}
    state = rf.check("register", fields, inputs)
    if state == REUSE:
        logger.info("registration: reusing %s (same config)", workdir / "registration")
        return
    done = rf.start("register", fields, inputs, state)
    ids = list_prepared(workdir)
    todo = [s for s in ids if s not in done and (not only or s in only)]
    why = ("registration.enabled=False: identity coordinates" if not config.registration.enabled
           else f"onto the middle section, results in {workdir / 'registration'}")
    logger.info("stage 3/3: registering %s (%s)", ", ".join(todo) or "nothing", why)
    with rf.recording() as rec:                    # the images, read again at low resolution
        for sid in tqdm(todo, desc="register samples"):
            prepared = PreparedSample.load(workdir, sid)
            register_sample(prepared, config, workdir,
                            ground_truth=load_ground_truth(config, prepared, workdir))
            rf.item_done("register", sid)
    left = sorted(set(ids) - rf.items("register"))
    if left:
        logger.warning("registration: %s not registered yet; `asign_jax.train` registers them "
                       "before building graphs", left)
    else:
        rf.finish("register", files=rec.files)


def _graph_stage(config, rf: RunFolder) -> None:
    """Builds ``graphs/<sample>.npz`` for every sample not built under the same config."""
    workdir = rf.workdir
    fields = stage_fields("graph", config)
    inputs = {"prepare": rf.build_id("prepare"), "register": rf.build_id("register")}
    state = rf.check("graph", fields, inputs)
    if state == REUSE:
        return
    done = rf.start("graph", fields, inputs, state)
    todo = [s for s in list_prepared(workdir) if s not in done]
    logger.info("building the 3D graphs of %s in %s", todo, workdir / "graphs")
    for sid in todo:
        graph_io.build_sample(workdir, config, sid)
        rf.item_done("graph", sid)
    rf.finish("graph")


def _require_data(config, rf: RunFolder, how: str, stages=("prepare", "register", "graph")):
    """RunFolderError unless each of ``stages`` completed and matches ``config``."""
    inputs: dict = {}
    for stage in stages:
        rf.require(stage, stage_fields(stage, config), dict(inputs), how)
        inputs[stage] = rf.build_id(stage)


def prepare(config, workdir, *, skip_registration: bool = False,
            overwrite: bool = False) -> list[PreparedSample]:
    """The prepare and register stages; returns the list of PreparedSample.

    Writes ``<workdir>/prepared/`` (see ``asign_jax.preprocess.prepared``), feature caches in
    ``<workdir>/cache/features`` and, unless ``skip_registration``, ``<workdir>/registration/``.
    """
    config = validated(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rf = RunFolder(workdir, overwrite=overwrite)
    _prepare_stage(config, rf, strict_folds=False)
    if skip_registration:
        logger.info("stage 3/3: registration skipped (--skip_registration); `asign_jax.train` "
                    "registers before building graphs")
    else:
        _register_stage(config, rf)

    prepared = [PreparedSample.load(workdir, s) for s in list_prepared(workdir)]
    genes = prepared[0].genes
    print("\n" + prepared_table(prepared, config.data.spot_size))
    print(f"\n{len(genes)} genes ({config.data.normalization} normalisation): "
          f"first {genes[0]}, last {genes[-1]}")
    print(f"prepared data: {workdir / 'prepared'} (index.json, genes.txt, <sample>/*.npz)")
    if not skip_registration:
        print(f"registration:  {workdir / 'registration'}")
    return prepared


def register(config, workdir, samples: Optional[list[str]] = None, *,
             overwrite: bool = False) -> dict:
    """The register stage for all prepared samples (or ``samples``); returns {sample: qc}."""
    config = validated(config)
    workdir = Path(workdir)
    rf = RunFolder(workdir, overwrite=overwrite)
    _require_data(config, rf, "run `python -m asign_jax.prepare` first", stages=("prepare",))
    ids = list_prepared(workdir)
    if samples:
        missing = sorted(set(samples) - set(ids))
        if missing:
            raise ConfigError(f"--samples: {missing} are not prepared in {workdir} "
                              f"(have {ids})")
    t0 = time.perf_counter()
    _register_stage(config, rf, only=samples)
    qcs = {sid: json.loads((workdir / "registration" / sid / "qc.json").read_text())
           for sid in (samples or ids) if sid in rf.items("register")}
    print()
    for sid, qc in qcs.items():
        print(format_table(sid, qc))
    print(f"\n{len(qcs)} samples in {time.perf_counter() - t0:.1f} s; results in "
          f"{workdir / 'registration'}/<sample>/{{registered.npz, qc.json, overlay.png}}")
    return qcs


def load_inputs(config, workdir, *, overwrite: bool = False, build: bool = True):
    """Reuses or builds prepare -> register -> graph; returns (genes, graphs, oracle).

    ``build=False`` (evaluate, export) only reuses: a missing or stale stage is an error.
    The graphs' image features are standardised per sample (``train.feature_norm``,
    ``preprocess.standardize``): everything downstream sees the model's input view.

    genes: list[str]; graphs: {sample id: SampleGraph}; oracle: {sample id: (N, G) noise-free
    expression} on synthetic data (``references.oracle_labels``), else None.
    """
    config = validated(config)
    workdir = Path(workdir)
    rf = RunFolder(workdir, overwrite=overwrite)
    if build:
        _prepare_stage(config, rf, strict_folds=True)
        _register_stage(config, rf)
        _graph_stage(config, rf)
    else:
        _require_data(config, rf, "run `python -m asign_jax.train` first")
    return read_inputs(config, workdir)


def read_inputs(config, workdir: Path):
    """(genes, {sample id: standardised SampleGraph}, oracle) of a run folder whose stages
    exist (no manifest checks: ``load_inputs`` does those; ``block`` builds its own stages).
    oracle: {sample id: (N, G) noise-free expression} on synthetic data
    (``references.oracle_labels``), else None."""
    workdir = Path(workdir)
    sample_ids = list_prepared(workdir)
    genes = [str(g) for g in json.loads((workdir / "prepared" / "index.json").read_text())["genes"]]
    norm = str(config.train.feature_norm)
    graphs = {s: standardize_features(graph_io.load_sample_graph(workdir, s), norm)
              for s in sample_ids}
    if config.data.format == "synthetic":
        root = Path(config.data.root) if config.data.root else workdir / "synthetic_data"
        oracle = {s: references.oracle_labels(root, PreparedSample.load(workdir, s),
                                              str(config.data.normalization))
                  for s in sample_ids}
    else:       # no oracle on real data: the raw counts for the noise_ceiling row (scoring)
        oracle = {s: noise_counts(PreparedSample.load(workdir, s),
                                  str(config.data.normalization)) for s in sample_ids}
    return genes, graphs, oracle


def noise_counts(prepared, normalization: str) -> Optional[dict]:
    """{"counts": (N, G) raw counts in graph node order, "normalization"} of a prepared sample
    (None when a section has no counts or the normalisation needs all-gene totals), read by
    the evaluation's ``noise_ceiling`` row only."""
    if normalization == "stnet" or any(s.spot_counts is None for s in prepared.sections):
        return None
    return {"counts": np.concatenate([np.asarray(s.spot_counts, np.float32)
                                      for s in prepared.sections]),
            "normalization": normalization}


def export(config, workdir, fmt: str = "tfds", out: Optional[str] = None):
    """Writes the prepared + registered sections as a tensorflow-datasets dataset
    (``asign_jax.registration.tfds``); returns the builder. Needs completed prepare and register
    stages matching ``config``."""
    config = validated(config)
    if fmt != "tfds":
        raise ConfigError(f"--format={fmt!r}: expected 'tfds'")
    rf = RunFolder(workdir)
    _require_data(config, rf, "run `python -m asign_jax.prepare` first",
                  stages=("prepare", "register"))
    builder = tfds_export.build(workdir, data_dir=out)
    name = f"{builder.name}/{builder.builder_config.name}:{builder.version}"
    print(f"tfds dataset: {builder.data_dir}")
    print(f"  splits (one per sample): {', '.join(builder.sample_ids)}")
    print(f"  read it (no TensorFlow needed): import tensorflow_datasets as tfds; "
          f"src = tfds.data_source({name!r}, data_dir={str(Path(builder.data_dir).parents[2])!r})")
    return builder


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
