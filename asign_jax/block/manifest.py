"""The block manifest: the ordered sections of one tissue block, their images and ST data.

YAML (``.yaml`` / ``.yml``)::

    sample: C                      # optional; default: the manifest's file name
    root: ..                       # optional base of relative paths, itself relative to this
                                   # file's folder; default: this file's folder
    thickness_um: 3                # optional section thickness: z in um (else the layer index)
    config: configs/her2st.py      # optional config file (used when --config is not given)
    train_with: [b4.yaml]          # optional extra labelled data (as --train_with)
    sections:                      # physical order, first = top
      - name: C2
        image: ST-imgs/C/C2/HE.jpg
        st:                        # optional: this section was measured
          format: her2st           # her2st | stnet | visium | generic | hest
          counts: ST-cnts/C2.tsv.gz
          spots: ST-spotfiles/C2_selection.tsv
      - name: C3
        image: ST-imgs/C/C3/HE.jpg # image only: virtual spots are placed on the tissue
      - name: C4
        image: ST-imgs/C/C4/HE.jpg
        spots_from: my_spots/C4.csv  # image only, spot centres given by the user (x, y px)
      - name: C5
        image: slides/C5.svs       # a whole-slide image: read by region at the working
        um_per_px: 0.25            # resolution; level-0 µm/px (default: the slide's metadata)

``st`` per format: ``her2st``: ``counts`` + ``spots`` (``ST-cnts/<S>.tsv.gz``,
``ST-spotfiles/<S>_selection.tsv``), or ``root`` (a HER2ST folder: both found by name);
``stnet``: ``counts`` (``.spots.txt`` beside it unless ``spots`` is given); ``visium``:
``path`` (the Space Ranger section folder); ``hest``: ``root`` (a HEST-1k folder; the section
``name`` is the HEST id, ``st/<name>.h5ad`` + ``metadata/<name>.json``; the image may be
``wsis/<name>.tif``); ``generic``: ``counts`` (tab-separated spots x genes,
first column the spot id) + ``spots`` (csv: ``id, x, y`` in image pixels, optional
``array_x, array_y``).

A HER2ST folder can stand for the whole list: ``layout: {format: her2st, root: DIR,
sections: [C2, C3, ...]}``; a section whose count file is absent is image-only.

Pixel sizes: spot coordinates (ST files, ``spots_from``) are in the image's level-0 px. A
section's level-0 µm/px is its ``um_per_px``, else ``data.slide_um_per_px``, else the HEST
metadata or the slide's own (SVS / TIFF tags); a JPEG / PNG without any is taken at the
working resolution ``data.um_per_px``; a slide without any stops with one line.

CSV: a header with ``name, image`` and any of ``format, counts, spots, path, root,
spots_from, um_per_px``; an empty ``format`` = image-only. Lines starting with ``#`` are skipped.

Every problem is a `DataError` naming the manifest, the section and the file.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Optional

from asign_jax.data import her2st, slide
from asign_jax.data.lattice import FORMAT_KIND
from asign_jax.errors import DataError

ST_FORMATS = ("her2st", "stnet", "visium", "generic", "hest")
TOP_KEYS = {"sample", "root", "thickness_um", "config", "train_with", "sections", "layout"}
SECTION_KEYS = {"name", "image", "st", "spots_from", "um_per_px"}
ST_KEYS = {"format", "counts", "spots", "path", "root"}
CSV_COLUMNS = ("name", "image", "format", "counts", "spots", "path", "root", "spots_from",
               "um_per_px")


@dataclasses.dataclass(frozen=True)
class StSource:
    """Where a measured section's ST data is: format + files (resolved, existing)."""

    format: str
    counts: Optional[Path] = None
    spots: Optional[Path] = None
    path: Optional[Path] = None

    @property
    def lattice_kind(self) -> str:
        """"hex" for Visium, "square" for ST arrays (generic: inferred from the spots)."""
        return FORMAT_KIND.get(self.format, "")


@dataclasses.dataclass(frozen=True)
class SectionEntry:
    """One manifest row: name, image, and its ST data or user-given spots (or neither)."""

    name: str
    image: Path
    st: Optional[StSource] = None
    spots_from: Optional[Path] = None
    where: str = ""
    um_per_px: float = 0.0          # level-0 µm/px given in the manifest (0 = not given)

    @property
    def measured(self) -> bool:
        return self.st is not None


@dataclasses.dataclass(frozen=True)
class BlockManifest:
    """A parsed manifest: sections in physical order (index = layer)."""

    path: Path
    sample_id: str
    sections: tuple[SectionEntry, ...]
    thickness_um: Optional[float] = None
    config: Optional[Path] = None
    train_with: tuple[Path, ...] = ()

    @property
    def measured(self) -> list[int]:
        """Layers that carry ST."""
        return [i for i, s in enumerate(self.sections) if s.measured]

    def z(self) -> list[float]:
        """z of each layer: layer x thickness (um) when a thickness is given, else the layer."""
        t = 1.0 if self.thickness_um is None else float(self.thickness_um)
        return [i * t for i in range(len(self.sections))]


