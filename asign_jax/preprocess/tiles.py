"""Region (512 px) and global (1024 px) tiles and their labels.

Tiles lie on square grids aligned at the image origin: tile (i, j) of side S covers
x in [i*S, (i+1)*S) and y in [j*S, (j+1)*S) (x = column, y = row, full-resolution pixels).
A tile is kept iff at least one spot centre falls in it, so every spot has exactly one
region and one global tile, found by integer division (no search, no fallback).

Differences from the official scripts (see notes/asign-official-code.md §1): the official
tiling drops the right/bottom remainder strips (tiles only for i < floor(W/S)), which leaves
spots there without a tile; here a kept tile may extend past the right/bottom image border
(the feature extractor pads it). Spot centres outside the image are an error.

Kept tiles are ordered row-major, i.e. sorted by (j, i): top row first, left to right.
"""

from __future__ import annotations

import numpy as np

from asign_jax.errors import ConfigError, DataError


def check_spots_inside(pixel_xy: np.ndarray, image_shape, section: str) -> None:
    """Raises DataError when a spot centre lies outside the (H, W) image.

    Inside means 0 <= x < W and 0 <= y < H (x = column, y = row).
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    xy = np.asarray(pixel_xy, dtype=np.float64)
    bad = ~np.isfinite(xy).all(axis=1)
    bad |= (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if bad.any():
        first = np.flatnonzero(bad)[:3]
        raise DataError(
            f"section {section!r}: {int(bad.sum())} of {len(xy)} spot centres lie outside the "
            f"{w}x{h} (W x H) image, e.g. spot #{first.tolist()} at "
            f"{xy[first].round(1).tolist()}; check the pixel coordinate columns/scale factor "
            "(x must be the image column, y the row)")


def assign_tiles(pixel_xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Finds the tiles of side ``size`` that contain at least one spot centre.

    Args:
      pixel_xy: (N, 2) float spot centres (x = column, y = row), full-resolution pixels.
      size: tile side S in px.

    Returns:
      origins: (R, 2) int64 top-left pixel (x, y) = (i*S, j*S) of each kept tile, sorted by
        (j, i) (row-major).
      spot_tile: (N,) int32, index into ``origins`` of the tile containing each spot's centre.
    """
    if int(size) <= 0:
        raise ConfigError(f"tile size must be > 0, got {size}")
    size = int(size)
    xy = np.asarray(pixel_xy, dtype=np.float64).reshape(-1, 2)
    ij = np.floor(xy / size).astype(np.int64)                       # (N, 2) = (i, j)
    keys, inverse = np.unique(ij[:, ::-1], axis=0, return_inverse=True)  # sorted by (j, i)
    origins = (keys[:, ::-1] * size).astype(np.int64).reshape(-1, 2)
    return origins, inverse.reshape(-1).astype(np.int32)


def region_global(region_origin: np.ndarray, region_size: int, global_origin: np.ndarray,
                  global_size: int) -> np.ndarray:
    """Index of the global tile containing each region tile.

    Exact because both grids start at the image origin and ``global_size`` is a multiple of
    ``region_size``, so a region tile lies inside exactly one global tile.

    Args:
      region_origin: (R, 2) int top-left (x, y) of the region tiles.
      region_size: region tile side (px).
      global_origin: (Q, 2) int top-left (x, y) of the global tiles.
      global_size: global tile side (px), a multiple of ``region_size``.

    Returns:
      (R,) int32 indices into ``global_origin``.
    """
    if region_size <= 0 or global_size % region_size != 0:
        raise ConfigError(f"data.global_size={global_size} must be a positive multiple of "
                          f"data.region_size={region_size} (the tile grids must nest)")
    ro = np.asarray(region_origin, dtype=np.int64).reshape(-1, 2)
    if (ro % region_size).any():
        raise ValueError(f"region origins are not on the {region_size} px grid")
    lookup = {(int(x), int(y)): k for k, (x, y) in enumerate(np.asarray(global_origin))}
    parent = (ro // global_size) * global_size
    out = np.empty(len(ro), dtype=np.int32)
    for r, (x, y) in enumerate(parent):
        k = lookup.get((int(x), int(y)))
        if k is None:
            raise DataError(f"region tile at {ro[r].tolist()} has no global tile at "
                            f"{[int(x), int(y)]}; tiles were built from different spots")
        out[r] = k
    return out


def tile_counts(spot_counts: np.ndarray, spot_tile: np.ndarray, n_tiles: int,
                dtype=np.float32) -> np.ndarray:
    """Tile labels before normalisation: the SUM of the member spots' raw counts (eq. 10).

    Args:
      spot_counts: (N, G) raw counts.
      spot_tile: (N,) int index of each spot's tile.
      n_tiles: R.
      dtype: output dtype (accumulation is float64).

    Returns:
      (R, G) summed counts.
    """
    c = np.asarray(spot_counts, dtype=np.float64)
    out = np.zeros((int(n_tiles), c.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(spot_tile, dtype=np.int64), c)
    return out.astype(dtype)
