"""Reader for the generic pair ``counts.tsv`` + ``spots.csv`` (any platform).

* counts: tab-separated (optionally ``.gz``), spots x genes, first column the spot id,
  header the gene names (`validate.read_count_table`);
* spots: comma-separated with a header holding ``id, x, y`` (the spot centre in
  full-resolution pixels of the section image, x = column, y = row) and optionally
  ``array_x, array_y`` (grid position; absent = the pixel centres, so the spot lattice is
  inferred from the pixels) and ``in_tissue`` / ``selected`` (rows with 0 are left out).

Spots are joined on the id (`validate.join_spots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.data import validate
from asign_jax.data.section import Section


def read_spots(path: Path, what: str = "spot file") -> tuple[np.ndarray, np.ndarray,
                                                            Optional[np.ndarray]]:
    """Reads ``id, x, y[, array_x, array_y][, in_tissue|selected]`` (comma-separated).

    Returns (ids (N,) str, pixel_xy (N, 2), array_xy (N, 2) or None), selected rows only.
    A file without an ``id`` column gets ids ``spot_<row>``.
    """
    df = validate.read_table(path, what, dtype={"id": str})
    df.columns = [str(c).strip() for c in df.columns]
    validate.require_columns(df, ("x", "y"), path, what)
    keep = np.ones(len(df), bool)
    for flag in ("in_tissue", "selected"):
        if flag in df.columns:
            keep &= validate.numeric_column(df, flag, path) != 0
    ids = (df["id"].astype(str).to_numpy() if "id" in df.columns
           else np.array([f"spot_{i}" for i in range(len(df))]))
    pixel = np.stack([validate.numeric_column(df, c, path) for c in ("x", "y")], 1)
    array = None
    if "array_x" in df.columns or "array_y" in df.columns:
        validate.require_columns(df, ("array_x", "array_y"), path, what)
        array = np.stack([validate.numeric_column(df, c, path)
                          for c in ("array_x", "array_y")], 1)[keep]
    ids = ids[keep]
    validate.check_unique(ids, path, "spot id")
    return ids, pixel[keep], array


def read_section(name: str, counts_path: Path, spots_path: Path,
                 image: Optional[Path]) -> tuple[Section, bool]:
    """One section from a count table and a spot file (see the module docstring).

    Returns the section and whether the spot file had array coordinates (without them
    ``array_xy`` holds the pixel centres).
    """
    count_ids, genes, counts = validate.read_count_table(counts_path)
    ids, pixel, array = read_spots(spots_path)
    rows, srows = validate.join_spots(count_ids, ids, counts_path, spots_path, name)
    array_xy = pixel[srows] if array is None else array[srows]
    return validate.make_section(name, image, count_ids[rows], array_xy, pixel[srows],
                                 counts[rows], genes, source=counts_path), array is not None
