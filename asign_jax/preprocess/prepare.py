"""Raw samples -> prepared samples: gene selection, normalisation, tiles, features.

``prepare_samples`` is the whole preprocessing stage minus reading and registration:

1. select the top ``data.n_genes`` genes over ALL sections with counts of all samples
   (held-out ones included, as the paper and the official code do;
   ``data.gene_selection_sections`` restricts the ranking to the listed sections, e.g. the
   training ones) -> ``<workdir>/prepared/genes.txt``; image-only sections (no counts) get no
   labels, their spots only images;
2. per section (layer order): check spot centres lie in the image, subset genes, normalise
   spots (``stnet`` uses the per-spot total over all genes, taken before subsetting), build
   region/global tiles with labels = normalisation of summed member counts (triplex smoothing
   applies to spots only), extract features (image read once, freed after);
3. save each ``PreparedSample`` and ``<workdir>/prepared/index.json`` (which also lists the
   sections the reader left out, and why).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from asign_jax import atomic
from asign_jax.data.section import Sample, Section, dense_counts, row_totals
from asign_jax.errors import ConfigError, DataError
from asign_jax.features.encoders import make_extractor
from asign_jax.features.patches import count_outside
from asign_jax.preprocess.genes import select_genes
from asign_jax.preprocess.normalize import check_method, normalize
from asign_jax.preprocess.prepared import LABEL_FIELDS, PreparedSample, PreparedSection
from asign_jax.preprocess.tiles import (assign_tiles, check_spots_inside, region_global,
                                        tile_counts)

logger = logging.getLogger(__name__)

FEATURE_KEYS = ("spot_feats", "spot_tokens", "region_feats", "region_tokens", "global_feats",
                "global_tokens")


def check_data_config(data_cfg) -> None:
    """Fails early (before any expensive work) on invalid preprocessing settings."""
    check_method(data_cfg.normalization, bool(data_cfg.smooth))
    for key in ("spot_size", "region_size", "global_size", "n_genes"):
        if int(data_cfg[key]) <= 0:
            raise ConfigError(f"data.{key} must be > 0, got {data_cfg[key]}")
    if data_cfg.global_size % data_cfg.region_size:
        raise ConfigError(f"data.global_size={data_cfg.global_size} must be a multiple of "
                          f"data.region_size={data_cfg.region_size}")


def rank_sections(sections: Sequence[Section], names: str) -> Optional[list[Section]]:
    """The sections named by ``data.gene_selection_sections`` (comma-separated ids; "" = None,
    i.e. rank over every section). Raises ConfigError for a name that is not prepared."""
    wanted = [n.strip() for n in str(names).split(",") if n.strip()]
    if not wanted:
        return None
    by_name = {s.name: s for s in sections}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ConfigError(f"data.gene_selection_sections: unknown section(s) {unknown}; "
                          f"prepared sections: {sorted(by_name)}")
    return [by_name[n] for n in wanted]


def label_tiles(counts: np.ndarray, spot_tile: np.ndarray, n_tiles: int, method: str,
                all_totals: np.ndarray, n_all_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed raw counts (R, G) float32 of each tile and their normalisation (R, G) float32.

    ``all_totals`` (N,) are the spots' totals over all genes; a tile's total is their sum.
    Tiles are never smoothed.
    """
    summed = tile_counts(counts, spot_tile, n_tiles, dtype=np.float64)
    tile_totals = tile_counts(all_totals[:, None], spot_tile, n_tiles, dtype=np.float64)[:, 0]
    labels = normalize(summed, method, all_totals=tile_totals, n_all_genes=n_all_genes)
    return summed.astype(np.float32), labels


def _check_features(feats: dict, section: str, n: int, r: int, q: int) -> dict:
    """Validates the extractor's output shapes and casts to the stored dtypes (an extractor that
    gives no ``spot_tokens`` gets the pooled spot feature as a one-token grid)."""
    if "spot_tokens" not in feats and "spot_feats" in feats:   # an extractor without spot grids
        feats = {**feats, "spot_tokens": np.asarray(feats["spot_feats"])[:, None]}
    missing = [k for k in FEATURE_KEYS if k not in feats]
    if missing:
        raise DataError(f"section {section!r}: feature extractor returned no {missing}")
    out = {k: np.asarray(feats[k], dtype=np.float32) for k in FEATURE_KEYS if "feats" in k}
    out.update({k: np.asarray(feats[k], dtype=np.float16) for k in FEATURE_KEYS
                if "tokens" in k})
    d = out["spot_feats"].shape[-1] if out["spot_feats"].ndim == 2 else -1
    want = {"spot_feats": (n, d), "region_feats": (r, d), "global_feats": (q, d)}
    for k, shape in want.items():
        if out[k].shape != shape:
            raise DataError(f"section {section!r}: {k} has shape {out[k].shape}, expected "
                            f"{shape}")
    for k, rows in (("spot_tokens", n), ("region_tokens", r), ("global_tokens", q)):
        t = out[k]
        if t.ndim != 3 or t.shape[0] != rows or t.shape[2] != d:
            raise DataError(f"section {section!r}: {k} has shape {t.shape}, expected "
                            f"({rows}, T, {d})")
    return out


