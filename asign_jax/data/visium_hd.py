"""Reader for 10x Visium HD Space Ranger output (``data.format = "visium_hd"``).

One folder per section (the Space Ranger ``outs/`` folder, or directly its binned folder)::

    <section>/binned_outputs/square_008um/          the bin size chosen by data.bin_um (2, 8, 16)
        filtered_feature_bc_matrix.h5               10x HDF5 (as Visium), bins x genes, CSC
        spatial/tissue_positions.parquet            barcode, in_tissue, array_row, array_col,
                                                    pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json              microns_per_pixel, bin_size_um,
                                                    tissue_hires_scalef, ...
    <section>/<full-resolution image>               found by data.image_glob (as Visium), else
                                                    the bin folder's spatial/tissue_hires_image.png

Bins are the spots: ``array_xy = (array_col, array_row)`` on a square lattice of pitch
``bin_um`` µm, ``pixel_xy`` their centres in full-resolution px; only ``in_tissue == 1`` bins
are kept. Counts stay sparse (CSR float32) until prepare has chosen the gene panel. The pixel
size is ``microns_per_pixel`` (divided by ``tissue_hires_scalef`` for the hires fallback), so
``data.working`` brings the bins to the working resolution and checks the lattice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax.data import validate, visium
from asign_jax.data.section import Sample, Section
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

BIN_SIZES = (2, 8, 16)
POSITIONS = "tissue_positions.parquet"


def bin_folder(section_dir: Path, bin_um: int) -> Path:
    """``<section>/binned_outputs/square_0XXum`` (or ``<section>`` itself when it is one)."""
    if int(bin_um) not in BIN_SIZES:
        raise ConfigError(f"data.bin_um={bin_um}: Visium HD bins are {BIN_SIZES} µm")
    section_dir = Path(section_dir)
    name = f"square_{int(bin_um):03d}um"
    for cand in (section_dir / "binned_outputs" / name, section_dir / name, section_dir):
        if (cand / visium.MATRIX).is_file():
            return cand
    raise DataError(f"{section_dir / 'binned_outputs' / name / visium.MATRIX}: Visium HD "
                    f"matrix of the {int(bin_um)} µm bins does not exist")


def read_bin_positions(spatial: Path):
    """(barcodes, array_xy (N, 2), pixel_xy (N, 2)) of the in-tissue bins."""
    import pandas as pd
    path = validate.require_file(spatial / POSITIONS, "Visium HD bin position file")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{path}: unreadable parquet ({e})") from e
    cols = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
            "pxl_col_in_fullres")
    validate.require_columns(df, cols, path, "Visium HD bin position file")
    keep = validate.numeric_column(df, "in_tissue", path) == 1
    bc = df["barcode"].astype(str).to_numpy()[keep]
    num = {c: validate.numeric_column(df, c, path)[keep] for c in cols[2:]}
    array = np.stack([num["array_col"], num["array_row"]], 1)
    pixel = np.stack([num["pxl_col_in_fullres"], num["pxl_row_in_fullres"]], 1)
    validate.check_coordinates(pixel, path, "pixel")
    return path, bc, array, pixel


def read_section(section_dir, bin_um: int = 8, *, name: Optional[str] = None,
                 image_globs: Sequence[str] = visium.DEFAULT_IMAGE_GLOBS,
                 image: Optional[Path] = None) -> Section:
    """One Visium HD section at ``bin_um`` µm bins (see the module docstring)."""
    section_dir = Path(section_dir)
    name = name or section_dir.name
    folder = bin_folder(section_dir, bin_um)
    matrix = folder / visium.MATRIX
    barcodes, genes, mat = visium.read_10x_h5(matrix)
    pos_path, pos_bc, array_xy, pixel_xy = read_bin_positions(folder / "spatial")
    rows, prow = validate.join_spots(barcodes, pos_bc, matrix, pos_path, name)
    sf_path = folder / "spatial" / "scalefactors_json.json"
    try:
        sf = json.loads(validate.require_file(sf_path, "scale factor file").read_text())
        mpp = float(sf["microns_per_pixel"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{sf_path}: cannot read microns_per_pixel ({e})") from e
    if not mpp > 0:
        raise DataError(f"{sf_path}: microns_per_pixel must be > 0, got {mpp}")
    hires = False
    if image is None:
        image, hires = visium.find_image(section_dir, image_globs)
        if image is None:
            image, hires = visium.find_image(folder, image_globs)
    pixel_xy = pixel_xy[prow]
    if hires:
        scale = float(sf.get("tissue_hires_scalef", 0) or 0)
        if not scale > 0:
            raise DataError(f"{sf_path}: tissue_hires_scalef must be positive, got {scale}")
        logger.warning("section %s: no full-resolution image; using %s (hires, scale %g)",
                       name, image, scale)
        pixel_xy, mpp = pixel_xy * scale, mpp / scale
    section = validate.make_section(name, image, barcodes[rows], array_xy[prow], pixel_xy,
                                    mat[rows], genes, source=matrix)
    section.um_per_px = mpp
    section.pitch_um = float(sf.get("bin_size_um", bin_um) or bin_um)
    logger.info("section %s: %d bins of %g µm x %d genes (%d non-zeros, sparse), %.4g µm/px",
                name, section.n_spots, section.pitch_um, len(genes), section.counts.nnz, mpp)
    return section


def read_visium_hd(root, samples: Optional[dict[str, list[str]]] = None, bin_um: int = 8, *,
                   image_globs: Sequence[str] = visium.DEFAULT_IMAGE_GLOBS) -> list[Sample]:
    """Samples of Visium HD sections under ``root`` (``samples``: {sample: [folders]} in order;
    None = every sub-folder holding binned outputs, one sample each)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Visium HD folder does not exist (is data.root right?)")
    if samples is None:
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir()
                      and ((p / "binned_outputs").is_dir() or (p / visium.MATRIX).is_file()))
        if not dirs:
            raise DataError(f"{root}: no Visium HD section folder (with binned_outputs/)")
        samples = {d: [d] for d in dirs}
    return [Sample(sid, [read_section(root / d, bin_um, name=d, image_globs=image_globs)
                         for d in dirs]) for sid, dirs in samples.items()]
