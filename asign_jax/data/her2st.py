"""Reader for the HER2ST layout (Andersson et al. 2021); the synthetic generator writes it too.

Layout under ``root``::

    ST-cnts/<S>.tsv.gz              spots x genes raw counts, tab-separated; first column the
                                    spot id "{x}x{y}" (array grid), header the gene names
    ST-spotfiles/<S>_selection.tsv  tab-separated, header ``x y new_x new_y pixel_x pixel_y
                                    selected``: array position, corrected array position,
                                    spot centre in full-resolution image pixels, under-tissue flag
    ST-imgs/<patient>/<S>/*.jpg     the full-resolution H&E image (one file; may be absent)

A section id is the patient letter(s) plus the section number (``C3``). Sections are grouped
into one `Sample` per patient (sample id = the letters), ordered by section number.

The selection file is joined with the counts on ``f"{round(x)}x{round(y)}"``; spots present on
only one side are dropped, counted and logged (`validate.join_spots`). Rows whose ``selected``
column is 0 (spot not under tissue) are left out before the join. ``array_xy = (x, y)``,
``pixel_xy = (pixel_x, pixel_y)``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence


from asign_jax.data import validate
from asign_jax.data.section import Sample, Section
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_SECTION_RE = re.compile(r"^([A-Za-z]+)(\d+)$")


def parse_section_id(name: str) -> tuple[str, int]:
    """``"C3"`` -> ``("C", 3)``; raises DataError for ids not of the form letters + number."""
    m = _SECTION_RE.match(name)
    if m is None:
        raise DataError(f"HER2ST section id {name!r} is not patient letter(s) + section number "
                        "(e.g. 'C3')")
    return m.group(1), int(m.group(2))


def available_sections(root: Path) -> list[str]:
    """Section ids that have a count file under ``root/ST-cnts``, in patient/number order."""
    cnts = Path(root) / "ST-cnts"
    if not cnts.is_dir():
        raise DataError(f"{cnts}: HER2ST count folder does not exist (is data.root right?)")
    names = [p.name[: -len(".tsv.gz")] for p in cnts.glob("*.tsv.gz")]
    return sorted((n for n in names if _SECTION_RE.match(n)), key=parse_section_id)


def find_image(root: Path, name: str) -> Optional[Path]:
    """The section's image under ``ST-imgs/<patient>/<name>/``, or None when there is none."""
    patient, _ = parse_section_id(name)
    folder = Path(root) / "ST-imgs" / patient / name
    if not folder.is_dir():
        return None
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) > 1:
        raise DataError(f"{folder}: {len(images)} image files ({[p.name for p in images]}); "
                        "expected one full-resolution H&E image per section")
    return images[0] if images else None


def read_section(root: Path, name: str) -> Section:
    """Reads one section (counts joined with its selection file)."""
    root = Path(root)
    return read_files(name, root / "ST-cnts" / f"{name}.tsv.gz",
                      root / "ST-spotfiles" / f"{name}_selection.tsv", find_image(root, name))


def read_files(name: str, counts_path: Path, spots_path: Path,
               image: Optional[Path]) -> Section:
    """Reads one section from its count file and selection file (any paths)."""
    count_ids, genes, counts = validate.read_count_table(counts_path)

    sel = validate.read_table(spots_path, "spot selection file", sep="\t")
    validate.require_columns(sel, ("x", "y", "pixel_x", "pixel_y"), spots_path,
                             "spot selection file")
    cols = {c: validate.numeric_column(sel, c, spots_path)
            for c in ("x", "y", "pixel_x", "pixel_y")}
    return validate.section_from_spot_table(name, image, sel, cols, spots_path, count_ids,
                                            counts, genes, counts_path)


def read_her2st(root, sections: Optional[Sequence[str]] = None, *,
                images_only: bool = False, dropped: Optional[dict] = None) -> list[Sample]:
    """Reads HER2ST-layout sections, one `Sample` per patient.

    Args:
      root: the dataset folder (holding ``ST-cnts``, ``ST-spotfiles``, ``ST-imgs``).
      sections: section ids (``"C3"``) or whole patients (``"C"``); None = every section with
        a count file.
      images_only: leave out (and log) sections without an image before reading their counts.
      dropped: filled with {patient: {section: why}} of the patients left with no section.

    Returns:
      Samples sorted by patient id, sections by section number. Sections without an image
      have ``image_path=None`` (logged).
    """
    root = Path(root)
    available = available_sections(root)
    if sections is None:
        names = available
    else:
        names = []
        for s in sections:
            if _SECTION_RE.match(s):
                names.append(s)
            elif re.fullmatch(r"[A-Za-z]+", s):
                found = [a for a in available if parse_section_id(a)[0] == s]
                if not found:
                    raise DataError(f"{root / 'ST-cnts'}: no count file of patient {s!r}")
                names.extend(found)
            else:
                parse_section_id(s)  # raises with the expected form
        names = sorted(dict.fromkeys(names), key=parse_section_id)

    no_image = [n for n in names if find_image(root, n) is None]
    left_out: dict[str, dict[str, str]] = {}
    if no_image:
        if images_only:
            logger.warning("HER2ST %s: sections without an image left out: %s", root,
                           ", ".join(no_image))
            names = [n for n in names if n not in no_image]
            for n in no_image:
                patient = parse_section_id(n)[0]
                left_out.setdefault(patient, {})[n] = (
                    f"no image in {root / 'ST-imgs' / patient / n}")
        else:
            logger.warning("HER2ST %s: sections without an image (counts only): %s", root,
                           ", ".join(no_image))

    by_patient: dict[str, list[Section]] = {}
    for n in names:
        by_patient.setdefault(parse_section_id(n)[0], []).append(read_section(root, n))
    if dropped is not None:
        dropped.update({p: v for p, v in left_out.items() if p not in by_patient})
    return [Sample(sample_id=p, sections=by_patient[p], left_out=left_out.get(p, {}))
            for p in sorted(by_patient)]
