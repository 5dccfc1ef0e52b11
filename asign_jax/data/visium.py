"""Reader for 10x Visium Space Ranger output (e.g. the DLPFC sections of Maynard et al. 2021).

One folder per section::

    <section>/filtered_feature_bc_matrix.h5        10x HDF5, matrix/{data,indices,indptr,shape,
                                                   barcodes,features/{name,id,feature_type}}:
                                                   CSC, shape (features, barcodes)
    <section>/spatial/tissue_positions.csv         barcode,in_tissue,array_row,array_col,
      or .../tissue_positions_list.csv             pxl_row_in_fullres,pxl_col_in_fullres
                                                   (the _list variant has no header)
    <section>/spatial/scalefactors_json.json       tissue_hires_scalef, ...
    <section>/<full-resolution image>              found by glob, see `DEFAULT_IMAGE_GLOBS`

Only ``in_tissue == 1`` spots are kept and joined with the matrix barcodes (unmatched spots
are dropped, counted and logged). Spot ids are the barcodes, ``array_xy = (array_col,
array_row)``, ``pixel_xy = (pxl_col, pxl_row)``. Only "Gene Expression" features are kept;
gene symbols that occur twice are made unique the scanpy way (``NAME``, ``NAME-1``, ...).

The image is searched in the section folder, then in ``spatial/``, with each glob in turn;
the first glob with a match wins and must match exactly one file. When none matches but
``spatial/tissue_hires_image.png`` exists, that image is used instead and ``pixel_xy`` is
multiplied by ``tissue_hires_scalef`` so that it addresses the hires image (logged as a
warning: the hires image is ~2000 px wide, so patches cover far more tissue than at full
resolution). With neither, the section has ``image_path=None``.

Counts are returned sparse (CSR float32, `data.section.dense_counts` densifies the selected
genes in prepare), so a section's ~33k genes cost only its non-zeros.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp

from asign_jax.data import validate
from asign_jax.data.section import Sample, Section
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_GLOBS = ("*full*.tif*", "*.tif")
MATRIX = "filtered_feature_bc_matrix.h5"
HIRES = "tissue_hires_image.png"


def _decode(a) -> np.ndarray:
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype=str)


def make_unique(names: np.ndarray) -> np.ndarray:
    """Appends ``-1``, ``-2``, ... to repeated names (first occurrence unchanged)."""
    seen: dict[str, int] = {}
    taken = set(names.tolist())
    out = []
    for n in names.tolist():
        if n in seen:
            k = seen[n]
            while f"{n}-{k + 1}" in taken:
                k += 1
            seen[n] = k + 1
            new = f"{n}-{k + 1}"
            taken.add(new)
            out.append(new)
        else:
            seen[n] = 0
            out.append(n)
    return np.array(out, dtype=str)


def read_10x_h5(path) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """Reads a 10x HDF5 feature-barcode matrix with h5py.

    Returns:
      barcodes (B,) str, genes (G,) str (unique symbols of the Gene Expression features),
      counts (B, G) sparse CSR of the raw UMI counts.
    """
    import h5py

    path = validate.require_file(path, "10x HDF5 matrix")
    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise DataError(f"{path}: no 'matrix' group (not a Space Ranger >= 1.0 / "
                                f"Cell Ranger >= 3 feature-barcode matrix); top level: {list(f)}")
            m = f["matrix"]
            need = ("data", "indices", "indptr", "shape", "barcodes", "features/name")
            missing = [k for k in need if k not in m]
            if missing:
                raise DataError(f"{path}: matrix lacks {missing}")
            data, indices, indptr = m["data"][:], m["indices"][:], m["indptr"][:]
            shape = tuple(int(s) for s in m["shape"][:])
            barcodes = _decode(m["barcodes"][:])
            names = _decode(m["features/name"][:])
            ftype = (_decode(m["features/feature_type"][:]) if "features/feature_type" in m
                     else np.full(len(names), "Gene Expression"))
    except (OSError, KeyError) as e:
        raise DataError(f"{path}: cannot read 10x HDF5 matrix: {type(e).__name__}: {e}") from e
    if len(shape) != 2 or shape != (len(names), len(barcodes)) or len(indptr) != shape[1] + 1:
        raise DataError(f"{path}: inconsistent matrix: shape {shape}, {len(names)} features, "
                        f"{len(barcodes)} barcodes, {len(indptr)} indptr entries")
    try:
        mat = sp.csc_matrix((data.astype(np.float32), indices, indptr), shape=shape)
    except ValueError as e:
        raise DataError(f"{path}: corrupt sparse matrix: {e}") from e
    gex = ftype == "Gene Expression"
    if not gex.any():
        raise DataError(f"{path}: no 'Gene Expression' feature (types: {sorted(set(ftype))})")
    genes = names[gex]
    n_dup = len(genes) - len(set(genes.tolist()))
    if n_dup:
        logger.info("%s: %d repeated gene symbols made unique (NAME-1, ...)", path, n_dup)
        genes = make_unique(genes)
    return barcodes, genes, mat[gex].T.tocsr()


def read_positions(spatial: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the in-tissue spots of ``tissue_positions.csv`` (or ``tissue_positions_list.csv``).

    Returns:
      (path, barcodes (N,), array_xy (N, 2) = (col, row), pixel_xy (N, 2) = (pxl_col, pxl_row)).
    """
    path = spatial / "tissue_positions.csv"
    if not path.is_file():
        path = spatial / "tissue_positions_list.csv"
    df = validate.read_table(path, "tissue positions file", header=None, dtype=str)
    if df.shape[1] != 6:
        raise DataError(f"{path}: expected 6 columns (barcode,in_tissue,array_row,array_col,"
                        f"pxl_row_in_fullres,pxl_col_in_fullres), found {df.shape[1]}")
    df.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"]
    if str(df.iloc[0, 0]).strip() == "barcode":  # header line of tissue_positions.csv
        df = df.iloc[1:].reset_index(drop=True)
    cols = {c: validate.numeric_column(df, c, path)
            for c in ("in_tissue", "array_row", "array_col", "pxl_row", "pxl_col")}
    if not np.isin(cols["in_tissue"], (0, 1)).all():
        raise DataError(f"{path}: in_tissue must be 0 or 1")
    keep = cols["in_tissue"] == 1
    barcodes = df["barcode"].to_numpy(dtype=str)
    validate.check_unique(barcodes, path, "barcode")
    return (path, barcodes[keep], np.stack([cols["array_col"], cols["array_row"]], 1)[keep],
            np.stack([cols["pxl_col"], cols["pxl_row"]], 1)[keep])


