"""Sections from their images' pixels to working pixels (``config.data.um_per_px``).

Every px size in the config (spot patch, tiles, graph radii, validation blocks) is a length at
the working resolution ``data.um_per_px`` µm/px; the default is HER2ST's (0.6875 µm/px,
`data.slide.HER2ST_UM_PER_PX`), so on HER2ST the working pixels ARE the JPEGs' pixels and
nothing changes. A section whose image has another pixel size gets
``image_scale = data.um_per_px / image µm/px`` (level-0 px per working px) and its spot centres
divided by it; images are then read through `data.slide.WorkingImage`.

The pixel-only formats (her2st, stnet, visium, synthetic) keep scale 1 unless
``data.slide_um_per_px`` is set; ``hest`` and the impute manifest's slides take the pixel size
from the HEST metadata, the slide file, or ``data.slide_um_per_px`` / the manifest (none: error).

Checks (one DataError each, naming the file): the slide opens; every spot centre lies in the
slide (level-0 px); when the pixel size is known (metadata or config, not assumed) the spot
lattice's pitch times the pixel size is within 20 % of the technology's pitch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from asign_jax.data import pixel_size
from asign_jax.data import slide as slidemod
from asign_jax.data.lattice import PITCH_UM, fit_lattice, infer_lattice
from asign_jax.data.section import Sample, Section

logger = logging.getLogger(__name__)

LATTICE_TOLERANCE = 0.2


def section_to_working(section: Section, um_per_px: float, slide_um_per_px: float = 0.0,
                       lattice_kind: Optional[str] = None, legacy: bool = False,
                       plain_at_working: bool = False) -> Section:
    """The section with ``pixel_xy`` in working px and ``image_scale`` set (see module doc).

    Args:
      section: as a reader returns it (``pixel_xy`` in the image's level-0 px).
      um_per_px: working resolution (``data.um_per_px``).
      slide_um_per_px: ``data.slide_um_per_px`` (0 = from metadata).
      lattice_kind: "square" | "hex" of the format (None = skip the lattice check unless the
        section knows its pitch in µm).
      legacy: a pixel-only format (her2st, stnet, visium, synthetic): without
        ``slide_um_per_px`` its images are taken at the working resolution whatever their
        file says (scale 1, exactly the behaviour before pixel sizes existed).
      plain_at_working: a JPEG / PNG (no pixel size in the file) with no size given is taken
        at the working resolution (the impute manifest's images); a slide still needs one.
    """
    if section.image_path is None:
        return section
    path = section.image_path
    if legacy and not slide_um_per_px:
        return section                          # spots checked by prepare, as before
    slide = slidemod.open_slide(path)
    try:
        pixel_size.check_spots_in_slide(path, section.pixel_xy, slide.size)
        mpp, source, scale = slide_scale(slide, um_per_px, slide_um_per_px, section.um_per_px,
                                         plain_at_working)
    finally:
        slide.close()
    pitch_um = section.pitch_um or (PITCH_UM.get(lattice_kind) if lattice_kind else None)
    if not source.startswith("assumed") and pitch_um and section.n_spots >= 3:
        kind = lattice_kind or "square"
        lat = (fit_lattice(section.array_xy, section.pixel_xy, kind, where=str(path))
               if not np.array_equal(section.array_xy, section.pixel_xy)
               else infer_lattice(section.pixel_xy, kind, where=str(path)))
        pixel_size.check_lattice_pixel_size(path, lat.pitch, mpp, pitch_um, LATTICE_TOLERANCE)
    logger.info("section %s: %s at %.4g µm/px (%s), %.4g image px per working px", section.name,
                path, mpp, source, scale)
    return dataclasses.replace(section, pixel_xy=np.asarray(section.pixel_xy, np.float64) / scale,
                               image_scale=scale, um_per_px=mpp)


def slide_scale(slide, um_per_px: float, slide_um_per_px: float = 0.0,
                metadata: Optional[float] = None, plain_at_working: bool = False
                ) -> tuple[float, str, float]:
    """(level-0 µm/px, where it came from, level-0 px per working px) of an open slide
    (`pixel_size.resolve_um_per_px`; ``plain_at_working``: see `section_to_working`)."""
    default = um_per_px if plain_at_working and slidemod.is_plain(slide.path) else None
    mpp, source = pixel_size.resolve_um_per_px(slide.path, slide, slide_um_per_px, metadata,
                                               default)
    scale = float(um_per_px) / mpp
    return mpp, source, 1.0 if abs(scale - 1.0) < 1e-9 else scale


def samples_to_working(samples: list[Sample], data_cfg, lattice_kind: Optional[str],
                       legacy: bool = False) -> list[Sample]:
    """`section_to_working` on every section (``data_cfg``: ``config.data``)."""
    um = float(data_cfg.um_per_px)
    given = float(data_cfg.slide_um_per_px or 0.0)
    return [dataclasses.replace(s, sections=[section_to_working(x, um, given, lattice_kind, legacy)
                                             for x in s.sections]) for s in samples]
