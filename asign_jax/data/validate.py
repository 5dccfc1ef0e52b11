"""Checks shared by every dataset reader, plus the shared count-table reader.

Every check raises `DataError` whose message names the offending file and the problem, so
that bad input stops at the reader instead of surfacing later as a numpy error or a NaN.
Readers build their sections through `make_section`, which runs all per-section checks.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import logging
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from asign_jax import fingerprint
from asign_jax.data.lattice import fit_lattice, infer_lattice
from asign_jax.data.section import Sample, Section
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

# Errors pandas / gzip / the csv module raise on malformed or corrupt files.
_READ_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
                EOFError, OSError, zlib.error, csv.Error, ValueError)


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def require_file(path: Path, what: str) -> Path:
    """Returns ``path`` if it is an existing file, else raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} does not exist")
    fingerprint.note(path)               # an input of the stage being built (run manifests)
    return path


def read_table(path: Path, what: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; parse failures become a DataError naming the file."""
    path = require_file(path, what)
    try:
        return pd.read_csv(path, **kwargs)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot parse {what}: {type(e).__name__}: {e}") from e


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {missing}; found {list(df.columns)[:12]}")


def numeric_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Column as float64; raises DataError on non-numeric or missing values."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {column!r} has {int(bad.sum())} missing or non-numeric "
                        f"value(s), first at data row {row + 1}: {df[column].iloc[row]!r}")
    return values


def read_count_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a tab-separated (optionally gzipped) spots x genes count table.

    The first column holds the spot ids, the header the gene names (its first field, the
    index name, may be empty or absent). Gene names are taken verbatim from the header, so
    duplicates are caught (pandas would silently rename them ``X.1``) and names such as
    ``ENSG...+ENSG...`` stay one gene.

    Returns:
      spot_ids (N,) str, genes (G,) str, counts (N, G) float32 (checked by `check_counts`).
    """
    path = require_file(path, "count table")
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter="\t")
            header, first = next(reader, None), next(reader, None)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read count table: {type(e).__name__}: {e}") from e
    if not header or not first:
        raise DataError(f"{path}: count table has no header or no spot row")
    if len(first) - len(header) not in (0, 1):  # 1: R-style header without the index field
        raise DataError(f"{path}: header has {len(header)} fields but the first row has "
                        f"{len(first)}")
    df = read_table(path, "count table", sep="\t", index_col=0, low_memory=False)
    genes = header[1:] if len(header) == df.shape[1] + 1 else header
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DataError(f"{path}: count table has no spots or no genes (shape {df.shape})")
    genes = np.asarray(genes, dtype=str)
    check_unique(genes, path, "gene name")
    non_numeric = [str(g) for g, dt in zip(genes, df.dtypes)
                   if not pd.api.types.is_numeric_dtype(dt)]
    if non_numeric:
        raise DataError(f"{path}: non-numeric counts in {len(non_numeric)} gene column(s), "
                        f"e.g. {non_numeric[:3]}")
    spot_ids = np.asarray(df.index.astype(str), dtype=str)
    counts = df.to_numpy(dtype=np.float32)
    check_counts(counts, path, spot_ids=spot_ids, genes=genes)
    return spot_ids, genes, counts


def check_unique(ids: np.ndarray, path, what: str) -> None:
    """Raises DataError listing duplicated ``ids`` (spot ids, barcodes, gene names)."""
    ids = np.asarray(ids)
    uniq, n = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[n > 1]
        raise DataError(f"{path}: {len(dup)} duplicated {what}(s), e.g. {dup[:5].tolist()}")


def check_counts(counts: np.ndarray, path, *, spot_ids=None, genes=None) -> None:
    """Raises DataError on NaN/inf or negative counts, naming the first offending entry."""
    for bad, problem in ((~np.isfinite(counts), "missing, NaN or infinite"),
                         (counts < 0, "negative")):
        if bad.any():
            i, j = np.argwhere(bad)[0]
            where = (f"spot {str(spot_ids[i])!r}" if spot_ids is not None else f"row {i}") + (
                f", gene {str(genes[j])!r}" if genes is not None else f", column {j}")
            raise DataError(f"{path}: {int(bad.sum())} {problem} count(s), first at {where}: "
                            f"{counts[i, j]}")


