"""Patch features written by TRIDENT or HEST (``features.encoder = "patch_features"``).

``features.patch_features`` names a folder (or comma-separated folders) holding one HDF5 file
per section, ``<section>.h5`` (matched by the section name, case-insensitively if no exact
match). Two layouts are read::

    TRIDENT  features (N, D), coords (N, 2) int: level-0 top-left (x, y) px of each patch,
             with attribute patch_size_level0 on coords (and patch_size, overlap, ...)
    HEST     embeddings (N, D), coords (N, 2) top-left (x, y) px, barcodes (N,)

The patch side in level-0 px is ``coords.attrs["patch_size_level0"]`` (or the file's root
attribute); a file without it (HEST) needs ``features.patch_size_level0``.

Rule (the same for measured and virtual spots, region and global tiles): a window (a spot's
``data.spot_size`` patch centred on the spot, or a tile from its origin) gets

* the feature of a patch whose box equals the window exactly, if there is one; otherwise
* the area-weighted mean of the patches overlapping the window (weight = overlap area
  inside the image), and
* as tokens, the window cut into ``token_grid x token_grid`` cells (row-major), each cell the
  area-weighted mean of the patches overlapping it (a cell no patch reaches gets the
  window's feature; with an exact-match patch, every token is that patch's feature).

With several folders, each level reads the folder whose patch side is closest (in ratio) to
the level's window side, e.g. a 224 px TRIDENT run for the spots and a 1024 px one for the
tiles. Bad input (one line each): a missing section file, a patch lying outside the image,
a spot less than half covered by the union of the patches, a tile no patch overlaps, a
feature dimension differing between files or sections.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_SUFFIXES = (".h5", ".hdf5")
MIN_SPOT_COVERAGE = 0.5


@dataclass
class PatchSet:
    """The patches of one section file: top-left (N, 2) float64, side (px), feats (N, D)."""

    path: Path
    layout: str
    coords: np.ndarray
    size: float
    feats: np.ndarray

    def __post_init__(self):
        self._order = np.argsort(self.coords[:, 0], kind="stable")
        self._xs = self.coords[self._order, 0]

    def candidates(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        """Indices of the patches whose box meets [x0, x1) x [y0, y1)."""
        lo = np.searchsorted(self._xs, x0 - self.size, side="right")
        hi = np.searchsorted(self._xs, x1, side="left")
        idx = self._order[lo:hi]
        y = self.coords[idx, 1]
        return idx[(y < y1) & (y + self.size > y0)]


def find_section_file(folder: Path, section: str) -> Path:
    """``<folder>/<section>.h5`` (or .hdf5; case-insensitive if no exact match)."""
    for suf in _SUFFIXES:
        p = folder / f"{section}{suf}"
        if p.exists():
            return p
    files = sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES) \
        if folder.is_dir() else []
    hits = [p for p in files if p.stem.lower() == section.lower()]
    if len(hits) == 1:
        return hits[0]
    raise DataError(f"{folder}: no patch-feature file for section {section!r} (expected "
                    f"{section}.h5; the folder has {len(files)} .h5 files, e.g. "
                    f"{[p.name for p in files[:5]]})")


def read_patch_file(path: Path, image_hw, default_size: int = 0) -> PatchSet:
    """Reads a TRIDENT / HEST file and checks its patches against the (H, W) image."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "features" in f:
                layout, name = "trident", "features"
            elif "embeddings" in f:
                layout, name = "hest", "embeddings"
            else:
                raise DataError(f"{path}: neither 'features' (TRIDENT) nor 'embeddings' "
                                f"(HEST) in the file (it has {sorted(f.keys())[:8]})")
            if "coords" not in f:
                raise DataError(f"{path}: no 'coords' dataset (level-0 top-left x, y px)")
            feats = np.asarray(f[name][()])
            coords = np.asarray(f["coords"][()])
            size = f["coords"].attrs.get("patch_size_level0", f.attrs.get("patch_size_level0"))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read patch-feature file ({e})") from e
    if feats.ndim == 3 and feats.shape[1] == 1:
        feats = feats[:, 0]
    if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] < 2 or \
            len(coords) != len(feats):
        raise DataError(f"{path}: '{name}' must be (N, D) and 'coords' (N, 2), got "
                        f"{feats.shape} and {coords.shape}")
    if len(feats) == 0:
        raise DataError(f"{path}: the file holds no patches")
    if size is None:
        if not default_size:
            raise DataError(f"{path}: no patch_size_level0 attribute on 'coords'; set "
                            "features.patch_size_level0 to the patch side in full-resolution "
                            "px")
        size = default_size
    size = float(np.asarray(size).reshape(-1)[0])
    if not size > 0:
        raise DataError(f"{path}: patch_size_level0={size} must be > 0")
    coords = coords[:, :2].astype(np.float64)
    feats = feats.astype(np.float32)
    if not np.isfinite(feats).all() or not np.isfinite(coords).all():
        raise DataError(f"{path}: non-finite values in '{name}' or 'coords'")
    h, w = int(image_hw[0]), int(image_hw[1])
    out = ((coords[:, 0] + size <= 0) | (coords[:, 1] + size <= 0) | (coords[:, 0] >= w) |
           (coords[:, 1] >= h))
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(f"{path}: {int(out.sum())} of {len(coords)} patches lie outside the "
                        f"{w}x{h} (W x H) image, e.g. #{i} at top-left "
                        f"{coords[i].round(1).tolist()} (coords must be level-0 px of this "
                        "image)")
    return PatchSet(path, layout, coords, size, feats)


