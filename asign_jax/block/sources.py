"""Reading a block's sections and the extra labelled data (``--train_with``).

* a measured section: its ST data through the reader of its format, with the manifest's image;
* an image-only section with user-given spots (``spots_from``): a `Section` without counts;
* ``--train_with``: a block manifest whose sections all carry ST, a config file (its ``data``
  block, read by `data.loaders.load_samples`), or a dataset folder (format detected).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.block.manifest import SectionEntry, load_manifest
from asign_jax.data import generic, her2st, hest, pixel_size, stnet, validate, visium, working
from asign_jax.data import slide as slidemod
from asign_jax.data.lattice import Lattice, fit_lattice, infer_lattice
from asign_jax.data.loaders import load_samples
from asign_jax.data.section import Sample, Section
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def to_block_px(section: Section, data_cfg, given_um: float = 0.0,
                lattice_kind: Optional[str] = None) -> Section:
    """A section checked against its slide (spots inside, pixel size vs lattice) and put in
    working px (``pixel_xy`` / ``image_scale``; `data.working.section_to_working`).

    Level-0 µm/px: ``given_um`` (the manifest's ``um_per_px``) > ``data.slide_um_per_px`` >
    the dataset's metadata (HEST) > the slide's own; a JPEG / PNG with none is taken at the
    working resolution, a slide with none stops with one line naming the file.
    """
    if data_cfg is None:
        return section
    return working.section_to_working(section, float(data_cfg.um_per_px),
                                      _given_um(given_um, data_cfg), lattice_kind,
                                      plain_at_working=True)


def image_scale(entry: SectionEntry, data_cfg) -> float:
    """Level-0 px per working px of an image-only section's slide (`to_block_px`'s rules)."""
    if data_cfg is None:
        return 1.0
    slide = slidemod.open_slide(entry.image)
    try:
        return working.slide_scale(slide, float(data_cfg.um_per_px),
                                   _given_um(entry.um_per_px, data_cfg),
                                   plain_at_working=True)[2]
    finally:
        slide.close()


def _given_um(given_um: float, data_cfg) -> float:
    """The level-0 µm/px given for a section: the manifest's, else ``data.slide_um_per_px``
    (0 = from the metadata / the slide)."""
    return float(given_um or data_cfg.slide_um_per_px or 0.0)


def read_measured(entry: SectionEntry, data_cfg=None) -> tuple[Section, Lattice]:
    """A measured section (counts, spots, the manifest's image) and its spot lattice
    (``data_cfg``: ``config.data``, for a HEST section's pixel size)."""
    st, name, image = entry.st, entry.name, entry.image
    has_array = True
    if st.format == "her2st":
        section = her2st.read_files(name, st.counts, st.spots, image)
    elif st.format == "stnet":
        section = stnet.read_section(st.counts, name=name, spots_path=st.spots, image=image)
    elif st.format == "visium":
        section = visium.read_section(st.path, name=name, image=image)
    elif st.format == "hest":
        section = hest.read_section(st.path, name, image=image)
    else:
        section, has_array = generic.read_section(name, st.counts, st.spots, image)
    where = f"{entry.where}: {st.counts or st.path}"
    section = to_block_px(section, data_cfg, entry.um_per_px, st.lattice_kind or None)
    lattice = (fit_lattice(section.array_xy, section.pixel_xy, st.lattice_kind, where=where)
               if has_array and st.lattice_kind
               else infer_lattice(section.pixel_xy, st.lattice_kind or None, where=where))
    logger.info("section %s: %d measured spots (%s), %s lattice, pitch %.1f px, spot diameter "
                "%.1f px", name, section.n_spots, st.format, lattice.kind, lattice.pitch,
                lattice.spot_diameter)
    return section, lattice


def image_only(name: str, image: Path, spot_ids, pixel_xy, array_xy=None,
               image_scale: float = 1.0) -> Section:
    """A `Section` without counts: spots on an image (``pixel_xy`` working px; ``image_scale``
    level-0 px per working px), nothing measured."""
    pixel_xy = np.asarray(pixel_xy, np.float64).reshape(-1, 2)
    array_xy = pixel_xy if array_xy is None else np.asarray(array_xy, np.float64)
    validate.check_coordinates(pixel_xy, image, "spot pixel")
    return Section(name=name, image_path=Path(image), spot_ids=np.asarray(spot_ids, dtype=str),
                   array_xy=array_xy, pixel_xy=pixel_xy, counts=None,
                   genes=np.zeros(0, dtype=str), image_scale=float(image_scale))


def read_spots_from(entry: SectionEntry, path: Path, scale: float = 1.0) -> Section:
    """An image-only section whose spot centres the user gave (csv ``[id,] x, y`` in the
    image's level-0 px), in working px (``scale``: level-0 px per working px)."""
    ids, pixel, _ = generic.read_spots(path, "spots_from file")
    if len(ids) == 0:
        raise DataError(f"{path}: no spot for section {entry.name!r}")
    slide = slidemod.open_slide(entry.image)     # header only: nothing is decoded
    try:
        pixel_size.check_spots_in_slide(path, pixel, slide.size)
    finally:
        slide.close()
    logger.info("section %s: %d spots from %s (image only)", entry.name, len(ids), path)
    return image_only(entry.name, entry.image, ids, np.asarray(pixel, np.float64) / scale,
                      image_scale=scale)


# ---- --train_with ---------------------------------------------------------------------------

def _config_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        return mod.get_config()
    except Exception as e:  # noqa: BLE001 - any failure of a user's config file
        raise ConfigError(f"{path}: cannot load the config file ({type(e).__name__}: {e})") from e


def load_config(path: Path):
    """A config file's ``get_config()``."""
    return _config_file(Path(path))


def _detect_format(root: Path) -> str:
    if (root / "ST-cnts").is_dir():
        return "her2st"
    if any(root.glob("*/filtered_feature_bc_matrix.h5")):
        return "visium"
    if any(root.glob("*/*/*_*.tsv.gz")):
        return "stnet"
    raise DataError(f"{root}: not a HER2ST (ST-cnts/), Visium (<section>/"
                    f"filtered_feature_bc_matrix.h5) or ST-Net (<subtype>/<patient>/) folder")


def labelled_manifest(path: Path, data_cfg=None) -> Sample:
    """The sample of a manifest whose every section carries ST (extra training data)."""
    m = load_manifest(path, labelled=True)
    return Sample(m.sample_id, [read_measured(e, data_cfg)[0] for e in m.sections])


def train_with_samples(specs, config, taken: set) -> list[Sample]:
    """The labelled samples of ``--train_with`` (see the module docstring).

    ``taken``: sample ids already used (the block's); a clash is an error.
    """
    out = []
    for spec in specs:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"--train_with {path}: does not exist")
        if path.is_dir():
            cfg = config.copy_and_resolve_references()
            cfg.data.format, cfg.data.root, cfg.data.sections = _detect_format(path), str(path), ""
            samples = load_samples(cfg)
        elif path.suffix == ".py":
            samples = load_samples(_config_file(path))
        else:
            samples = [labelled_manifest(path, config.data)]
        for s in samples:
            if s.sample_id in taken:
                raise DataError(f"--train_with {path}: sample id {s.sample_id!r} is already "
                                f"used (by the block or another --train_with entry)")
            if not all(x.has_counts for x in s.sections):
                raise DataError(f"--train_with {path}: sample {s.sample_id!r} has sections "
                                "without counts; extra training data must be labelled")
            taken.add(s.sample_id)
            logger.info("train_with %s: sample %s (%s)", path, s.sample_id,
                        ", ".join(x.name for x in s.sections))
        out.extend(samples)
    return out
