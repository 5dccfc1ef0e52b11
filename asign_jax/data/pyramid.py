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
        while max(cur.shape[:2]) > 2 * tile:
            h, w = -(-cur.shape[0] // 2), -(-cur.shape[1] // 2)
            cur = cv2.resize(cur, (w, h), interpolation=cv2.INTER_AREA)
            levels.append(cur)
    kw = dict(photometric="rgb", tile=(tile, tile), compression=compression)
    res = {}
    if um_per_px:
        res = dict(resolution=(1e4 / um_per_px, 1e4 / um_per_px), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=level0.nbytes > 2 ** 31) as tif:
        tif.write(level0, subifds=len(levels), **kw, **res)
        for k, lv in enumerate(levels, start=1):
            kres = {}
            if um_per_px:
                kres = dict(resolution=(1e4 / (um_per_px * 2 ** k),) * 2,
                            resolutionunit="CENTIMETER")
            tif.write(lv, subfiletype=1, **kw, **kres)
    return path
