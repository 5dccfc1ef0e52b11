"""The data stages of a run folder, each reused when its manifest matches, else built.

    <workdir>/synthetic_data   (synthetic only) generated sections  <- data.synthetic.generate
    <workdir>/prepared         genes, normalised labels, tiles, features <- preprocess
    <workdir>/registration     per-sample affines, QC, overlays     <- registration
    <workdir>/graphs           3D spot graphs                       <- graph
    <workdir>/tfds             (export) the prepared + registered sections as a tfds dataset

Every stage writes a manifest (``asign_jax.runfolder``): the config fields it depends on, the
build ids of the stages it read, and a completion marker written last. A stage is reused only
when it completed with the same fields and inputs; a killed stage is resumed; a stage made
with another config stops the command with one line, or with ``overwrite=True`` is rebuilt
together with every stage after it. Registration is a stage of its own: a multi-section sample
is never turned into a graph before its registration completed. ``load_inputs`` builds what is
missing and returns the fold-ready graphs; ``read_inputs`` reads them once per run (the folds
and their scoring are ``asign_jax.pipeline``).
"""


from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from asign_jax.config_checks import validate
from asign_jax.data import validate as validate_data
from asign_jax.data.lattice import FORMAT_KIND
from asign_jax.data.loaders import load_samples
from asign_jax.data.synthetic import EMBEDDINGS_FILE, generate
from asign_jax.errors import ConfigError
from asign_jax.evaluation import references
from asign_jax.features.extract import input_files
from asign_jax.graph import io as graph_io
from asign_jax.models import factory
from asign_jax.preprocess.prepare import prepare_samples, prepared_table
from asign_jax.preprocess.prepared import (PreparedSample, left_out_note, list_prepared)
from asign_jax.registration import tfds as tfds_export
from asign_jax.registration.ground_truth import load_ground_truth
from asign_jax.registration.qc import format_table
from asign_jax.registration.stack import register_sample
from asign_jax.runfolder import (REUSE, RunFolder, capturing_warnings,
                                 stage_fields)
from asign_jax.training.folds import make_folds
from asign_jax.training.standardize import standardize_features

logger = logging.getLogger(__name__)


def validated(config):
    """``config`` checked (``config_checks.validate`` + a known ``model.name``), as a resolved copy
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
    ``training.standardize``): everything downstream sees the model's input view.

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
