"""The stages of a run folder, each loaded when present and built when missing.

    <workdir>/synthetic_data   (synthetic only) generated sections  <- data.synthetic.generate
    <workdir>/prepared         genes, normalised labels, tiles, features <- preprocess
    <workdir>/registration     per-sample affines, QC, overlays     <- registration
    <workdir>/graphs           3D spot graphs                       <- graph
    <workdir>/checkpoints/fold_<k>  training + scores of one fold   <- training, evaluation
    <workdir>/metrics.json, per_gene_pcc.csv, predictions/, plots/  <- evaluation.reports

The ``python -m asign_jax.<command>`` mains (prepare, register, train, evaluate) are a few lines
each around the functions here.
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

from asign_jax import atomic
from asign_jax.data.loaders import load_samples
from asign_jax.data.synthetic import generate
from asign_jax.evaluation import reports, scoring
from asign_jax.graph import io as graph_io
from asign_jax.models import factory
from asign_jax.preprocess.prepare import prepare_samples, prepared_table
from asign_jax.preprocess.prepared import PreparedSample, list_prepared
from asign_jax.preprocess.standardize import standardize_features
from asign_jax.registration.ground_truth import load_ground_truth
from asign_jax.registration.qc import format_table
from asign_jax.registration.stack import register_sample
from asign_jax.errors import DataError
from asign_jax.training import batches, checkpoint, model_inputs, sharding
from asign_jax.training.folds import Fold, make_folds
from asign_jax.training.loop import train_fold
from asign_jax.training.state import count_params, create_train_state
from asign_jax.training.step import make_eval_fn

logger = logging.getLogger(__name__)


# ---- data stages ----------------------------------------------------------------------------

def prepare(config, workdir, *, skip_registration: bool = False) -> list[PreparedSample]:
    """Runs the whole preprocessing stage; returns the list of PreparedSample.

    Writes ``<workdir>/prepared/`` (see ``asign_jax.preprocess.prepared``), feature caches in
    ``<workdir>/cache/features`` and, when registering, ``<workdir>/registration/``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = config.copy_and_resolve_references()  # never mutate the caller's config

    if config.data.format == "synthetic":
        root = Path(config.data.root) if config.data.root else workdir / "synthetic_data"
        logger.info("stage 0/3: generating synthetic data in %s", root)
        generate(config.synthetic, root, seed=config.seed)
        config.data.root = str(root)

    logger.info("stage 1/3: loading %s samples from %s", config.data.format, config.data.root)
    samples = load_samples(config)
    logger.info("loaded %d samples: %s", len(samples),
                ", ".join(f"{s.sample_id}[{','.join(x.name for x in s.sections)}]"
                          for s in samples))

    logger.info("stage 2/3: genes (%d, %s normalisation), tiles (%d/%d px), features (%s)",
                config.data.n_genes, config.data.normalization, config.data.region_size,
                config.data.global_size, config.features.encoder)
    prepared = prepare_samples(samples, config, workdir)

    if skip_registration:
        logger.info("stage 3/3: registration skipped (--skip_registration)")
    elif not config.registration.enabled:
        logger.info("stage 3/3: registration skipped (registration.enabled=False)")
    else:
        for p in prepared:
            if p.n_layers < 2:
                logger.info("stage 3/3: sample %r has a single section; nothing to register",
                            p.sample_id)
                continue
            logger.info("stage 3/3: registering sample %r (%d sections)", p.sample_id,
                        p.n_layers)
            register_sample(p, config, workdir,
                            ground_truth=load_ground_truth(config, p, workdir))

    genes = prepared[0].genes
    print("\n" + prepared_table(prepared, config.data.spot_size))
    print(f"\n{len(genes)} genes ({config.data.normalization} normalisation): "
          f"first {genes[0]}, last {genes[-1]}")
    print(f"prepared data: {workdir / 'prepared'} (index.json, genes.txt, <sample>/*.npz)")
    if not skip_registration and config.registration.enabled:
        print(f"registration:  {workdir / 'registration'}")
    return prepared


