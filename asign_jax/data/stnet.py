"""Reader for the ST-Net breast cancer layout (He et al. 2020, Nat. Biomed. Eng.).

Layout under ``root`` (as read by ``stnet/cmd/prepare/spatial.py`` of bryanhe/ST-Net)::

    <subtype>/<patient>/<patient>_<section>.tsv.gz     counts
    <subtype>/<patient>/<patient>_<section>.spots.txt  spot positions
    <subtype>/<patient>/<patient>_<section>.jpg        full-resolution H&E image
    <subtype>/<patient>/<patient>_<section>_Coords.tsv tumour labels (not used here)

* ``*.tsv.gz``: tab-separated with a header; the first column is the spot id ``"{x}x{y}"``
  (array grid), every other column one gene named by its Ensembl id. A few columns name
  several ids joined by ``+``; such a name is kept verbatim as one gene. Genes without any
  count in a section are absent from its table (ST-Net pads them back with zeros); here
  `validate.intersect_genes` keeps only genes seen in every section, which drops rarely
  detected genes, not the highly expressed ones the model is trained on.
* ``*.spots.txt``: tab-separated with a header holding at least ``x y pixel_x pixel_y`` (array
  position and spot centre in image pixels; other columns are ignored). ST-Net keys a spot
  by ``f"{int(x)}x{int(y)}"``; the array positions are integers, and we round like the HER2ST
  reader does. A ``selected`` column, when present, drops rows with value 0.

The section name is the file stem ``<patient>_<section>`` (e.g. ``BC23450_D2``); one `Sample`
per patient, its sections ordered by name. The subtype folder only groups patients.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence


from asign_jax.data import validate
from asign_jax.data.section import Sample, Section
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

_COUNTS = ".tsv.gz"


def discover(root) -> dict[str, list[Path]]:
    """Patient -> sorted count files ``<root>/<subtype>/<patient>/<patient>_<section>.tsv.gz``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ST-Net data folder does not exist (is data.root right?)")
    found: dict[str, list[Path]] = {}
    subtype: dict[str, str] = {}
    for path in sorted(root.glob(f"*/*/*_*{_COUNTS}")):
        patient = path.parent.name
        stem = path.name[: -len(_COUNTS)]
        if not stem.startswith(patient + "_"):
            raise DataError(f"{path}: count file name does not start with its patient folder "
                            f"name {patient!r}_")
        st = path.parent.parent.name
        if subtype.setdefault(patient, st) != st:
            raise DataError(f"{root}: patient {patient!r} appears under two subtype folders "
                            f"({subtype[patient]!r} and {st!r})")
        found.setdefault(patient, []).append(path)
    if not found:
        raise DataError(f"{root}: no ST-Net count file <subtype>/<patient>/<patient>_<section>"
                        f"{_COUNTS}")
    return found


def read_section(counts_path: Path, *, name: Optional[str] = None,
                 spots_path: Optional[Path] = None, image: Optional[Path] = None) -> Section:
    """Reads one section from its count file and the ``.spots.txt`` / ``.jpg`` beside it
    (``name``, ``spots_path`` and ``image`` override them)."""
    counts_path = Path(counts_path)
    stem = counts_path.name[: -len(_COUNTS)]
    name = name or stem
    spots_path = Path(spots_path) if spots_path else counts_path.with_name(stem + ".spots.txt")
    if image is None:
        image_path = counts_path.with_name(stem + ".jpg")
        image = image_path if image_path.is_file() else None
    count_ids, genes, counts = validate.read_count_table(counts_path)

    spots = validate.read_table(spots_path, "spot file", sep="\t")
    validate.require_columns(spots, ("x", "y", "pixel_x", "pixel_y"), spots_path, "spot file")
    cols = {c: validate.numeric_column(spots, c, spots_path)
            for c in ("x", "y", "pixel_x", "pixel_y")}
    return validate.section_from_spot_table(name, image, spots, cols, spots_path, count_ids,
                                            counts, genes, counts_path)


def read_stnet(root, sections: Optional[Sequence[str]] = None, *,
               images_only: bool = False, dropped: Optional[dict] = None) -> list[Sample]:
    """Reads ST-Net sections, one `Sample` per patient.

    Args:
      root: the dataset folder (``<subtype>/<patient>/...`` below it).
      sections: section names (``"BC23450_D2"``) or patient ids (``"BC23450"``, all its
        sections); None = everything.
      images_only: leave out (and log) sections without a ``.jpg`` before reading them.

    Returns:
      Samples sorted by patient id, sections by name.
    """
    found = discover(root)
    by_name = {p.name[: -len(_COUNTS)]: (patient, p) for patient, ps in found.items() for p in ps}
    if sections is None:
        wanted = list(by_name)
    else:
        wanted = []
        for s in sections:
            if s in found:
                wanted.extend(p.name[: -len(_COUNTS)] for p in found[s])
            elif s in by_name:
                wanted.append(s)
            else:
                raise DataError(f"{root}: no ST-Net section or patient {s!r} "
                                f"(known patients: {sorted(found)[:10]})")
    wanted = sorted(dict.fromkeys(wanted))

    no_image = [n for n in wanted if not by_name[n][1].with_name(n + ".jpg").is_file()]
    if no_image:
        logger.warning("ST-Net %s: sections without an image%s: %s", root,
                       " left out" if images_only else " (counts only)", ", ".join(no_image))
    left_out: dict[str, dict[str, str]] = {}
    if no_image and images_only:
        wanted = [n for n in wanted if n not in no_image]
        for n in no_image:
            patient, path = by_name[n]
            left_out.setdefault(patient, {})[n] = f"no image {path.with_name(n + '.jpg')}"

    by_patient: dict[str, list[Section]] = {}
    for n in wanted:
        patient, path = by_name[n]
        by_patient.setdefault(patient, []).append(read_section(path))
    if dropped is not None:       # {patient: {section: why}} of patients with no section left
        dropped.update({p: v for p, v in left_out.items() if p not in by_patient})
    return [Sample(sample_id=p, sections=by_patient[p], left_out=left_out.get(p, {}))
            for p in sorted(by_patient)]