def _file(base: Path, value, where: str, what: str, *, folder: bool = False) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {what} must be a path, got {value!r}")
    p = Path(value.strip()).expanduser()
    p = Path(os.path.normpath(p if p.is_absolute() else base / p))
    ok = p.is_dir() if folder else p.is_file()
    if not ok:
        raise DataError(f"{where}: {what} {p} does not exist"
                        + (" (or is not a folder)" if folder else ""))
    return p


def _check_image(path: Path, where: str) -> None:
    """Raises DataError when the image's header cannot be read (the pixels are decoded later,
    by readers that name the file too)."""
    from PIL import Image, UnidentifiedImageError

    if not slide.is_plain(path):            # a slide: its header through the slide reader
        try:
            s = slide.open_slide(path)
        except DataError as e:
            raise DataError(f"{where}: image {path} cannot be read ({e})") from e
        s.close()
        return
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{where}: image {path} cannot be read ({e})") from e
    if w < 2 or h < 2:
        raise DataError(f"{where}: image {path} is {w}x{h} px")


def _st_source(base: Path, name: str, spec, where: str) -> StSource:
    if not isinstance(spec, dict):
        raise DataError(f"{where}: 'st' must be a mapping with a 'format', got {spec!r}")
    unknown = set(spec) - ST_KEYS
    if unknown:
        raise DataError(f"{where}: unknown st key(s) {sorted(unknown)}; allowed {sorted(ST_KEYS)}")
    fmt = spec.get("format")
    if fmt not in ST_FORMATS:
        raise DataError(f"{where}: st format {fmt!r}; expected one of {ST_FORMATS}")
    get = lambda k, what, **kw: _file(base, spec[k], where, what, **kw) if spec.get(k) else None
    if fmt == "her2st" and spec.get("root") and not spec.get("counts"):
        root = _file(base, spec["root"], where, "HER2ST folder", folder=True)
        return StSource(fmt, _file(root, f"ST-cnts/{name}.tsv.gz", where, "count file"),
                        _file(root, f"ST-spotfiles/{name}_selection.tsv", where, "spot file"))
    if fmt == "hest":
        if not spec.get("root"):
            raise DataError(f"{where}: a hest section needs 'root' (the HEST-1k folder)")
        root = _file(base, spec["root"], where, "HEST folder", folder=True)
        _file(root, f"st/{name}.h5ad", where, "HEST spot file")
        return StSource(fmt, path=root)
    if fmt == "visium":
        if not spec.get("path"):
            raise DataError(f"{where}: a visium section needs 'path' (the Space Ranger folder)")
        return StSource(fmt, path=get("path", "Visium section folder", folder=True))
    counts = get("counts", "count file")
    if counts is None:
        raise DataError(f"{where}: a {fmt} section needs 'counts'")
    spots = get("spots", "spot file")
    if spots is None and fmt == "stnet":
        spots = _file(counts.parent, counts.name[: -len(".tsv.gz")] + ".spots.txt", where,
                      "spot file")
    if spots is None:
        raise DataError(f"{where}: a {fmt} section needs 'spots'")
    return StSource(fmt, counts, spots)


def _section(base: Path, row: dict, where: str) -> SectionEntry:
    unknown = set(row) - SECTION_KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(SECTION_KEYS)}")
    name = str(row.get("name") or "").strip()
    if not name:
        raise DataError(f"{where}: every section needs a 'name'")
    where = f"{where} ({name!r})"
    if not row.get("image"):
        raise DataError(f"{where}: no 'image'; every section needs its H&E image")
    image = _file(base, row["image"], where, "image")
    _check_image(image, where)
    st = _st_source(base, name, row["st"], where) if row.get("st") else None
    spots_from = _file(base, row["spots_from"], where, "spots_from file") \
        if row.get("spots_from") else None
    if st is not None and spots_from is not None:
        raise DataError(f"{where}: a measured section ('st') takes its spots from its ST data; "
                        "drop 'spots_from'")
    return SectionEntry(name, image, st, spots_from, where, _um_per_px(row.get("um_per_px"), where))


def _um_per_px(value, where: str) -> float:
    if value in (None, ""):
        return 0.0
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: um_per_px must be a number (level-0 µm per px), got "
                        f"{value!r}") from None
    if not (v > 0 and v < 1e3):
        raise DataError(f"{where}: um_per_px must be > 0 (level-0 µm per px), got {v}")
    return v


