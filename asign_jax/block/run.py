"""``impute_block``: a block manifest -> the block's 3D expression volume (``--out DIR``).

Stages (the intermediate run folder is ``<out>/work``, laid out like any run folder of the
project: prepared/, registration/, graphs/, checkpoints/fold_0/, metrics.jsonl):

1. read the manifest, the measured sections (their spot lattices) and ``--train_with``;
2. register the block on its images; stop on a poor registration (``impute.min_dice``);
3. spots of the image-only sections: user-given (``spots_from``) or a virtual grid;
4. preprocess (genes, normalisation, tiles, features; image-only sections get no labels),
   registered coordinates, 3D graphs;
5. the model: trained on the block's measured sections (+ ``--train_with``), or a checkpoint
   of ``asign_jax.train`` (optionally fine-tuned); prediction with every measured spot known;
6. ``volume.h5ad``, ``sections/<section>.h5ad``, ``figures/``, ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax import atomic, pipeline, stages
from asign_jax.block import figures, model as block_model, report, sources, virtual, volume
from asign_jax.block.manifest import load_manifest
from asign_jax.data import validate
from asign_jax.data.section import Sample
from asign_jax.errors import ConfigError, DataError
from asign_jax.features.extract import input_files
from asign_jax.graph import io as graph_io
from asign_jax.models import factory
from asign_jax.preprocess.genes import select_genes
from asign_jax.preprocess.prepare import check_data_config, prepare_samples
from asign_jax.registration.stack import image_for, register_sample
from asign_jax.runfolder import REUSE, RunFolder, capturing_warnings, stage_fields
from asign_jax.training import pools

logger = logging.getLogger(__name__)


def _fingerprint(manifest_path: Path, config, options: dict) -> dict:
    return {"manifest": str(manifest_path.resolve()),
            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "config": json.loads(config.to_json_best_effort()), "options": options}


def _check_workdir(work: Path, fingerprint: dict, overwrite: bool = False) -> None:
    """Refuses to reuse a work folder written from other inputs (its model would be stale);
    ``overwrite``: a warning, and the training stage's own manifest decides what is rebuilt.
    The content of the files the manifest points to is checked by that manifest."""
    path = work / "inputs.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(atomic.json_safe(fingerprint))):
            changed = sorted(k for k in fingerprint if old.get(k) != atomic.json_safe(
                fingerprint[k]))
            if not overwrite:
                raise DataError(f"{path}: this --out folder was written from other inputs "
                                f"(changed: {changed}); use a new --out or pass --overwrite")
            logger.warning("%s: written from other inputs (changed: %s); --overwrite", path,
                           changed)
    atomic.write_json(path, fingerprint)


def training_fields(config, fold, genes, options: dict) -> dict:
    """What the block's model depends on: the config fields of every stage before it and of
    the fold (``runfolder.stage_fields``), the gene list and the impute options."""
    out = {}
    for stage in ("prepare", "register", "graph", fold.name):
        out.update(stage_fields(stage, config, fold=fold if stage == fold.name else None))
    out["impute.genes"] = [str(g) for g in genes]
    out.update({f"impute.{k}": v for k, v in options.items()})
    return json.loads(json.dumps(atomic.json_safe(out)))


def _plot_genes(config, genes: Sequence[str], override, work: Path = Path(".")) -> list[str]:
    want = [g for g in (override or config.impute.plot_genes or config.train.eval_genes)]
    chosen = [g for g in want if g in genes]
    missing = sorted(set(want) - set(chosen))
    if override and missing:
        raise ConfigError(f"--genes: {missing} not among the {len(genes)} imputed genes")
    if missing:
        field = "impute.plot_genes" if config.impute.plot_genes else "train.eval_genes"
        logger.warning("%s: %s not among the %d imputed genes (%s); not drawn", field,
                       ", ".join(missing), len(genes), work / "prepared" / "genes.txt")
    return chosen or list(genes[:3])


def impute_block(*args, **kwargs) -> dict:
    """`run_block` with every WARNING it logs kept in ``summary.json`` ("warnings")."""
    with capturing_warnings() as found:
        return run_block(*args, warnings=found, **kwargs)


def run_block(manifest_path, out, config=None, *, train_with: Sequence[str] = (),
              checkpoint: Optional[str] = None, finetune: bool = False,
              spots_from: Optional[str] = None, allow_poor_registration: bool = False,
              plot_genes: Optional[Sequence[str]] = None,
              thickness_um: Optional[float] = None, extractor=None,
              progress: bool = True, overwrite: bool = False,
              allow_unusual_spots: bool = False, warnings: Optional[list] = None) -> dict:
    """Runs the stages of the module docstring; returns the summary (also ``summary.json``).

    Args:
      manifest_path: the block manifest (``block.manifest``).
      out: output folder.
      config: the config (None = the manifest's ``config:`` file).
      train_with: extra labelled data (manifests, config files or dataset folders).
      checkpoint: a trained model instead of training (``block.model.find_checkpoint``).
      finetune: with ``checkpoint``: continue training it on the block for train.steps.
      spots_from: folder of ``<section>.csv`` spot centres for image-only sections.
      allow_poor_registration: continue when a section's Dice is below impute.min_dice.
      plot_genes: genes for the figures (None = impute.plot_genes / train.eval_genes).
      thickness_um: section thickness (overrides the manifest's).
      extractor: feature extractor (None = from config.features; tests pass a small one).
      overwrite: retrain when the training stage (``work/checkpoints/fold_0``) was made from
        other data, genes or config, instead of stopping with one line.
      allow_unusual_spots: a ``spots_from`` grid mostly off tissue or at another pitch is a
        warning instead of an error.
      warnings: the list the WARNING lines are collected in (``summary.json``).
    """
    warnings = [] if warnings is None else warnings
    t0 = time.perf_counter()
    times = {}
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path, thickness_um=thickness_um)
    config, ckpt = _config_and_checkpoint(manifest, manifest_path, config, checkpoint, finetune)
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    train_specs = [str(p) for p in manifest.train_with] + [str(p) for p in train_with]
    options = {"train_with": train_specs, "checkpoint": str(ckpt.fold_dir) if ckpt else "",
               "finetune": bool(finetune), "spots_from": str(spots_from or ""),
               "thickness_um": manifest.thickness_um}
    _check_workdir(work, _fingerprint(manifest_path, config, options), overwrite)
    rf = RunFolder(work, overwrite=overwrite, remedy="use a new --out or pass --overwrite")

    t = time.perf_counter()                                          # 1. read
    read = _read_block(manifest, manifest_path, config, rf, ckpt, train_specs, spots_from,
                       finetune, options)
    times["read"] = time.perf_counter() - t

    t = time.perf_counter()                                          # 2. register
    print(f"\nregistering {len(manifest.sections)} sections (images only) ...")
    entries = manifest.sections
    scales = [read.measured[l].image_scale if l in read.measured
              else sources.image_scale(e, config.data) for l, e in enumerate(entries)]
    frames = virtual.register_block(
        manifest.sample_id, [image_for(e.image, sc) for e, sc in zip(entries, scales)],
        [e.name for e in entries],
        [{"spot": read.measured[l].pixel_xy} if l in read.measured else {}
         for l in range(len(entries))], config, allow_poor=allow_poor_registration)
    times["register"] = time.perf_counter() - t

    sections, origins = _block_spots(manifest, read, frames, scales, config,  # 3. spots
                                     allow_unusual_spots)

    t = time.perf_counter()                                          # 4. prepare, graphs
    block = Sample(manifest.sample_id, sections)
    prepared = prepare_samples([block] + read.extra, config, work, extractor=extractor,
                               genes=read.genes)
    for p in prepared[1:]:
        if p.n_layers >= 2:
            register_sample(p, config, work)
    registered = virtual.registered_sample(
        prepared[0], frames, config, work,
        spot_radius=read.lattices[entries[manifest.measured[0]].name].spot_diameter / 2)
    graph_io.build_all(work, config)
    genes, graphs, _ = stages.read_inputs(config, work)
    times["prepare"] = time.perf_counter() - t

    t = time.perf_counter()                                          # 5. model
    preds, model_info = _model(config, read, rf, ckpt, finetune, graphs, work,
                               manifest.sample_id, warnings, progress)
    times["model"] = time.perf_counter() - t

    t = time.perf_counter()                                          # 6. outputs
    spots = volume.block_spots(prepared[0], registered, origins)
    written, libraries = volume.write_outputs(
        out, spots, preds, genes, prepared[0], manifest.z(), frames.qc, model_info,
        read.lattices, str(config.data.normalization), manifest.thickness_um,
        affines=frames.affines)
    adata = _read_checked_volume(written["volume"], spots)
    figs = figures.plot_block(out / "figures", adata, libraries,
                              _plot_genes(config, genes, plot_genes, work))
    times["outputs"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0

    summary = report.summary(manifest, sections, origins, frames, read.lattices, genes,
                             model_info, warnings, times, written, figs, out, work)
    atomic.write_json(out / "summary.json", summary)
    report.print_summary(summary, out)
    return summary


def _config_and_checkpoint(manifest, manifest_path: Path, config, checkpoint, finetune):
    """The validated config (``--config`` or the manifest's) and the checkpoint to start from
    (None = train on the block)."""
    if config is None:
        if manifest.config is None:
            raise ConfigError(f"{manifest_path}: no config; pass --config configs/<dataset>.py "
                              "or set 'config:' in the manifest")
        config = sources.load_config(manifest.config)
    config = stages.validated(config)
    check_data_config(config.data)
    if finetune and not checkpoint:
        raise ConfigError("--finetune needs --checkpoint (a model to fine-tune)")
    ckpt = block_model.find_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.normalization != config.data.normalization:
        raise ConfigError(f"--checkpoint {ckpt.run_dir}: trained on {ckpt.normalization!r} "
                          f"labels, but data.normalization={config.data.normalization!r}")
    return config, ckpt


@dataclasses.dataclass
class _Read:
    """Stage 1's result: the measured sections {layer: Section} (genes intersected), their
    lattices {name: Lattice}, the user-given spot files {layer: path | None} of the image-only
    sections, the ``--train_with`` samples, the gene panel, the block's fold, and the training
    stage's record (``rec``, ``stage_cfg``, ``stage_in``, ``state``; ``trains`` = a model is
    trained or fine-tuned here)."""

    measured: dict
    lattices: dict
    given: dict
    extra: list
    genes: list
    fold: object
    rec: object
    trains: bool
    stage_cfg: dict = dataclasses.field(default_factory=dict)
    stage_in: dict = dataclasses.field(default_factory=dict)
    state: object = None


def _read_block(manifest, manifest_path: Path, config, rf: RunFolder, ckpt, train_specs,
                spots_from, finetune: bool, options: dict) -> _Read:
    """Stage 1: the measured sections, ``--train_with``, genes and the fold; every input file
    recorded with its content fingerprint; the training stage checked before any work."""
    entries = manifest.sections
    spots_dir = Path(spots_from) if spots_from else None
    if spots_dir is not None and not spots_dir.is_dir():
        raise DataError(f"--spots_from {spots_dir}: folder does not exist")
    given = {l: e.spots_from or (spots_dir / f"{e.name}.csv"
                                 if spots_dir and (spots_dir / f"{e.name}.csv").is_file()
                                 else None)
             for l, e in enumerate(entries) if not e.measured}
    print(f"block {manifest.sample_id}: {len(entries)} sections "
          f"({', '.join(e.name + ('*' if e.measured else '') for e in entries)}; * = with ST)")
    measured, lattices = {}, {}
    with rf.recording() as rec:
        for f in [manifest_path, manifest.config, *[e.image for e in entries], *given.values()]:
            if f:
                rec.add(Path(f).expanduser())
        for f in input_files(config.features):       # read by the feature extractor
            rec.add(f)
        for l, e in enumerate(entries):
            if e.measured:
                measured[l], lattices[e.name] = sources.read_measured(e, config.data)
        extra = sources.train_with_samples(train_specs, config, {manifest.sample_id})
    validate.check_distinct_images([(e.name, e.image) for e in entries]
                                   + [(x.name, x.image_path) for s in extra for x in s.sections],
                                   rec.files)
    labelled = validate.intersect_genes(
        [Sample(manifest.sample_id, list(measured.values()))] + extra,
        n_ranked=int(config.data.n_genes))
    for w in validate.pitch_warnings(labelled, expected=float(config.data.spot_pitch_px)):
        logger.warning("%s", w)
    measured = dict(zip(measured, labelled[0].sections))
    extra = labelled[1:]
    genes = (list(ckpt.genes) if ckpt is not None else
             [str(g) for g in select_genes(list(measured.values()), int(config.data.n_genes))])
    fold = block_model.block_fold(manifest.sample_id, [s.sample_id for s in extra],
                                  {manifest.sample_id: len(entries),
                                   **{s.sample_id: s.n_layers for s in extra}}, config,
                                  manifest.measured)
    read = _Read(measured, lattices, given, extra, genes, fold, rec,
                 trains=ckpt is None or finetune)
    if read.trains:  # the training stage is checked before any work (registration, features)
        read.stage_cfg = training_fields(config, fold, genes, options)
        read.stage_in = {"checkpoint": ckpt.fold_dir.name + ":" + str(
            (RunFolder(ckpt.run_dir).read(ckpt.fold_dir.name) or {}).get("build"))} if ckpt else {}
        read.state = rf.check(fold.name, read.stage_cfg, read.stage_in)
    return read


def _block_spots(manifest, read: _Read, frames, scales, config, allow_unusual_spots: bool):
    """Stage 3: the block's sections in layer order (measured; user-given spots; a virtual
    grid on the tissue) and the origin of each ("measured" | "given" | "virtual")."""
    sections, origins = [], []
    entries = manifest.sections
    for l, e in enumerate(entries):
        if l in read.measured:
            sections.append(read.measured[l])
            origins.append("measured")
            continue
        m = virtual.nearest_measured(l, list(read.measured))
        ref = read.lattices[entries[m].name]
        if read.given[l] is not None:
            sections.append(sources.read_spots_from(e, read.given[l], scales[l]))
            read.lattices[e.name] = virtual.section_lattice(frames, ref, m, l)
            virtual.check_given_spots(frames, l, sections[-1].pixel_xy, read.lattices[e.name],
                                      m, read.measured[m].pixel_xy, read.given[l],
                                      float(config.impute.max_spots_off_tissue),
                                      allow=allow_unusual_spots)
            origins.append("given")
        else:
            k, xy, read.lattices[e.name] = virtual.virtual_grid(frames, ref, m, l)
            ids = [f"virtual_{a}x{b}" for a, b in k]
            sections.append(sources.image_only(e.name, e.image, ids, xy, k, scales[l]))
            origins.append("virtual")
            logger.info("section %s: %d virtual spots on the %s grid of %s (pitch %.1f px in "
                        "its own image)", e.name, len(ids), read.lattices[e.name].kind,
                        entries[m].name, read.lattices[e.name].pitch)
    return sections, origins


def _model(config, read: _Read, rf: RunFolder, ckpt, finetune: bool, graphs, work: Path,
           sample_id: str, warnings: list, progress: bool):
    """Stage 5: the model (trained on the block, or a checkpoint, optionally fine-tuned) and
    its prediction of every spot of the block with every measured spot known; returns
    (predictions, model_info)."""
    net, loss_fn = factory.build(config, len(read.genes))
    fold = read.fold
    if read.trains:
        if read.state == REUSE:
            logger.info("model: reusing %s (same data, genes and config)",
                        pipeline.fold_dir(work, fold))
        else:
            rf.start(fold.name, read.stage_cfg, read.stage_in, read.state)
    if ckpt is not None:
        pool = pools.fold_pool(config, net, graphs, fold, work)
        params, step = block_model.restore(config, net, pool, ckpt.fold_dir)
        logger.info("model: %s (step %d)", ckpt.fold_dir, step)
        if finetune:
            pool, params, step = block_model.fit(config, net, loss_fn, graphs, fold, work,
                                                 init_params=params, progress=progress)
    else:
        pool, params, step = block_model.fit(config, net, loss_fn, graphs, fold, work,
                                             progress=progress)
    if read.trains and read.state != REUSE:
        rf.finish(fold.name, files=read.rec.files, warnings=warnings)
    preds = block_model.predict(config, net, params, graphs[sample_id], pool)
    info = {"checkpoint": str(ckpt.fold_dir if ckpt and not finetune
                              else work / "checkpoints" / fold.name),
            "source": ("checkpoint" if ckpt and not finetune else
                       "checkpoint fine-tuned on the block" if ckpt else
                       "trained on the block"),
            "step": int(step), "trained_on": list(fold.test_samples + fold.train_samples),
            "validation_samples": list(fold.val_samples),
            "validation": fold.describe().split("; ", 1)[1] if fold.has_validation else "",
            "model": str(config.model.name),
            "config": json.loads(config.to_json_best_effort())}
    return preds, info


def _read_checked_volume(volume_path: Path, spots):
    """The written ``volume.h5ad``, read back; RuntimeError unless it keeps every measured
    spot's values exactly."""
    import anndata as ad

    adata = ad.read_h5ad(volume_path)
    kept = spots.is_measured
    if not np.array_equal(adata.X[kept], spots.measured[kept]):
        raise RuntimeError(f"{volume_path}: measured spots were not written unchanged")
    return adata
