"""Train and evaluate ASIGN with sample-level cross-validation, from nothing to the reports.

    python -m asign_jax.train --config configs/<dataset>.py --workdir DIR [--config.train.steps=500]

Stages (each skipped when its output exists, so relaunching the same command resumes):
  1. ``<workdir>/prepared``  <- ``asign_jax.prepare.prepare`` (synthetic data is generated there)
  2. ``<workdir>/graphs``    <- ``asign_jax.graph.io.build_all``
  3. per fold: train (``checkpoints/fold_<k>``, orbax, resumes from the latest step), evaluate
     ASIGN + baselines on the test layers, write ``checkpoints/fold_<k>/done.json``
  4. ``metrics.json``, ``metrics.jsonl`` (training log), ``per_gene_pcc.csv``,
     ``predictions/<sample>.h5ad``, ``plots/*.png``; a summary table on stdout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from asign_jax import evaluate as ev
from asign_jax.training import batches
from asign_jax.training.folds import Fold, make_folds
from asign_jax.training.loop import make_eval_fn, restore_params, train_fold

logger = logging.getLogger(__name__)


# ---- inputs ---------------------------------------------------------------------------------

def load_inputs(config, workdir: Path):
    """Prepares data and builds graphs if missing; returns (genes, graphs, sections).

    The graphs' image features are standardised per sample (``train.feature_norm``,
    ``batches.standardize_features``): everything downstream sees the model's input view.

    genes: list[str]; graphs: {sample id: SampleGraph}; sections: {sample id: [names]}.
    """
    from asign_jax.preprocess.prepared import list_prepared

    workdir = Path(workdir)
    index = workdir / "prepared" / "index.json"
    if not index.exists():
        from asign_jax.prepare import prepare
        logger.info("no %s: preparing the data (asign_jax.prepare)", index)
        prepare(config, workdir)
    sample_ids = list_prepared(workdir)
    genes = [str(g) for g in json.loads(index.read_text())["genes"]]
    from asign_jax.graph import io as graph_io
    missing = [s for s in sample_ids if not graph_io.graph_path(workdir, s).exists()]
    if missing:
        logger.info("graphs missing for %s: building them in %s", missing, workdir / "graphs")
        graph_io.build_all(workdir, config, sample_ids=missing)
    norm = str(config.train.get("feature_norm", "sample"))
    graphs = {s: batches.standardize_features(graph_io.load_sample_graph(workdir, s), norm)
              for s in sample_ids}
    sections = {s: [str(n) for n in g.section_names] for s, g in graphs.items()}
    return genes, graphs, sections


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


def _model(config, n_genes: int):
    from asign_jax.models.msagnet import ASIGN
    return ASIGN(cfg=config.model, n_genes=n_genes)


def _fold_dir(workdir: Path, fold: Fold) -> Path:
    return Path(workdir) / "checkpoints" / fold.name


def _mesh(config):
    if jax.device_count() <= 1:
        return None
    from asign_jax.training.sharding import make_mesh
    return make_mesh(int(config.train.samples_per_step))


def _evaluate(config, workdir, fold, model, params, graphs, genes, sections, pool, names):
    fn = make_eval_fn(model)
    return ev.evaluate_fold(config, workdir, fold, lambda s: fn(params, s), graphs, genes,
                            sections, pool.pad, names[fold.index])


def _save_fold(workdir: Path, fold: Fold, result: dict, per_gene: dict) -> None:
    d = _fold_dir(workdir, fold)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "per_gene.npz", **per_gene)
    ev.write_json(d / "done.json", result)


def _load_fold(workdir: Path, fold: Fold):
    d = _fold_dir(workdir, fold)
    result = json.loads((d / "done.json").read_text())
    with np.load(d / "per_gene.npz") as z:
        per_gene = {k: z[k] for k in z.files}
    return result, per_gene


def _finish(workdir: Path, results: list, per_gene: list, genes: list) -> dict:
    agg = ev.write_reports(workdir, results, per_gene, genes)
    print(f"\nTest layers of {len(results)} fold(s); mean +- std over folds "
          f"(pcc_gene: per gene across spots; pcc_spot: per spot across genes, official-code metric)")
    print(ev.summary_table(agg))
    print(f"\nmetrics:     {workdir / 'metrics.json'} (per fold/section), {workdir / 'metrics.jsonl'} (training log)")
    print(f"per gene:    {workdir / 'per_gene_pcc.csv'}")
    print(f"predictions: {workdir / 'predictions'}/<sample>.h5ad; plots: {workdir / 'plots'}")
    return agg


# ---- entry points ---------------------------------------------------------------------------

def train_and_evaluate(config, workdir, *, stop_after: Optional[int] = None,
                       progress: bool = True) -> Optional[dict]:
    """The whole pipeline; returns {method: {"mean", "std"}} or None if stopped (``stop_after``).

    ``stop_after`` (testing): stop the first unfinished fold after that many steps, as if the
    process had been killed; relaunching resumes from its latest checkpoint.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    genes, graphs, sections = load_inputs(config, workdir)
    folds = make_folds(config.train, {s: len(v) for s, v in sections.items()})
    names = prediction_names(folds)
    model = _model(config, len(genes))
    mesh = _mesh(config)
    logger.info("%d fold(s), %d genes, %d devices; run folder %s", len(folds), len(genes),
                jax.device_count(), workdir)
    results, per_gene = [], []
    for fold in folds:
        if (_fold_dir(workdir, fold) / "done.json").exists():
            logger.info("%s: done (%s); skipping", fold.name, _fold_dir(workdir, fold) / "done.json")
            r, pg = _load_fold(workdir, fold)
        else:
            logger.info("%s", fold.describe())
            pool = batches.build_pool(graphs, fold, seed=int(config.seed))
            state = train_fold(config, model, pool, fold.index, _fold_dir(workdir, fold),
                               workdir / "metrics.jsonl", mesh=mesh, stop_after=stop_after,
                               progress=progress)
            if state is None:
                return None
            params = jax.device_get(state.params)
            r, pg = _evaluate(config, workdir, fold, model, params, graphs, genes, sections, pool, names)
            _save_fold(workdir, fold, r, pg)
        results.append(r)
        per_gene.append(pg)
    return _finish(workdir, results, per_gene, genes)