def check_sparse_counts(counts, path, *, spot_ids=None, genes=None) -> None:
    """`check_counts` for a CSR matrix: only its stored values are looked at."""
    for bad, problem in ((~np.isfinite(counts.data), "missing, NaN or infinite"),
                         (counts.data < 0, "negative")):
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            i = int(np.searchsorted(counts.indptr, k, side="right") - 1)
            j = int(counts.indices[k])
            where = (f"spot {str(spot_ids[i])!r}" if spot_ids is not None else f"row {i}") + (
                f", gene {str(genes[j])!r}" if genes is not None else f", column {j}")
            raise DataError(f"{path}: {int(bad.sum())} {problem} count(s), first at {where}: "
                            f"{counts.data[k]}")


def check_coordinates(xy: np.ndarray, path, what: str) -> None:
    if not np.isfinite(xy).all():
        row = int(np.flatnonzero(~np.isfinite(xy).all(axis=1))[0])
        raise DataError(f"{path}: non-finite {what} coordinates, first at row {row}: {xy[row]}")


def check_image(path: Optional[Path], section: str) -> None:
    """Raises DataError when an image path is given but the file is absent.

    Readability is checked when the image is read (`asign_jax.data.image.read_rgb`).
    """
    if path is not None and not Path(path).is_file():
        raise DataError(f"{path}: image file of section {section!r} does not exist")


def join_spots(count_ids: np.ndarray, spot_ids: np.ndarray, counts_path, spots_path,
               section: str) -> tuple[np.ndarray, np.ndarray]:
    """Joins the count table with the spot file on the spot id.

    Unmatched spots on either side are dropped, counted and logged. Refuses the pair when
    nothing matches or when more than half of either side is unmatched, which almost always
    means the files belong to different sections.

    Returns:
      (count_rows, spot_rows): int64 indices of the matched spots, in count-table order.
    """
    check_unique(count_ids, counts_path, "spot id")
    check_unique(spot_ids, spots_path, "spot id")
    spot_row = {s: i for i, s in enumerate(spot_ids)}
    count_rows = np.array([i for i, s in enumerate(count_ids) if s in spot_row], dtype=np.int64)
    spot_rows = np.array([spot_row[count_ids[i]] for i in count_rows], dtype=np.int64)
    n = len(count_rows)
    only_counts, only_spots = len(count_ids) - n, len(spot_ids) - n
    if n == 0:
        raise DataError(f"section {section!r}: no spot id of {counts_path} "
                        f"(e.g. {count_ids[:3].tolist()}) occurs in {spots_path} "
                        f"(e.g. {spot_ids[:3].tolist()}); are these the files of one section?")
    if only_counts > len(count_ids) / 2 or only_spots > len(spot_ids) / 2:
        raise DataError(f"section {section!r}: only {n} spots match between {counts_path} "
                        f"({len(count_ids)} spots) and {spots_path} ({len(spot_ids)} spots); "
                        "more than half of one side is unmatched, probably a wrong file pairing")
    if only_counts or only_spots:
        logger.warning("section %s: dropped %d spot(s) of %s without a row in %s and %d "
                       "spot(s) of %s without counts; %d spots kept", section, only_counts,
                       counts_path, spots_path, only_spots, spots_path, n)
    return count_rows, spot_rows


def make_section(name: str, image_path: Optional[Path], spot_ids, array_xy, pixel_xy, counts,
                 genes, *, source) -> Section:
    """Builds a `Section` after running every per-section check.

    ``source`` names the file(s) the data came from, for the error messages.
    """
    spot_ids = np.asarray(spot_ids, dtype=str)
    genes = np.asarray(genes, dtype=str)
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    import scipy.sparse as sp
    if sp.issparse(counts):            # kept sparse (CSR) until the gene panel is chosen
        counts = sp.csr_matrix(counts, dtype=np.float32)
        counts.sum_duplicates()
    else:
        counts = np.ascontiguousarray(counts, dtype=np.float32)
    if len(spot_ids) == 0:
        raise DataError(f"{source}: section {name!r} has no spots")
    check_unique(spot_ids, source, "spot id")
    check_unique(genes, source, "gene name")
    if sp.issparse(counts):
        check_sparse_counts(counts, source, spot_ids=spot_ids, genes=genes)
    else:
        check_counts(counts, source, spot_ids=spot_ids, genes=genes)
    check_coordinates(array_xy, source, "array")
    check_coordinates(pixel_xy, source, "pixel")
    check_image(image_path, name)
    return Section(name=name, image_path=None if image_path is None else Path(image_path),
                   spot_ids=spot_ids, array_xy=array_xy, pixel_xy=pixel_xy, counts=counts,
                   genes=genes)