def register(config, workdir, samples: Optional[list[str]] = None) -> dict:
    """Registers the prepared samples (all, or ``samples``); returns {sample_id: qc dict}."""
    workdir = Path(workdir)
    ids = list_prepared(workdir)
    if samples:
        missing = sorted(set(samples) - set(ids))
        if missing:
            raise DataError(f"{workdir / 'prepared' / 'index.json'}: samples {missing} are not "
                            f"prepared (have {ids})")
        ids = [s for s in ids if s in samples]
    qcs = {}
    t0 = time.perf_counter()
    for sid in tqdm(ids, desc="samples"):
        prepared = PreparedSample.load(workdir, sid)
        register_sample(prepared, config, workdir,
                        ground_truth=load_ground_truth(config, prepared, workdir))
        qcs[sid] = json.loads((workdir / "registration" / sid / "qc.json").read_text())
    print()
    for sid, qc in qcs.items():
        print(format_table(sid, qc))
    print(f"\n{len(qcs)} samples in {time.perf_counter() - t0:.1f} s; results in "
          f"{workdir / 'registration'}/<sample>/{{registered.npz, qc.json, overlay.png}}")
    return qcs


def load_inputs(config, workdir: Path):
    """Prepares data and builds graphs if missing; returns (genes, graphs).

    The graphs' image features are standardised per sample (``train.feature_norm``,
    ``preprocess.standardize``): everything downstream sees the model's input view.

    genes: list[str]; graphs: {sample id: SampleGraph}.
    """
    workdir = Path(workdir)
    index = workdir / "prepared" / "index.json"
    if not index.exists():
        logger.info("no %s: preparing the data (asign_jax.prepare)", index)
        prepare(config, workdir)
    sample_ids = list_prepared(workdir)
    genes = [str(g) for g in json.loads(index.read_text())["genes"]]
    missing = [s for s in sample_ids if not graph_io.graph_path(workdir, s).exists()]
    if missing:
        logger.info("graphs missing for %s: building them in %s", missing, workdir / "graphs")
        graph_io.build_all(workdir, config, sample_ids=missing)
    norm = str(config.train.feature_norm)
    graphs = {s: standardize_features(graph_io.load_sample_graph(workdir, s), norm)
              for s in sample_ids}
    return genes, graphs


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


def _score(config, workdir, fold, model, params, graphs, genes, pool, names) -> dict:
    """Scores the fold on its test (and validation) samples and writes the predictions."""
    fn = make_eval_fn(model)
    eval_fn = lambda s: fn(params, s)
    out = {}
    for role in ("test", "val"):
        if not fold.samples_of(role):
            continue
        result, per_gene, predictions = scoring.evaluate_fold(config, fold, eval_fn, graphs,
                                                              pool.pad, role)
        out[role] = (result, per_gene)
        if role == "test":
            for p in predictions:
                stem = names[fold.index].get(p.sample_id, p.sample_id)
                reports.write_predictions(Path(workdir) / "predictions" / f"{stem}.h5ad", p,
                                          genes, fold.index)
                reports.plot_gene_maps(Path(workdir) / "plots", stem, p, genes,
                                       config.train.eval_genes)
    return out


def _save_fold(workdir: Path, fold: Fold, scores: dict) -> None:
    d = fold_dir(workdir, fold)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"{role}/{m}": v for role, (_, pg) in scores.items() for m, v in pg.items()}
    atomic.write_npz(d / "per_gene.npz", **arrays)
    atomic.write_json(d / "done.json", {role: r for role, (r, _) in scores.items()})


def _load_fold(workdir: Path, fold: Fold) -> dict:
    d = fold_dir(workdir, fold)
    results = json.loads((d / "done.json").read_text())
    with np.load(d / "per_gene.npz") as z:
        per_gene = {k: z[k] for k in z.files}
    return {role: (r, {k.split("/", 1)[1]: v for k, v in per_gene.items()
                       if k.startswith(role + "/")}) for role, r in results.items()}


def _finish(workdir: Path, scores: list[dict], genes: list, method: str,
            n_params: Optional[int] = None) -> dict:
    test = [s["test"] for s in scores]
    val = [s["val"][0] for s in scores if "val" in s]
    agg = reports.write_reports(workdir, [r for r, _ in test], [pg for _, pg in test], genes,
                                val_results=val, method=method, n_params=n_params)
    if n_params is not None:
        print(f"\nmodel {method}: {n_params:,} trainable parameters")
    print(f"\nTest layers of {len(test)} fold(s); mean +- std over folds "
          f"(pcc_gene: per gene across spots; pcc_spot: per spot across genes, official-code metric)")
    print(reports.summary_table(agg))
    print(f"\nmetrics:     {workdir / 'metrics.json'} (per fold/section), {workdir / 'metrics.jsonl'} (training log)")
    print(f"per gene:    {workdir / 'per_gene_pcc.csv'}")
    print(f"predictions: {workdir / 'predictions'}/<sample>.h5ad; plots: {workdir / 'plots'}")
    return agg