def evaluate_all(config, workdir) -> dict:
    """Re-scores every fold from its latest checkpoint (no training); rewrites the reports.

    The folds' done.json files are left alone (they mark finished training).
    """
    workdir = Path(workdir)
    genes, graphs, sections = load_inputs(config, workdir)
    folds = make_folds(config.train, {s: len(v) for s, v in sections.items()})
    names = prediction_names(folds)
    model = _model(config, len(genes))
    results, per_gene = [], []
    for fold in folds:
        pool = batches.build_pool(graphs, fold, seed=int(config.seed))
        try:
            params, step = restore_params(config, model, pool, _fold_dir(workdir, fold),
                                          return_step=True)
        except FileNotFoundError as e:
            logger.warning("%s: %s; skipped", fold.name, e)
            continue
        if step < int(config.train.steps):
            logger.warning("%s: latest checkpoint is step %d of %d (training unfinished)",
                           fold.name, step, int(config.train.steps))
        logger.info("%s: re-scoring from %s (step %d)", fold.name, _fold_dir(workdir, fold), step)
        r, pg = _evaluate(config, workdir, fold, model, params, graphs, genes, sections, pool, names)
        r["step"] = step
        results.append(r)
        per_gene.append(pg)
    if not results:
        raise FileNotFoundError(f"{workdir / 'checkpoints'}: no fold checkpoint to evaluate")
    return _finish(workdir, results, per_gene, genes)


def main(argv):
    from asign_jax.entry import start
    start(argv)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


def define_flags():
    """--config and --workdir (see ``asign_jax.entry``)."""
    from asign_jax.entry import define_flags as _define
    return _define("Run folder (prepared data, graphs, checkpoints, reports).")


if __name__ == "__main__":
    from absl import app

    FLAGS = define_flags()
    app.run(main)