GENE_LOSS_WARN = 0.05
"""A section losing more than this fraction of its ``n_ranked`` most expressed genes to the
gene intersection is a warning (the genes then selected are not the ones it would give)."""


def gene_losses(sections: Sequence[Section], keep, n_ranked: int) -> list[str]:
    """Warnings for sections whose own top-``n_ranked`` genes (by mean raw count) lose more
    than ``GENE_LOSS_WARN`` of their number to the intersection ``keep``; each names the
    section, how many, examples and the sections that lack them."""
    keep, out = set(keep.tolist()), []
    for s in sections:
        n = min(int(n_ranked), len(s.genes))
        if n <= 0 or len(s.genes) == len(keep):
            continue
        means = np.asarray(s.counts.mean(axis=0, dtype=np.float64)).ravel()   # dense or CSR
        order = np.argsort(-means, kind="stable")[:n]
        lost = [str(g) for g in s.genes[order] if g not in keep]
        if len(lost) > GENE_LOSS_WARN * n:
            lacking = sorted({o.name for o in sections if o is not s
                              and not set(lost[:50]) <= set(o.genes.tolist())})
            out.append(f"gene intersection: {len(lost)} of the {n} most expressed genes of "
                       f"section {s.name} ({100 * len(lost) / n:.0f} %, e.g. "
                       f"{', '.join(lost[:5])}) are absent from {', '.join(lacking) or 'another section'} and "
                       "are dropped, so the genes selected are not those of a run without "
                       "those sections; check their count files")
    return out


def intersect_genes(samples: list[Sample], n_ranked: int = 0) -> list[Sample]:
    """Restricts every section to the genes present in all sections (order of the first).

    Image-only sections (no counts) neither constrain the genes nor change.

    Logs how many genes each section loses; raises DataError when no gene is shared. With
    ``n_ranked`` (``data.n_genes``) a WARNING (`gene_losses`) when a section loses more than
    a few percent of its ``n_ranked`` most expressed genes.
    """
    sections = [s for sample in samples for s in sample.sections if s.has_counts]
    if not sections:
        return list(samples)
    present = collections.Counter(g for s in sections for g in set(s.genes.tolist()))
    keep = np.array([g for g in sections[0].genes if present[g] == len(sections)], dtype=str)
    if len(keep) == 0:
        raise DataError("no gene is shared by all sections: "
                        + ", ".join(f"{s.name} ({len(s.genes)} genes, e.g. {s.genes[:3].tolist()})"
                                    for s in sections[:6]))
    for w in gene_losses(sections, keep, n_ranked):
        logger.warning("%s", w)
    out = []
    for sample in samples:
        new = []
        for s in sample.sections:
            if not s.has_counts:
                new.append(s)
                continue
            dropped = len(s.genes) - len(keep)
            if dropped:
                logger.info("section %s: dropped %d of %d genes not present in every section",
                            s.name, dropped, len(s.genes))
            new.append(s if dropped == 0 and np.array_equal(s.genes, keep)
                       else s.subset_genes(keep))
        out.append(dataclasses.replace(sample, sections=new))
    logger.info("gene intersection: %d genes shared by %d sections", len(keep), len(sections))
    return out


