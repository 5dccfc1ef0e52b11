"""`load_samples(config)`: the one entry point from a config to a list of `Sample`.

Dispatches on ``config.data.format``:

* ``her2st`` / ``synthetic``: `asign_jax.data.her2st.read_her2st` on ``config.data.root`` (the
  synthetic generator writes the HER2ST layout; nothing is generated here);
* ``stnet``: `asign_jax.data.stnet.read_stnet`;
* ``visium``: `asign_jax.data.visium.read_visium`;
* ``hest``: `asign_jax.data.hest.read_hest` (HEST-1k layout; ``data.hest_filter``);
* ``visium_hd``: `asign_jax.data.visium_hd.read_visium_hd` (bins of ``data.bin_um``; groups
  as visium).

Spot centres are then converted to working px (``data.um_per_px``, `data.working`).

``config.data.sections`` selects sections: ``""`` = every section that has an image; for
her2st/synthetic/stnet a comma-separated list of section ids or patient ids (``"C2,C3,B4"``,
``"BC23450"``); for visium the grouping ``"A:151507,151508;B:151669,151670"`` (sample id:
ordered section folders). Sections without an image are left out (image-based stages need
them) unless ``counts_only=True``. The result is restricted to the genes of every section.
"""

from __future__ import annotations

import logging
from typing import Optional

from asign_jax.data import hest, her2st, stnet, validate, visium, visium_hd, working
from asign_jax.data.lattice import FORMAT_KIND
from asign_jax.data.section import Sample
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMATS = ("her2st", "stnet", "visium", "synthetic", "hest", "visium_hd")


def parse_section_list(spec: str) -> Optional[list[str]]:
    """``"C2, C3"`` -> ``["C2", "C3"]``; ``""`` -> None (all sections)."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if ":" in spec or ";" in spec:
        raise ConfigError(f"data.sections={spec!r}: 'sample:sections;...' groups are only "
                          "used for the visium, visium_hd and hest formats; give a "
                          "comma-separated list of ids")
    items = [s.strip() for s in spec.split(",")]
    if any(not s for s in items):
        raise ConfigError(f"data.sections={spec!r}: empty entry in the comma-separated list")
    return items


def parse_section_groups(spec: str) -> Optional[dict[str, list[str]]]:
    """``"A:1,2;B:3,4"`` -> ``{"A": ["1", "2"], "B": ["3", "4"]}``; ``""`` -> None."""
    spec = (spec or "").strip()
    if not spec:
        return None
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        sample_id, sep, rest = part.partition(":")
        sample_id = sample_id.strip()
        sections = [s.strip() for s in rest.split(",") if s.strip()]
        if not sep or not sample_id or not sections:
            raise ConfigError(f"data.sections={spec!r}: group {part!r} is not "
                              "'sample_id:section,section,...'")
        if sample_id in groups:
            raise ConfigError(f"data.sections={spec!r}: sample {sample_id!r} given twice")
        dup = seen.intersection(sections)
        if dup or len(set(sections)) != len(sections):
            raise ConfigError(f"data.sections={spec!r}: section(s) listed twice "
                              f"{sorted(dup) or sections}")
        seen.update(sections)
        groups[sample_id] = sections
    return groups


def _image_globs(config):
    globs = tuple(g.strip() for g in config.data.image_glob.split(",") if g.strip())
    return globs or visium.DEFAULT_IMAGE_GLOBS


def load_samples(config, *, counts_only: bool = False,
                 dropped: Optional[dict] = None) -> list[Sample]:
    """Reads the samples ``config.data`` describes (see the module docstring).

    Args:
      config: the full config (``config.data.format``, ``.root``, ``.sections``,
        ``.min_section_spots``; visium also reads ``data.image_glob``, comma-separated globs).
      counts_only: keep sections without an image (for analyses that need no image).
      dropped: filled with {sample: {section: why}} of the samples left with no section (so
        that "unknown sample 'B'" can name B4's missing image).

    Returns:
      Samples with gene-intersected sections; one info line per section is logged.
    """
    fmt, root = config.data.format, config.data.root
    if fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt!r}: expected one of {FORMATS}")
    if not root:
        raise ConfigError(f"data.root is empty: set it to the {fmt} data folder")
    images_only = not counts_only
    if fmt in ("her2st", "synthetic"):
        samples = her2st.read_her2st(root, parse_section_list(config.data.sections),
                                     images_only=images_only, dropped=dropped)
    elif fmt == "stnet":
        samples = stnet.read_stnet(root, parse_section_list(config.data.sections),
                                   images_only=images_only, dropped=dropped)
    elif fmt == "hest":
        spec = config.data.sections or ""
        samples = hest.read_hest(root, parse_section_groups(spec) if ":" in spec or ";" in spec
                                 else parse_section_list(spec), config.data.hest_filter)
    elif fmt == "visium_hd":
        samples = visium_hd.read_visium_hd(root, parse_section_groups(config.data.sections),
                                           int(config.data.bin_um),
                                           image_globs=_image_globs(config))
    else:
        samples = visium.read_visium(root, parse_section_groups(config.data.sections),
                                     image_globs=_image_globs(config), images_only=images_only,
                                     dropped=dropped)
    if not samples:
        raise DataError(f"{root}: no {fmt} section left to load (data.sections="
                        f"{config.data.sections!r}, counts_only={counts_only})")

    min_spots = int(config.data.min_section_spots)
    small = [f"{s.name} ({s.n_spots})" for sample in samples for s in sample.sections
             if s.n_spots < min_spots]
    if small:
        raise DataError(f"{root}: section(s) with fewer than data.min_section_spots="
                        f"{min_spots} matched spots: {', '.join(small)}")

    if fmt == "hest":
        samples = [working.samples_to_working(
            [s], config.data, hest.sample_lattice_kind(root, [x.name for x in s.sections]))[0]
            for s in samples]
    elif fmt == "visium_hd":
        samples = working.samples_to_working(samples, config.data, "square")
    else:
        samples = working.samples_to_working(samples, config.data, FORMAT_KIND.get(fmt),
                                             legacy=True)
    samples = validate.intersect_genes(samples, n_ranked=int(config.data.n_genes))
    for sample in samples:
        for s in sample.sections:
            logger.info("sample %s section %s: %d spots x %d genes, image %s", sample.sample_id,
                        s.name, s.n_spots, len(s.genes),
                        s.image_path if s.image_path is not None else "none")
    return samples
