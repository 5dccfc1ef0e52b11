"""Pixel sizes: µm <-> px, where a slide's level-0 pixel size comes from, and the checks that
a section's spots and lattice agree with it (one line naming the file when they do not)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from asign_jax.data.slide import Slide
from asign_jax.errors import DataError


def um_to_px(um: float, um_per_px: float) -> float:
    """Length in µm -> px at ``um_per_px``."""
    return float(um) / float(um_per_px)


def px_to_um(px: float, um_per_px: float) -> float:
    """Length in px at ``um_per_px`` -> µm."""
    return float(px) * float(um_per_px)


def resolve_um_per_px(path, slide: Optional[Slide], given: Optional[float],
                      metadata: Optional[float], default: Optional[float]) -> tuple[float, str]:
    """Level-0 pixel size of a section image and where it came from.

    Order: ``given`` (config ``data.slide_um_per_px`` > 0) > ``metadata`` (e.g. HEST json) >
    the slide file's own metadata > ``default`` (e.g. the working resolution). None of them:
    DataError naming the file.
    """
    if given:
        return float(given), "config data.slide_um_per_px"
    if metadata:
        return float(metadata), "dataset metadata"
    if slide is not None and slide.um_per_px:
        return float(slide.um_per_px), f"{slide.backend} metadata"
    if default:
        return float(default), "assumed = data.um_per_px"
    raise DataError(f"{path}: no pixel size (µm/px) in the slide's metadata; set "
                    "data.slide_um_per_px (or the manifest's um_per_px)")


def check_lattice_pixel_size(path, pitch_px: float, um_per_px: float, pitch_um: float,
                             tolerance: float = 0.2) -> None:
    """DataError when the spot lattice's pitch (px) times the pixel size disagrees with the
    technology's pitch (µm) by more than ``tolerance`` (relative)."""
    if not (pitch_px > 0 and um_per_px > 0 and pitch_um > 0):
        return
    measured = pitch_px * um_per_px
    if abs(measured / pitch_um - 1.0) > tolerance:
        raise DataError(f"{path}: pixel size {um_per_px:.4g} µm/px gives a spot pitch of "
                        f"{measured:.1f} µm ({pitch_px:.1f} px), but the lattice's pitch is "
                        f"{pitch_um:g} µm (more than {tolerance:.0%} off); fix the pixel size "
                        "(data.slide_um_per_px) or the spot coordinates")


def check_spots_in_slide(path, pixel_xy: np.ndarray, size_wh: tuple[int, int]) -> None:
    """DataError naming the file when a spot centre (level-0 px) lies outside the slide."""
    w, h = size_wh
    xy = np.asarray(pixel_xy, np.float64).reshape(-1, 2)
    bad = ~np.isfinite(xy).all(1) | (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | \
        (xy[:, 1] >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: {int(bad.sum())} of {len(xy)} spot centres lie outside the "
                        f"{w} x {h} px slide, e.g. spot #{i} at {xy[i].round(1).tolist()}")