def prepare_section(section: Section, layer: int, genes: np.ndarray, data_cfg, extractor,
                    cache_dir: Path) -> tuple[PreparedSection, int]:
    """Prepares one section; returns it and the number of spots whose patch was padded."""
    where = f"section {section.name!r}"
    if not section.has_image:
        raise DataError(f"{where}: has no H&E image; only imaged sections can be prepared")
    if section.n_spots < max(1, int(data_cfg.min_section_spots)):
        raise DataError(f"{where}: {section.n_spots} spots, fewer than "
                        f"data.min_section_spots={data_cfg.min_section_spots}")
    method = data_cfg.normalization
    region_origin, spot_region = assign_tiles(section.pixel_xy, data_cfg.region_size)
    global_origin, spot_global = assign_tiles(section.pixel_xy, data_cfg.global_size)
    r, q = len(region_origin), len(global_origin)
    labels = dict.fromkeys(LABEL_FIELDS)         # image-only section: no counts, no labels
    if section.has_counts:
        # stnet needs totals over ALL genes of the section's file, recorded before the gene
        # intersection by Section.subset_genes.
        all_totals = (np.asarray(section.total_counts, dtype=np.float64)
                      if section.total_counts is not None
                      else row_totals(section.counts))
        n_all_genes = int(section.n_all_genes or len(section.genes))
        # dense only now: the selected genes of a section whose reader kept counts sparse
        counts = dense_counts(section.subset_genes(genes).counts)
        labels["spot_counts"] = counts
        labels["spot_labels"] = normalize(counts, method, array_xy=section.array_xy,
                                          smooth=bool(data_cfg.smooth), all_totals=all_totals,
                                          n_all_genes=n_all_genes)
        labels["region_counts"], labels["region_labels"] = label_tiles(
            counts, spot_region, r, method, all_totals, n_all_genes)
        labels["global_counts"], labels["global_labels"] = label_tiles(
            counts, spot_global, q, method, all_totals, n_all_genes)
    reg_glob = region_global(region_origin, data_cfg.region_size, global_origin,
                             data_cfg.global_size)

    image = section.read_image()
    image_shape = np.asarray(image.shape[:2], dtype=np.int64)
    try:
        check_spots_inside(section.pixel_xy, image_shape, section.name)
        padded = count_outside(image_shape, section.pixel_xy, data_cfg.spot_size)
        feats = extractor.section_features(section.name, image, section.pixel_xy,
                                           region_origin, global_origin, data_cfg, cache_dir,
                                           spot_ids=section.spot_ids)
    finally:
        del image
    feats = _check_features(feats, section.name, section.n_spots, r, q)

    prepared = PreparedSection(
        name=section.name, layer=int(layer), spot_ids=np.asarray(section.spot_ids, dtype=str),
        array_xy=np.asarray(section.array_xy, dtype=np.float64),
        pixel_xy=np.asarray(section.pixel_xy, dtype=np.float64),
        region_origin=region_origin, spot_region=spot_region, global_origin=global_origin,
        spot_global=spot_global, region_global=reg_glob, image_shape=image_shape,
        image_path=str(section.image_path), image_scale=float(section.image_scale),
        **labels, **feats)
    logger.info("%s: %d spots%s, %d region / %d global tiles, %d spots with padded %d px "
                "patches", where, section.n_spots, "" if section.has_counts else " (image only)",
                r, q, padded, data_cfg.spot_size)
    return prepared, padded


def section_summary(sample_id: str, section: PreparedSection, spot_size: int) -> dict:
    """One summary row: sample, section, spots, region/global tiles, padded spot patches."""
    return {"sample": sample_id, "section": section.name, "spots": section.n_spots,
            "region_tiles": len(section.region_origin),
            "global_tiles": len(section.global_origin),
            "padded_spots": count_outside(section.image_shape, section.pixel_xy, spot_size)}


def _sample_ids(samples: Sequence[Sample]) -> list[str]:
    """The sample ids in input order, after checking that there are samples, that their ids are
    unique and that each has sections with unique names (DataError otherwise)."""
    if not samples:
        raise DataError("no samples to prepare (the loader returned none)")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate sample ids: {ids}")
    for s in samples:
        names = [x.name for x in s.sections]
        if not names:
            raise DataError(f"sample {s.sample_id!r} has no sections")
        if len(set(names)) != len(names):
            raise DataError(f"sample {s.sample_id!r}: duplicate section names {names}")
    return ids