def find_image(section_dir: Path, image_globs: Sequence[str]) -> tuple[Optional[Path], bool]:
    """Returns (image path or None, whether it is the hires fallback)."""
    for pattern in image_globs:
        hits = sorted({p for d in (section_dir, section_dir / "spatial") if d.is_dir()
                       for p in d.glob(pattern) if p.is_file()})
        if len(hits) > 1:
            raise DataError(f"{section_dir}: image glob {pattern!r} matches {len(hits)} files "
                            f"({[p.name for p in hits]}); make the glob specific")
        if hits:
            return hits[0], False
    hires = section_dir / "spatial" / HIRES
    return (hires, True) if hires.is_file() else (None, False)


def read_section(section_dir, *, name: Optional[str] = None,
                 image_globs: Sequence[str] = DEFAULT_IMAGE_GLOBS,
                 image: Optional[Path] = None) -> Section:
    """Reads one Space Ranger section folder (in-tissue spots only).

    ``image``: the full-resolution image (skips the search; pixel coordinates stay full-res).
    """
    section_dir = Path(section_dir)
    name = name or section_dir.name
    if not section_dir.is_dir():
        raise DataError(f"{section_dir}: Visium section folder does not exist")
    matrix_path = section_dir / MATRIX
    barcodes, genes, mat = read_10x_h5(matrix_path)
    pos_path, pos_barcodes, array_xy, pixel_xy = read_positions(section_dir / "spatial")
    rows, prow = validate.join_spots(barcodes, pos_barcodes, matrix_path, pos_path, name)

    image, hires = (Path(image), False) if image is not None else find_image(section_dir,
                                                                               image_globs)
    pixel_xy = pixel_xy[prow]
    if hires:
        sf_path = section_dir / "spatial" / "scalefactors_json.json"
        try:
            scale = float(json.loads(validate.require_file(sf_path, "scale factor file")
                                     .read_text())["tissue_hires_scalef"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{sf_path}: cannot read tissue_hires_scalef: {e}") from e
        if not np.isfinite(scale) or scale <= 0:
            raise DataError(f"{sf_path}: tissue_hires_scalef must be positive, got {scale}")
        logger.warning("section %s: no full-resolution image matches %s; using %s with pixel "
                       "coordinates scaled by tissue_hires_scalef=%g", name, list(image_globs),
                       image, scale)
        pixel_xy = pixel_xy * scale
    elif image is None:
        logger.warning("section %s: no image in %s (globs %s, no spatial/%s)", name,
                       section_dir, list(image_globs), HIRES)
    return validate.make_section(name, image, barcodes[rows], array_xy[prow], pixel_xy,
                                 mat[rows], genes, source=matrix_path)


def read_visium(root, samples: Optional[dict[str, list[str]]] = None, *,
                image_globs: Sequence[str] = DEFAULT_IMAGE_GLOBS,
                images_only: bool = False, dropped: Optional[dict] = None) -> list[Sample]:
    """Reads Visium sections grouped into samples.

    Args:
      root: folder holding the section folders (a section path may also be absolute).
      samples: sample id -> ordered section folders (first = first layer). None = every
        sub-folder of ``root`` holding a matrix, each as its own single-section sample.
      image_globs: globs for the full-resolution image, tried in order.
      images_only: leave out (and log) sections without any image.
    """
    root = Path(root)
    if samples is None:
        if not root.is_dir():
            raise DataError(f"{root}: Visium data folder does not exist (is data.root right?)")
        dirs = sorted(p.name for p in root.iterdir() if (p / MATRIX).is_file())
        if not dirs:
            raise DataError(f"{root}: no section folder with {MATRIX}")
        logger.info("Visium %s: no grouping given; %d sections, each its own sample", root,
                    len(dirs))
        samples = {d: [d] for d in dirs}
    out = []
    for sample_id, dirs in samples.items():
        sections, left_out = [], {}
        for d in dirs:
            section_dir = root / d
            if not section_dir.is_dir():
                raise DataError(f"{section_dir}: Visium section folder of sample "
                                f"{sample_id!r} does not exist")
            if images_only and find_image(section_dir, image_globs)[0] is None:
                logger.warning("Visium section %s has no image; left out", section_dir)
                left_out[section_dir.name] = (f"no image in {section_dir} (globs "
                                              f"{list(image_globs)}, no spatial/{HIRES})")
                continue
            sections.append(read_section(section_dir, image_globs=image_globs))
        if sections:
            out.append(Sample(sample_id=sample_id, sections=sections, left_out=left_out))
        elif dropped is not None:     # {sample: {section: why}} of samples with no section left
            dropped[sample_id] = left_out
    return out