# ---- train + evaluate -----------------------------------------------------------------------

def fold_pool(config, model, graphs, fold, data_dir) -> batches.Pool:
    """The fold's masked training pool plus the model's own inputs (``training.model_inputs``:
    e.g. the retrieval bank of EGN / BLEEP, built from the pool's labelled spots only)."""
    pool = batches.build_pool(graphs, fold, seed=int(config.seed))
    return model_inputs.attach(config, factory.model_inputs(model), data_dir, pool)


def train_and_evaluate(config, workdir, *, stop_after: Optional[int] = None,
                       progress: bool = True, data_dir=None) -> Optional[dict]:
    """The whole pipeline; returns {method: {"mean", "std"}} or None if stopped (``stop_after``).

    ``stop_after`` (testing): stop the first unfinished fold after that many steps, as if the
    process had been killed; relaunching resumes from its latest checkpoint.
    ``data_dir``: the run folder whose prepared data, registration and graphs are used (built
    there if missing); default ``workdir``. Several runs (the rows of
    ``experiments/paper_tables.py``) share one; checkpoints and reports go to ``workdir``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir if data_dir is None else Path(data_dir)
    genes, graphs = load_inputs(config, data_dir)
    folds = make_folds(config.train, {s: len(g.section_names) for s, g in graphs.items()})
    names = prediction_names(folds)
    model, loss_fn = factory.build(config, len(genes))
    mesh = _mesh(config)
    logger.info("%d fold(s), %d genes, %d devices; run folder %s", len(folds), len(genes),
                jax.device_count(), workdir)
    scores, n_params = [], None
    for fold in folds:
        done = (fold_dir(workdir, fold) / "done.json").exists()
        pool = fold_pool(config, model, graphs, fold, data_dir) if not (done and n_params) else None
        if n_params is None:
            n_params = count_params(model, pool.example())
            logger.info("model %s: %d trainable parameters", config.model.name, n_params)
        if done:
            logger.info("%s: done (%s); skipping", fold.name, fold_dir(workdir, fold) / "done.json")
            scores.append(_load_fold(workdir, fold))
            continue
        logger.info("%s", fold.describe())
        state = train_fold(config, model, loss_fn, pool, fold.index, fold_dir(workdir, fold),
                           workdir / "metrics.jsonl", mesh=mesh, stop_after=stop_after,
                           progress=progress)
        if state is None:
            return None
        params = jax.device_get(state.params)
        fold_scores = _score(config, workdir, fold, model, params, graphs, genes, pool, names)
        _save_fold(workdir, fold, fold_scores)
        scores.append(fold_scores)
    return _finish(workdir, scores, genes, str(config.model.name), n_params)


def evaluate_all(config, workdir, *, data_dir=None) -> dict:
    """Re-scores every fold from its latest checkpoint (no training); rewrites the reports.

    The folds' done.json files are left alone (they mark finished training). ``data_dir`` as
    in ``train_and_evaluate``.
    """
    workdir = Path(workdir)
    data_dir = workdir if data_dir is None else Path(data_dir)
    genes, graphs = load_inputs(config, data_dir)
    folds = make_folds(config.train, {s: len(g.section_names) for s, g in graphs.items()})
    names = prediction_names(folds)
    model, _ = factory.build(config, len(genes))
    scores = []
    for fold in folds:
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
        logger.info("%s: re-scoring from %s (step %d)", fold.name, fold_dir(workdir, fold), step)
        fold_scores = _score(config, workdir, fold, model, params, graphs, genes, pool, names)
        for r, _ in fold_scores.values():
            r["step"] = step
        scores.append(fold_scores)
    if not scores:
        raise FileNotFoundError(f"{workdir / 'checkpoints'}: no fold checkpoint to evaluate")
    return _finish(workdir, scores, genes, str(config.model.name))
