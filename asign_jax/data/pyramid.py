"""A tiled pyramidal RGB TIFF writer (the layout ``data.slide`` reads; HEST's ``wsis/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import tifffile


def write_pyramid_tiff(path, level0: np.ndarray, um_per_px: Optional[float] = None,
                       levels: Optional[list] = None, tile: int = 256,
                       compression: str = "zlib") -> Path:
    """Writes a tiled pyramidal RGB TIFF (SubIFDs, lossless) with tifffile.

    ``levels``: the reduced images (downsample 2, 4, ...; sizes ceil(H / 2^k)); None = built by
    halving with INTER_AREA until the long side is < 2 tiles. ``um_per_px`` goes into the
    resolution tags (px per cm). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if levels is None:
        levels, cur = [], level0
        for w, h in level_sizes(level0.shape[1], level0.shape[0], tile)[1:]:
            cur = cv2.resize(cur, (w, h), interpolation=cv2.INTER_AREA)
            levels.append(cur)
    kw = dict(photometric="rgb", tile=(tile, tile), compression=compression)
    with tifffile.TiffWriter(path, bigtiff=level0.nbytes > 2 ** 31) as tif:
        tif.write(level0, subifds=len(levels), **kw, **_resolution(um_per_px, 0))
        for k, lv in enumerate(levels, start=1):
            tif.write(lv, subfiletype=1, **kw, **_resolution(um_per_px, k))
    return path


def _resolution(um_per_px: Optional[float], level: int) -> dict:
    """tifffile's resolution tags (px per cm) of pyramid level ``level`` (downsample 2^level);
    {} without a pixel size."""
    if not um_per_px:
        return {}
    return dict(resolution=(1e4 / (um_per_px * 2 ** level),) * 2, resolutionunit="CENTIMETER")


def level_sizes(width: int, height: int, tile: int = 256) -> list[tuple[int, int]]:
    """(W, H) of each pyramid level (downsample 2^k, sizes ceil(W / 2^k)) down to the first
    whose long side is <= 2 tiles (``write_pyramid_tiff``'s rule)."""
    sizes = [(int(width), int(height))]
    while max(sizes[-1]) > 2 * tile:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def _nearest_tiles(working: np.ndarray, size: tuple[int, int], tile: int):
    """The tiles (row-major, edge tiles zero-padded) of ``working`` upsampled to ``size`` (W, H)
    by nearest neighbour: level px x shows working px floor((x + 0.5) * w / W)."""
    h0, w0 = working.shape[:2]
    w, h = size
    xs = np.minimum(((np.arange(w) + 0.5) * (w0 / w)).astype(np.int64), w0 - 1)
    ys = np.minimum(((np.arange(h) + 0.5) * (h0 / h)).astype(np.int64), h0 - 1)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            out = np.zeros((tile, tile, 3), np.uint8)
            yy, xx = ys[y:y + tile], xs[x:x + tile]
            out[:len(yy), :len(xx)] = working[yy[:, None], xx[None, :], :3]
            yield out


def write_upsampled_pyramid(path, working: np.ndarray, factor: float, um_per_px: float,
                            reductions: Optional[list] = None, tile: int = 256,
                            level: int = 6) -> Path:
    """A whole-slide-sized pyramidal TIFF of ``working`` (H, W, 3) uint8 shown ``factor`` times
    finer (level 0 = round(W * factor) px at ``um_per_px`` µm/px), written tile by tile so that
    no level finer than ``working`` is ever held whole (``experiments/write_wsi_block.py``).

    A level at least as fine as ``working`` is its nearest-neighbour upsampling (no detail is
    invented); a level of exactly ``working``'s size is ``working`` itself; coarser levels are
    ``reductions`` (e.g. the JPEG's own 1/2, 1/4, 1/8 DCT reductions, so that registration sees
    the thumbnails the JPEG path sees) in order, then INTER_AREA halvings. ``level``: zlib level.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = working.shape[:2]
    sizes = level_sizes(int(round(w * factor)), int(round(h * factor)), tile)
    reductions = list(reductions or [])
    kw = dict(photometric="rgb", tile=(tile, tile), compression="zlib",
              compressionargs={"level": int(level)})
    coarse = working
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, (lw, lh) in enumerate(sizes):
            extra = dict(subifds=len(sizes) - 1) if k == 0 else dict(subfiletype=1)
            res = _resolution(um_per_px, k)
            if lw > w or lh > h:
                tif.write(_nearest_tiles(working, (lw, lh), tile), shape=(lh, lw, 3),
                          dtype=np.uint8, **kw, **res, **extra)
                continue
            if (lw, lh) == (w, h):
                data = working
            elif reductions:
                data = reductions.pop(0)
            else:
                data = cv2.resize(coarse, (lw, lh), interpolation=cv2.INTER_AREA)
            if data.shape[:2] != (lh, lw):
                raise ValueError(f"{path}: level {k} is {data.shape[1]} x {data.shape[0]}, "
                                 f"expected {lw} x {lh}")
            coarse = data
            tif.write(np.ascontiguousarray(data[..., :3]), **kw, **res, **extra)
    return path
