"""The raw data model every reader returns: a `Section` and a `Sample`.

A `Section` is one tissue section with spatial transcriptomics, or an image-only section
(``counts is None``: spots placed on the image, no expression measured);
a `Sample` is the ordered stack of consecutive sections of one tissue block.
Coordinates follow one convention everywhere in asign_jax:

* ``pixel_xy[:, 0]`` is the image column (x), ``pixel_xy[:, 1]`` the image row (y),
  in pixels of the full-resolution image;
* ``array_xy`` is the spot's position on the array grid (x, y), as the ST spot id
  ``"{x}x{y}"`` names it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.data.slide import open_working
from asign_jax.errors import DataError


def is_sparse(counts) -> bool:
    """True for a scipy sparse count matrix (the 10x readers keep counts CSR)."""
    import scipy.sparse as sp
    return sp.issparse(counts)


def dense_counts(counts, dtype=np.float32) -> np.ndarray:
    """(N, G) dense array of dense or CSR counts (call after the gene panel is chosen)."""
    return np.asarray(counts.toarray() if is_sparse(counts) else counts, dtype=dtype)


def row_totals(counts) -> np.ndarray:
    """(N,) float64 per-spot sums of dense or CSR counts."""
    if is_sparse(counts):
        return np.asarray(counts.sum(axis=1, dtype=np.float64)).reshape(-1)
    return np.asarray(counts).sum(axis=1, dtype=np.float64)


def column_means(counts, cols: np.ndarray) -> np.ndarray:
    """(len(cols),) float64 mean over spots of the columns ``cols`` (dense or CSR)."""
    if is_sparse(counts):
        sub = counts[:, cols]
        return np.asarray(sub.sum(axis=0, dtype=np.float64)).reshape(-1) / sub.shape[0]
    return np.asarray(counts[:, cols], dtype=np.float64).mean(axis=0)


@dataclasses.dataclass
class Section:
    """One tissue section.

    Attributes:
      name: section id, e.g. ``"C2"``.
      image_path: full-resolution H&E image, or None when the section has none.
      spot_ids: (N,) str, unique.
      array_xy: (N, 2) float64, array-grid coordinates (x, y).
      pixel_xy: (N, 2) float64, spot centres in full-resolution image pixels (x=col, y=row).
      counts: (N, G) float32 raw counts, non-negative and finite, dense or scipy CSR (the 10x
        readers keep them sparse until the gene panel is chosen; `dense_counts` densifies only
        the selected genes); None for an image-only section (its spots carry no measurement
        and never get a label).
      genes: (G,) str, unique gene names (column order of ``counts``; empty when no counts).
      total_counts: (N,) float64 per-spot total over ALL genes the section's file had, recorded
        the first time genes are subset (ST-Net normalisation needs it); None = sum of counts.
      n_all_genes: number of genes the section's file had (None = len(genes)).
      um_per_px: level-0 pixel size of the image given by the dataset's metadata (e.g. HEST
        json), None = from the slide file or the config (`data.pixel_size.resolve_um_per_px`).
      image_scale: level-0 image px per working px (``data.um_per_px``); ``pixel_xy`` is in
        working px once `loaders.to_working` has run (1.0 = the image's own pixels).
      pitch_um: centre-to-centre spot distance in µm of the section's lattice when the reader
        knows it (HEST metadata, Visium HD bin size), for the pixel-size check; None = from the
        format's lattice kind.
    """

    name: str
    image_path: Optional[Path]
    spot_ids: np.ndarray
    array_xy: np.ndarray
    pixel_xy: np.ndarray
    counts: Optional[np.ndarray]
    genes: np.ndarray
    total_counts: Optional[np.ndarray] = None
    n_all_genes: Optional[int] = None
    um_per_px: Optional[float] = None
    image_scale: float = 1.0
    pitch_um: Optional[float] = None

    def __post_init__(self):
        n = len(self.spot_ids)
        where = f"section {self.name!r}"
        if self.array_xy.shape != (n, 2) or self.pixel_xy.shape != (n, 2):
            raise DataError(f"{where}: coordinates must be ({n}, 2), got "
                            f"{self.array_xy.shape} and {self.pixel_xy.shape}")
        if self.counts is not None and self.counts.shape != (n, len(self.genes)):
            raise DataError(f"{where}: counts shape {self.counts.shape} != "
                            f"({n} spots, {len(self.genes)} genes)")

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    @property
    def has_counts(self) -> bool:
        """False for an image-only section (no ST measurement)."""
        return self.counts is not None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None

    def read_image(self):
        """The image at working resolution: (H, W, 3) uint8 for a JPEG / PNG at scale 1 (as
        before), else a lazily read `asign_jax.data.slide.WorkingImage` of the same shape."""
        if self.image_path is None:
            raise DataError(f"section {self.name!r} has no image")
        return open_working(self.image_path, self.image_scale)

    def subset_genes(self, genes: np.ndarray) -> "Section":
        """Returns a copy restricted to ``genes`` (all must be present), in that order.

        An image-only section has no counts to restrict: it is returned unchanged."""
        if self.counts is None:
            return self
        index = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in index]
        if missing:
            raise DataError(f"section {self.name!r}: genes not present: {missing[:5]}")
        cols = np.array([index[g] for g in genes], dtype=np.int64)
        totals = (self.total_counts if self.total_counts is not None
                  else row_totals(self.counts))
        n_all = self.n_all_genes if self.n_all_genes is not None else len(self.genes)
        return dataclasses.replace(self, counts=self.counts[:, cols], genes=np.asarray(genes),
                                   total_counts=totals, n_all_genes=n_all)


@dataclasses.dataclass
class Sample:
    """Ordered consecutive sections of one tissue block (index 0 = first section).

    ``left_out``: {section name: why} of the block's sections the reader left out (e.g. no
    image), so that a later "sample has 1 layer" error can say why.
    """

    sample_id: str
    sections: list[Section]
    left_out: dict = dataclasses.field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.sections)

    def require_3d(self) -> None:
        """Raises a clear error when the sample cannot be used as a 3D stack."""
        if self.n_layers < 2:
            raise DataError(
                f"sample {self.sample_id!r} has a single section "
                f"({[s.name for s in self.sections]}); 3D use (registration, cross-layer "
                "graph, held-out evaluation) needs at least two consecutive sections. "
                "It can still be used as a 2D training sample.")