def _overlap(px, py, size, x0, x1, y0, y1) -> np.ndarray:
    return (np.clip(np.minimum(px + size, x1) - np.maximum(px, x0), 0, None) *
            np.clip(np.minimum(py + size, y1) - np.maximum(py, y0), 0, None))


def _union_area(px, py, size, x0, x1, y0, y1) -> float:
    """Area of the union of the squares (px, py, size) inside [x0, x1) x [y0, y1)."""
    xs = np.unique(np.clip(np.concatenate([px, px + size, [x0, x1]]), x0, x1))
    ys = np.unique(np.clip(np.concatenate([py, py + size, [y0, y1]]), y0, y1))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = ((cx[None, :, None] >= px[None, None]) & (cx[None, :, None] < px + size) &
              (cy[:, None, None] >= py[None, None]) & (cy[:, None, None] < py + size)).any(-1)
    return float((np.diff(ys)[:, None] * np.diff(xs)[None] * inside).sum())


def pool_windows(ps: PatchSet, top_left: np.ndarray, side: int, image_hw, grid: int):
    """Features of square windows from a section's patches (the module docstring's rule).

    Args:
      ps: the section's patches.
      top_left: (n, 2) window top-left (x, y) px; ``side``: window side px.
      image_hw: (H, W); overlaps are measured inside the image.
      grid: token grid side (T = grid²).

    Returns:
      feats (n, D) float32, tokens (n, T, D) float16, coverage (n,) in [0, 1] (union of the
      patches over the window's in-image area; 1 for an exact match).
    """
    h, w = float(image_hw[0]), float(image_hw[1])
    n, d = len(top_left), ps.feats.shape[1]
    feats = np.zeros((n, d), np.float32)
    toks = np.zeros((n, grid * grid, d), np.float32)
    cover = np.zeros(n, np.float64)
    edges = np.arange(grid + 1) * (side / grid)
    for k, (x0, y0) in enumerate(np.asarray(top_left, np.float64)):
        bx0, by0 = max(x0, 0.0), max(y0, 0.0)
        bx1, by1 = min(x0 + side, w), min(y0 + side, h)
        idx = ps.candidates(bx0, bx1, by0, by1)
        if len(idx) == 0 or bx1 <= bx0 or by1 <= by0:
            continue
        px, py, f = ps.coords[idx, 0], ps.coords[idx, 1], ps.feats[idx]
        exact = np.flatnonzero((px == x0) & (py == y0)) if ps.size == side else []
        if len(exact):
            feats[k] = f[exact[0]]
            toks[k] = f[exact[0]]
            cover[k] = 1.0
            continue
        wts = _overlap(px, py, ps.size, bx0, bx1, by0, by1)
        feats[k] = (wts[:, None] * f).sum(0) / wts.sum()
        cover[k] = _union_area(px, py, ps.size, bx0, bx1, by0, by1) / \
            ((bx1 - bx0) * (by1 - by0))
        for i in range(grid):               # rows (y)
            cy0, cy1 = max(y0 + edges[i], 0.0), min(y0 + edges[i + 1], h)
            for j in range(grid):           # columns (x)
                cx0, cx1 = max(x0 + edges[j], 0.0), min(x0 + edges[j + 1], w)
                cw = _overlap(px, py, ps.size, cx0, cx1, cy0, cy1) \
                    if (cx1 > cx0 and cy1 > cy0) else np.zeros(len(idx))
                toks[k, i * grid + j] = ((cw[:, None] * f).sum(0) / cw.sum()
                                         if cw.sum() > 0 else feats[k])
    return feats, toks.astype(np.float16), cover


