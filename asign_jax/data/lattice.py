"""Spot-array lattices in full-resolution pixels: square (ST arrays) and hexagonal (Visium).

A lattice is the point set ``origin + basis @ k`` for integer k (2,); the columns of
``basis`` (2, 2) are its two primitive vectors in pixels (x = column, y = row).

* `fit_lattice` recovers a measured section's lattice from its array coordinates (least
  squares, array -> pixel affine), which keeps the imaging's anisotropy and shear;
* `infer_lattice` finds it from the pixel centres alone (data without array coordinates);
* `Lattice.transformed` carries a lattice through an affine (e.g. into another section's
  pixels after registration) and `Lattice.points_in` lists its points in a box.

Physical sizes: ST arrays have 100 um spots on a 200 um square grid; Visium 55 um spots on
a 100 um hexagonal grid. The pitch in pixels therefore gives the spot diameter and the
micrometres per pixel of a section.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

KINDS = ("square", "hex")
PITCH_UM = {"square": 200.0, "hex": 100.0}      # centre-to-centre distance
DIAMETER_UM = {"square": 100.0, "hex": 55.0}    # spot diameter
FORMAT_KIND = {"her2st": "square", "stnet": "square", "synthetic": "square", "visium": "hex"}
_HEX_FROM_ARRAY = np.array([[2.0, 1.0], [0.0, 1.0]])   # Visium (col, row) = this @ k


@dataclasses.dataclass(frozen=True)
class Lattice:
    """``origin + basis @ k`` (k integer). kind: "square" | "hex"; origin (2,); basis (2, 2)."""

    kind: str
    origin: np.ndarray
    basis: np.ndarray

    @property
    def pitch(self) -> float:
        """Mean length (px) of the two primitive vectors = centre-to-centre distance."""
        return float(np.linalg.norm(self.basis, axis=0).mean())

    @property
    def spot_diameter(self) -> float:
        """Spot diameter in px (100 um of 200 um for ST, 55 um of 100 um for Visium)."""
        return self.pitch * DIAMETER_UM[self.kind] / PITCH_UM[self.kind]

    @property
    def um_per_px(self) -> float:
        return PITCH_UM[self.kind] / self.pitch

    def points(self, k: np.ndarray) -> np.ndarray:
        """(n, 2) integer lattice indices -> (n, 2) float pixels."""
        return np.asarray(k, np.float64).reshape(-1, 2) @ self.basis.T + self.origin

    def index(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) pixels -> (n, 2) fractional lattice indices."""
        return np.linalg.solve(self.basis, (np.asarray(xy, np.float64).reshape(-1, 2)
                                            - self.origin).T).T

    def transformed(self, affine: np.ndarray) -> "Lattice":
        """The lattice carried through a (3, 3) affine (x, y, 1) -> (x', y', 1)."""
        a = np.asarray(affine, np.float64)
        return Lattice(self.kind, a[:2, :2] @ self.origin + a[:2, 2], a[:2, :2] @ self.basis)

    def points_in(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice points inside the box lo <= (x, y) < hi: (indices (n, 2) int64, xy (n, 2))."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
        kc = self.index(corners)
        k0 = np.arange(np.floor(kc[:, 0].min()) - 1, np.ceil(kc[:, 0].max()) + 2)
        k1 = np.arange(np.floor(kc[:, 1].min()) - 1, np.ceil(kc[:, 1].max()) + 2)
        k = np.stack(np.meshgrid(k0, k1, indexing="ij"), -1).reshape(-1, 2).astype(np.int64)
        xy = self.points(k)
        inside = np.all((xy >= lo) & (xy < hi), axis=1)
        return k[inside], xy[inside]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f"lattice kind {kind!r}: expected one of {KINDS}")


def fit_lattice(array_xy: np.ndarray, pixel_xy: np.ndarray, kind: str, *,
                where: str = "section") -> Lattice:
    """The lattice of a measured section from its array coordinates (least squares).

    Args:
      array_xy: (N, 2) array coordinates: ST (x, y) on a unit square grid, or Visium
        (array_col, array_row) with col + row even.
      pixel_xy: (N, 2) spot centres, full-resolution px.
      kind: "square" or "hex".
      where: names the section in errors.

    Falls back to `infer_lattice` (logged) when the array -> pixel map is not affine to within
    a quarter pitch (array coordinates that are ids rather than positions).
    """
    _check_kind(kind)
    a = np.asarray(array_xy, np.float64).reshape(-1, 2)
    p = np.asarray(pixel_xy, np.float64).reshape(-1, 2)
    if len(a) < 3:
        raise DataError(f"{where}: {len(a)} spots; a spot lattice needs at least 3")
    design = np.concatenate([a, np.ones((len(a), 1))], 1)
    m, *_ = np.linalg.lstsq(design, p, rcond=None)             # (3, 2)
    lin, origin = m[:2].T, m[2]
    basis = lin if kind == "square" else lin @ _HEX_FROM_ARRAY
    lat = Lattice(kind, origin, basis)
    resid = np.linalg.norm(design @ m - p, axis=1)
    if abs(np.linalg.det(basis)) < 1e-9 or np.median(resid) > 0.25 * lat.pitch:
        logger.warning("%s: array coordinates do not map affinely onto the pixel centres "
                       "(median residual %.1f px); inferring the lattice from the pixels",
                       where, float(np.median(resid)))
        return infer_lattice(p, kind, where=where)
    return lat


def infer_lattice(pixel_xy: np.ndarray, kind: Optional[str] = None, *,
                  where: str = "section") -> Lattice:
    """The lattice of spots from their pixel centres alone.

    Pitch = median nearest-neighbour distance; kind (when None) = "hex" when interior spots
    have ~6 neighbours within 1.3 pitch, else "square"; orientation = circular mean of the
    neighbour directions modulo 90 (square) or 60 degrees (hex); then the integer indices of
    every spot are rounded and basis + origin refit by least squares.
    """
    p = np.asarray(pixel_xy, np.float64).reshape(-1, 2)
    if len(p) < 3:
        raise DataError(f"{where}: {len(p)} spots; a spot lattice needs at least 3")
    tree = cKDTree(p)
    d, idx = tree.query(p, k=min(7, len(p)))
    pitch = float(np.median(d[:, 1]))
    if not pitch > 0:
        raise DataError(f"{where}: spot centres coincide; cannot infer the spot lattice")
    near = (d[:, 1:] < 1.3 * pitch)
    if kind is None:
        kind = "hex" if np.median(near.sum(1)) >= 5 else "square"
    _check_kind(kind)
    fold = 4 if kind == "square" else 6
    vec = p[idx[:, 1:]] - p[:, None, :]
    ang = np.arctan2(vec[..., 1], vec[..., 0])[near]
    theta = np.arctan2(np.sin(fold * ang).mean(), np.cos(fold * ang).mean()) / fold
    second = np.pi / 2 if kind == "square" else np.pi / 3
    basis = pitch * np.array([[np.cos(theta), np.cos(theta + second)],
                              [np.sin(theta), np.sin(theta + second)]])
    lat = Lattice(kind, p[np.argmin(np.linalg.norm(p - np.median(p, 0), axis=1))], basis)
    k = np.round(lat.index(p))
    design = np.concatenate([k, np.ones((len(k), 1))], 1)
    m, *_ = np.linalg.lstsq(design, p, rcond=None)
    return Lattice(kind, m[2], m[:2].T)
