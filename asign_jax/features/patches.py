"""Square patches centred on points, with reflect padding at the image border, and boxes of
an image (an array, or a slide read by region: ``data.slide.WorkingImage``)."""

from __future__ import annotations

import cv2
import numpy as np


def crop_patches(image: np.ndarray, centers_xy: np.ndarray, size: int) -> np.ndarray:
    """Crops ``size`` x ``size`` patches centred on ``centers_xy``.

    Windows that leave the image are completed by reflecting the image at its border
    (``np.pad`` mode "reflect"), so every spot keeps a patch; use
    ``count_outside(...)`` to report how many needed it.

    Args:
      image: (H, W, C) uint8, or a `data.slide.WorkingImage` (read by region).
      centers_xy: (n, 2) float pixel centres (x=col, y=row).
      size: patch side in px.

    Returns:
      (n, size, size, C) uint8.
    """
    if not isinstance(image, np.ndarray):      # a slide read by region (data.slide)
        return image.crop_patches(centers_xy, size)
    h, w = image.shape[:2]
    half = size // 2
    tl = np.round(np.asarray(centers_xy, dtype=np.float64)).astype(np.int64) - half
    pad = int(max(0, -tl.min(initial=0), (tl[:, 0] + size - w).max(initial=0),
                  (tl[:, 1] + size - h).max(initial=0))) if len(tl) else 0
    if pad:
        if pad >= min(h, w):  # reflect needs pad < dim; fall back to edge replication
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        else:
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    else:
        padded = image
    out = np.empty((len(tl), size, size, image.shape[2]), dtype=image.dtype)
    for i, (x, y) in enumerate(tl + pad):
        out[i] = padded[y:y + size, x:x + size]
    return out


def count_outside(image_shape, centers_xy: np.ndarray, size: int) -> int:
    """Number of ``size`` windows centred on ``centers_xy`` that leave an (H, W) image."""
    h, w = image_shape[:2]
    tl = np.round(np.asarray(centers_xy, dtype=np.float64)).astype(np.int64) - size // 2
    out = (tl[:, 0] < 0) | (tl[:, 1] < 0) | (tl[:, 0] + size > w) | (tl[:, 1] + size > h)
    return int(out.sum())


def read_box(image, x0: int, y0: int, x1: int, y1: int, downsample: int = 1) -> np.ndarray:
    """(h, w, 3) uint8 of the box [x0, x1) x [y0, y1) of ``image``, shrunk ``downsample`` times
    (area average; h, w = box side // downsample).

    An array is sliced; a slide read by region gives the box at the working resolution (from
    its pyramid level at or finer than it, never level 0 whole) and is then shrunk the same
    way, so a slide and the same image as an array give the same pixels (a coarser pyramid
    level would be another reduction: a JPEG's DCT halving, a scanner's own filter)."""
    w, h = (x1 - x0) // downsample, (y1 - y0) // downsample
    if isinstance(image, np.ndarray):
        crop = image[y0:y1, x0:x1]
    else:                                      # a slide read by region (data.slide)
        crop = image.read_working(x0, y0, x1, y1)
    if downsample > 1:
        crop = cv2.resize(crop, (max(1, w), max(1, h)), interpolation=cv2.INTER_AREA)
    return crop