class PatchFeatureReader:
    """Serves TRIDENT / HEST patch features with ``FeatureExtractor.section_features``'
    interface (module docstring: files, rule, errors)."""

    def __init__(self, features_cfg):
        dirs = [d.strip() for d in str(features_cfg.patch_features or "").split(",")
                if d.strip()]
        if not dirs:
            raise ConfigError("features.encoder='patch_features' needs features.patch_features "
                              "(a folder of TRIDENT / HEST .h5 files, one per section)")
        self.dirs = [Path(d) for d in dirs]
        for d in self.dirs:
            if not d.is_dir():
                raise DataError(f"{d}: features.patch_features folder does not exist")
        self.token_grid = int(features_cfg.token_grid)
        self.default_size = int(features_cfg.patch_size_level0)
        self.dim: Optional[int] = None
        self._dim_source = ""

    def _pick(self, sets: list[PatchSet], side: int) -> PatchSet:
        return min(sets, key=lambda s: abs(math.log(s.size / side)))

    def section_features(self, section_name: str, image, spot_xy, region_origin,
                         global_origin, data_cfg, cache_dir=None, spot_ids=None) -> dict:
        """Features of one section's spots and tiles from its patch-feature file(s).

        ``image`` (H, W, 3) gives the frame the coordinates are checked against; ``cache_dir``
        is unused (reading is cheap); ``spot_ids`` name spots in messages.
        """
        del cache_dir
        if image is None:
            raise DataError(f"section {section_name!r}: patch features need the image (its "
                            "size checks the patch coordinates)")
        hw = image.shape[:2]
        sets = [read_patch_file(find_section_file(d, str(section_name)), hw, self.default_size)
                for d in self.dirs]
        for s in sets:
            d = s.feats.shape[1]
            if self.dim is None:
                self.dim, self._dim_source = d, str(s.path)
            elif d != self.dim:
                raise DataError(f"{s.path}: feature dimension {d} differs from {self.dim} in "
                                f"{self._dim_source} (every section and folder must use the "
                                "same encoder)")
        g = self.token_grid
        spot_xy = np.asarray(spot_xy, np.float64).reshape(-1, 2)
        size = int(data_cfg.spot_size)
        spot_tl = np.round(spot_xy) - size // 2
        ps = self._pick(sets, size)
        out = {}
        out["spot_feats"], out["spot_tokens"], cover = pool_windows(ps, spot_tl, size, hw, g)
        bad = cover < MIN_SPOT_COVERAGE
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            name = f"spot {str(spot_ids[i])!r}" if spot_ids is not None else f"spot #{i}"
            raise DataError(f"{ps.path}: section {section_name!r}: {int(bad.sum())} of "
                            f"{len(bad)} spots are less than {MIN_SPOT_COVERAGE:.0%} covered "
                            f"by the file's patches, e.g. {name} at "
                            f"{spot_xy[i].round(1).tolist()} ({cover[i]:.0%}); the patches "
                            "must cover the spots")
        for level, origin, side in (("region", region_origin, int(data_cfg.region_size)),
                                    ("global", global_origin, int(data_cfg.global_size))):
            origin = np.asarray(origin, np.float64).reshape(-1, 2)
            ps = self._pick(sets, side)
            f, t, cov = pool_windows(ps, origin, side, hw, g)
            if (cov <= 0).any():
                i = int(np.flatnonzero(cov <= 0)[0])
                raise DataError(f"{ps.path}: section {section_name!r}: no patch overlaps the "
                                f"{level} tile at {origin[i].astype(int).tolist()}")
            out[f"{level}_feats"], out[f"{level}_tokens"] = f, t
        logger.info("section %s: features from %s", section_name,
                    ", ".join(sorted({str(s.path) for s in sets})))
        return out


def write_trident(path, features: np.ndarray, top_left: np.ndarray, patch_size: int,
                  name: str = "") -> Path:
    """Writes a TRIDENT-layout file: ``features`` (N, D) float32, ``coords`` (N, 2) int64
    level-0 top-left px with TRIDENT's attributes on ``coords``."""
    import h5py
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=np.asarray(features, np.float32))
        c = f.create_dataset("coords", data=np.asarray(top_left, np.int64).reshape(-1, 2))
        for k, v in {"patch_size": int(patch_size), "patch_size_level0": int(patch_size),
                     "overlap": 0, "level0_magnification": 0, "target_magnification": 0,
                     "name": str(name or path.stem), "savetodir": str(path.parent)}.items():
            c.attrs[k] = v
    tmp.replace(path)
    return path