def _genes_to_keep(measured: Sequence[Section], n_samples: int, data_cfg,
                   genes: Optional[Sequence[str]]) -> np.ndarray:
    """(G,) str genes to keep: the top ``data.n_genes`` over the ``measured`` sections (those
    with counts) when ``genes`` is None, else ``genes`` as given, which every measured section
    must have (DataError otherwise)."""
    if genes is None:
        logger.info("selecting %d genes over %d sections of %d samples", data_cfg.n_genes,
                    len(measured), n_samples)
        return select_genes(measured, data_cfg.n_genes,
                            rank_sections(measured, data_cfg.gene_selection_sections))
    genes = np.asarray([str(g) for g in genes], dtype=str)
    for x in measured:
        missing = sorted(set(genes.tolist()) - set(x.genes.tolist()))
        if missing:
            raise DataError(f"section {x.name!r} lacks {len(missing)} of the {len(genes)} "
                            f"genes to keep, e.g. {missing[:5]}")
    return genes


def _prepare_sample(sample: Sample, genes: np.ndarray, data_cfg, extractor, workdir: Path,
                    cache_dir: Path, bar) -> PreparedSample:
    """Prepares one sample's sections in layer order (advancing the progress ``bar`` by one per
    section) and saves it under ``workdir``."""
    sections = []
    for layer, section in enumerate(sample.sections):
        bar.set_postfix_str(f"{sample.sample_id}/{section.name}")
        ps, _ = prepare_section(section, layer, genes, data_cfg, extractor, cache_dir)
        sections.append(ps)
        bar.update(1)
    prepared = PreparedSample(sample_id=sample.sample_id, genes=genes, sections=sections,
                              normalization=data_cfg.normalization)
    path = prepared.save(workdir)
    logger.info("sample %r: %d sections saved to %s", sample.sample_id, len(sections), path)
    return prepared


def prepare_samples(samples: Sequence[Sample], config, workdir, extractor: Optional[Any] = None,
                    genes: Optional[Sequence[str]] = None) -> list[PreparedSample]:
    """Prepares and saves every sample; see the module docstring for the steps.

    Args:
      samples: raw samples (sections in layer order; genes may differ between sections).
      config: the full config (``config.data`` and, without ``extractor``, ``config.features``).
      workdir: output folder; writes ``prepared/`` and uses ``cache/features``.
      extractor: object with ``section_features(section_name, image, spot_xy, region_origin,
        global_origin, data_cfg, cache_dir, spot_ids=...) -> dict`` (spot_ids: (N,) str, used
        by the precomputed-embeddings reader) of spot_feats (N, D), region_feats
        (R, D), region_tokens (R, T, D), global_feats (Q, D), global_tokens (Q, T, D).
        None = ``asign_jax.features.encoders.make_extractor(config.features)``.
      genes: the genes to keep, in order (e.g. a trained model's); None = select
        ``data.n_genes`` over the sections that have counts (image-only sections have none).

    Returns:
      the prepared samples, in input order.
    """
    data_cfg = config.data
    check_data_config(data_cfg)
    ids = _sample_ids(samples)

    workdir = Path(workdir)
    out_dir = workdir / "prepared"
    cache_dir = workdir / "cache" / "features"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)

    all_sections = [x for s in samples for x in s.sections]
    measured = [x for x in all_sections if x.has_counts]
    if not measured:
        raise DataError(f"no section of samples {ids} has counts; genes cannot be selected")
    genes = _genes_to_keep(measured, len(samples), data_cfg, genes)
    (out_dir / "genes.txt").write_text("\n".join(genes) + "\n")

    if extractor is None:
        logger.info("building the feature extractor (encoder=%s)", config.features.encoder)
        extractor = make_extractor(config.features)

    prepared_samples = []
    bar = tqdm(total=len(all_sections), desc="prepare sections", unit="section")
    for s in samples:
        prepared_samples.append(_prepare_sample(s, genes, data_cfg, extractor, workdir,
                                                cache_dir, bar))
    bar.close()

    index = {"samples": ids, "genes": [str(g) for g in genes],
             "normalization": data_cfg.normalization,
             "left_out": {s.sample_id: s.left_out for s in samples if s.left_out}}
    atomic.write_json(out_dir / "index.json", index)
    logger.info("wrote %s", out_dir / "index.json")
    return prepared_samples


def prepared_table(prepared, spot_size: int) -> str:
    """Per-section table: sample, section, spots, region/global tiles, padded spot patches."""
    rows = [section_summary(p.sample_id, s, spot_size) for p in prepared for s in p.sections]
    head = ("sample", "section", "spots", "region_tiles", "global_tiles", "padded_spots")
    cells = [head] + [tuple(str(r[k]) for k in head) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i >= 2 else c[i].ljust(widths[i])
                       for i in range(len(head))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