def _layout(base: Path, spec, where: str) -> list[dict]:
    """``layout: {format: her2st, root, sections}`` -> section rows (count file absent =
    image-only)."""
    if not isinstance(spec, dict) or spec.get("format") != "her2st":
        raise DataError(f"{where}: 'layout' must be {{format: her2st, root: DIR, sections: "
                        f"[...]}}, got {spec!r}")
    root = _file(base, spec.get("root"), where, "layout root", folder=True)
    names = spec.get("sections")
    if not isinstance(names, list) or not names:
        raise DataError(f"{where}: layout 'sections' must be a non-empty list of section ids")
    rows = []
    for n in map(str, names):
        image = her2st.find_image(root, n)
        if image is None:
            raise DataError(f"{where}: section {n!r} has no image under "
                            f"{root / 'ST-imgs' / her2st.parse_section_id(n)[0] / n}")
        row = {"name": n, "image": str(image)}
        if (root / "ST-cnts" / f"{n}.tsv.gz").is_file():
            row["st"] = {"format": "her2st", "root": str(root)}
        rows.append(row)
    return rows


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the manifest: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: a YAML manifest is a mapping with a 'sections' list")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise DataError(f"{path}: unknown key(s) {sorted(unknown)}; allowed {sorted(TOP_KEYS)}")
    return data


def _read_csv(path: Path) -> dict:
    try:
        with open(path, newline="") as f:
            lines = [l for l in f if l.strip() and not l.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest: {e}") from e
    reader = csv.DictReader(lines)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "name" not in cols or "image" not in cols:
        raise DataError(f"{path}: a CSV manifest needs columns 'name' and 'image' (found "
                        f"{cols}); optional {list(CSV_COLUMNS[2:])}")
    unknown = set(cols) - set(CSV_COLUMNS)
    if unknown:
        raise DataError(f"{path}: unknown column(s) {sorted(unknown)}; allowed {list(CSV_COLUMNS)}")
    sections = []
    for r in reader:
        r = {k.strip(): (v or "").strip() for k, v in r.items() if k}
        row = {"name": r["name"], "image": r["image"]}
        if r.get("format"):
            row["st"] = {k: r[k] for k in ST_KEYS if r.get(k)}
        elif any(r.get(k) for k in ("counts", "spots", "path", "root")):
            raise DataError(f"{path}: section {r['name']!r} lists ST files but no 'format'")
        for k in ("spots_from", "um_per_px"):
            if r.get(k):
                row[k] = r[k]
        sections.append(row)
    return {"sections": sections}


def load_manifest(path, *, thickness_um: Optional[float] = None,
                  labelled: bool = False) -> BlockManifest:
    """Parses and checks a YAML or CSV manifest (see the module docstring).

    ``thickness_um`` (e.g. from a flag) overrides the manifest's. Raises DataError on: an
    unreadable manifest, unknown keys, a path that does not exist, an unreadable image,
    duplicate names, fewer than two sections, no section with ST, no section to impute.
    ``labelled=True`` reads a manifest of extra training data instead: every section must
    carry ST (one section is enough).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest does not exist")
    data = _read_csv(path) if path.suffix.lower() == ".csv" else _read_yaml(path)
    base = path.parent
    if data.get("root"):
        base = _file(base, data["root"], str(path), "root", folder=True)
    if ("sections" in data) == ("layout" in data):
        raise DataError(f"{path}: give either 'sections' (a list) or 'layout', not "
                        f"{'both' if 'layout' in data else 'neither'}")
    rows = (_layout(base, data["layout"], f"{path}: layout") if "layout" in data
            else data["sections"])
    if not isinstance(rows, list):
        raise DataError(f"{path}: 'sections' must be a list of sections")
    sections = []
    for i, row in enumerate(rows):
        where = f"{path}: section {i + 1}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a mapping with 'name' and 'image', got {row!r}")
        sections.append(_section(base, row, where))
    names = [s.name for s in sections]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: section name(s) listed twice: {dup}")
    if labelled:
        bare = [s.name for s in sections if not s.measured]
        if bare or not sections:
            raise DataError(f"{path}: extra training data needs ST ('st') on every section; "
                            f"none on {bare or 'any'}")
    elif len(sections) < 2:
        raise DataError(f"{path}: {len(sections)} section(s); a block needs at least two "
                        "(one with ST and one to impute)")
    elif not any(s.measured for s in sections):
        raise DataError(f"{path}: no section carries ST data (an 'st' entry); at least one "
                        "measured section is needed to impute the others")
    elif not any(not s.measured for s in sections):
        raise DataError(f"{path}: every section carries ST data; nothing to impute")
    thick = thickness_um if thickness_um is not None else data.get("thickness_um")
    if thick is not None:
        try:
            thick = float(thick)
        except (TypeError, ValueError):
            raise DataError(f"{path}: thickness_um must be a number, got {thick!r}") from None
        if not thick > 0:
            raise DataError(f"{path}: thickness_um must be > 0, got {thick}")
    train_with = data.get("train_with") or []
    if isinstance(train_with, str):
        train_with = [train_with]
    train = tuple(_file(base, t, str(path), "train_with entry", folder=Path(
        base / t).is_dir()) for t in train_with)
    config = _file(base, data["config"], str(path), "config") if data.get("config") else None
    sample = str(data.get("sample") or path.stem)
    return BlockManifest(path, sample, tuple(sections), thick, config, train)