def section_from_spot_table(name, image, spots, cols, spots_path, count_ids, counts, genes,
                            counts_path) -> Section:
    """Joins a spot table (x, y, pixel_x, pixel_y[, selected]) with a count table on the id
    ``"{round(x)}x{round(y)}"`` and builds the checked `Section`.

    ``cols`` maps x, y, pixel_x, pixel_y to float arrays of the rows of ``spots``; rows with
    ``selected == 0`` (not under tissue) are left out and logged.
    """
    keep = np.ones(len(spots), dtype=bool)
    if "selected" in spots.columns:
        keep = numeric_column(spots, "selected", spots_path) != 0
        if not keep.all():
            logger.info("section %s: %d of %d spots in %s are not selected (not under tissue); "
                        "left out", name, int((~keep).sum()), len(keep), spots_path)
    x, y = (np.rint(cols[c][keep]).astype(np.int64) for c in ("x", "y"))
    spot_ids = np.array([f"{a}x{b}" for a, b in zip(x, y)], dtype=str)
    rows, srows = join_spots(count_ids, spot_ids, counts_path, spots_path, name)
    array_xy = np.stack([cols["x"][keep], cols["y"][keep]], axis=1)[srows]
    pixel_xy = np.stack([cols["pixel_x"][keep], cols["pixel_y"][keep]], axis=1)[srows]
    return make_section(name, image, count_ids[rows], array_xy, pixel_xy, counts[rows], genes,
                        source=counts_path)


# ---- inputs checked against each other (run-folder stages call these) ----------------------

def check_distinct_images(images, digests: Optional[dict] = None) -> None:
    """Raises DataError when two sections use the same image file, or two files with the same
    bytes. ``images``: (section name, image path or None) pairs; ``digests``: {resolved path:
    fingerprint} (``asign_jax.fingerprint``). One image listed twice would enter the stack as
    two layers."""
    seen: dict = {}
    for name, image in images:
        if image is None:
            continue
        path = str(Path(image).resolve())
        fp = (digests or {}).get(path)
        for key in (path, fp[2] if fp else None):
            if key is None:
                continue
            if key in seen:
                other, other_path = seen[key]
                how = (f"is also the image of section {other!r}" if key == path else
                       f"has the same bytes as the image of section {other!r} ({other_path})")
                raise DataError(f"{image}: the image of section {name!r} {how}; one image "
                                "listed twice would be two layers of the stack")
            seen[key] = (name, image)


PITCH_TOLERANCE = 0.2
"""A section whose spot pitch differs by more than this fraction from the others' (or from
``data.spot_pitch_px``) is a warning: its image is at another scale than the pixel sizes."""


def section_pitch(section: Section, kind: str = "") -> Optional[float]:
    """Centre-to-centre spot distance (px) of a section, from its array coordinates when
    ``kind`` (square / hex) is known, else from the pixel centres; None when undefined."""

    if section.n_spots < 3:
        return None
    try:
        lat = (fit_lattice(section.array_xy, section.pixel_xy, kind, where=section.name) if kind
               else infer_lattice(section.pixel_xy, where=section.name))
    except DataError:
        return None
    return float(lat.pitch)


def pitch_warnings(samples: Sequence[Sample], kind: str = "", expected: float = 0.0
                   ) -> list[str]:
    """Warnings for sections whose spot pitch (`section_pitch`) differs by more than
    ``PITCH_TOLERANCE`` from the median of the others, or from ``expected`` px (> 0): an
    image at another scale than its coordinates' neighbours, while ``data.spot_size``,
    ``data.region_size``, ``graph.spot_radius`` and ``graph.cross_radius`` are pixels of one
    scale."""
    pitches = {s.name: (section_pitch(s, kind), s) for sample in samples
               for s in sample.sections if s.has_counts}
    pitches = {n: v for n, v in pitches.items() if v[0]}
    sizes = ("data.spot_size, data.region_size, data.global_size, graph.spot_radius and "
             "graph.cross_radius are pixels of one scale")
    out = []
    if expected and expected > 0:
        for name, (p, s) in pitches.items():
            if abs(p / expected - 1) > PITCH_TOLERANCE:
                out.append(f"section {name}: spot pitch {p:.0f} px in {s.image_path}, but "
                           f"data.spot_pitch_px={expected:g} (the scale the pixel sizes "
                           f"assume; {p / expected:.2f}x): {sizes}; rescale the image and its "
                           "coordinates, or set the pixel sizes for this scale")
        return out
    if len(pitches) < 2:
        return out
    for name, (p, s) in pitches.items():
        others = float(np.median([q for n, (q, _) in pitches.items() if n != name]))
        if abs(p / others - 1) > PITCH_TOLERANCE:
            out.append(f"section {name}: spot pitch {p:.0f} px in {s.image_path}, "
                       f"{others:.0f} px (median) in the other sections ({p / others:.2f}x): "
                       f"its image is at another scale than theirs; {sizes}")
    return out
