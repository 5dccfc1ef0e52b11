"""Reader for the HEST-1k layout (Jaume et al. 2024; ``data.format = "hest"``).

Layout under ``root``::

    st/<id>.h5ad          AnnData: X spots x genes raw counts (dense or sparse), var_names the
                          genes, obs_names the spot barcodes, obsm['spatial'] (N, 2) spot centres
                          (x = column, y = row) in level-0 px of the slide, optionally
                          obs['array_col'], obs['array_row'] (grid position; absent = the pixel
                          centres) and obs['in_tissue'] (rows with 0 are left out)
    wsis/<id>.tif         the pyramidal TIFF of the H&E slide
    metadata/<id>.json    pixel size (``pixel_size_um_estimated``, else
                          ``pixel_size_um_embedded``), ``spot_diameter`` and ``inter_spot_dist``
                          (µm), ``patient``, ``st_technology``, ...
    HEST_v1_*.csv         one row per sample: ``id``, ``patient``, ``organ``, ``st_technology``,
                          ... (optional when the ids are given)

Selection: ``data.sections`` lists ids (``"TENX95,TENX99"``) or groups
(``"C:SPA1,SPA2;B:SPA3"``, sample id : ordered ids); ``data.hest_filter`` (``"patient=C,
organ=Breast"``, columns of the metadata CSV) selects the ids when ``data.sections`` is empty.

Order of the consecutive sections of a sample: with groups, as given; otherwise the sections of
one patient (metadata ``patient``; none = one sample per id; samples sorted by id) in the order of the metadata
column ``section_order`` when the json or CSV has one, else the order the ids were listed
(``data.sections``) or of the CSV rows (filter). HEST itself has no section-order field, so a
3D block should be given as a group or with ``section_order``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.data import validate
from asign_jax.data.section import Sample, Section
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TECH_KIND = {"visium": "hex", "visium hd": "square", "st": "square", "spatial transcriptomics":
             "square", "xenium": None}


def metadata_csv(root: Path) -> Optional[Path]:
    """The ``HEST_v1_*.csv`` under ``root`` (newest name), or None."""
    found = sorted(Path(root).glob("HEST_v*.csv"))
    return found[-1] if found else None


def read_metadata(root: Path, sample_id: str) -> dict:
    """``metadata/<id>.json`` as a dict ({} when absent); DataError when unreadable."""
    path = Path(root) / "metadata" / f"{sample_id}.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable HEST metadata json ({e})") from e


def pixel_size(meta: dict) -> Optional[float]:
    """Pixel size (µm/px) from HEST metadata, None when absent."""
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded", "pixel_size_um"):
        v = meta.get(key)
        try:
            if v is not None and float(v) > 0:
                return float(v)
        except (TypeError, ValueError):
            continue
    return None


def lattice_kind(meta: dict) -> Optional[str]:
    """"square" | "hex" | None from ``st_technology``."""
    return TECH_KIND.get(str(meta.get("st_technology", "")).strip().lower())


def parse_filter(spec: str) -> dict[str, str]:
    """``"patient=C, organ=Breast"`` -> ``{"patient": "C", "organ": "Breast"}``."""
    out = {}
    for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"data.hest_filter={spec!r}: {part!r} is not 'column=value'")
        out[key.strip()] = value.strip()
    return out


def filter_ids(root: Path, spec: str) -> list[str]:
    """Ids of the metadata CSV rows matching every ``column=value`` of ``spec``, CSV order."""
    csv = metadata_csv(root)
    if csv is None:
        raise DataError(f"{root}: no HEST_v1_*.csv metadata table; list the sample ids in "
                        "data.sections instead of data.hest_filter")
    df = validate.read_table(csv, "HEST metadata table", dtype=str)
    wanted = parse_filter(spec)
    validate.require_columns(df, ("id", *wanted), csv, "HEST metadata table")
    keep = np.ones(len(df), bool)
    for col, value in wanted.items():
        keep &= df[col].astype(str).str.strip().str.lower().to_numpy() == value.lower()
    ids = df["id"].astype(str).str.strip().to_numpy()[keep].tolist()
    if not ids:
        raise DataError(f"{csv}: no sample matches data.hest_filter={spec!r}")
    return ids


def _csv_rows(root: Path) -> dict[str, dict]:
    csv = metadata_csv(root)
    if csv is None:
        return {}
    df = validate.read_table(csv, "HEST metadata table", dtype=str)
    if "id" not in df.columns:
        return {}
    return {str(r["id"]).strip(): {k: v for k, v in r.items() if isinstance(v, str)}
            for r in df.to_dict("records")}


def read_section(root: Path, sample_id: str, meta: Optional[dict] = None,
                 image: Optional[Path] = None) -> Section:
    """One HEST sample as a `Section` (pixel_xy in level-0 px; pixel size from metadata)."""
    import anndata
    import scipy.sparse as sp

    root = Path(root)
    meta = read_metadata(root, sample_id) if meta is None else meta
    path = validate.require_file(root / "st" / f"{sample_id}.h5ad", "HEST spot file")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - h5py / anndata raise many types
        raise DataError(f"{path}: not a readable .h5ad file ({e})") from e
    if "spatial" not in adata.obsm:
        raise DataError(f"{path}: no obsm['spatial'] (spot centres in level-0 px)")
    pixel = np.asarray(adata.obsm["spatial"], np.float64)
    if pixel.ndim != 2 or pixel.shape[1] < 2:
        raise DataError(f"{path}: obsm['spatial'] has shape {pixel.shape}, expected (N, 2)")
    pixel = pixel[:, :2]
    keep = np.ones(adata.n_obs, bool)
    if "in_tissue" in adata.obs.columns:
        keep = np.asarray(adata.obs["in_tissue"]).astype(float) != 0
    if {"array_col", "array_row"} <= set(adata.obs.columns):
        array = np.stack([np.asarray(adata.obs["array_col"], np.float64),
                          np.asarray(adata.obs["array_row"], np.float64)], 1)
    else:
        array = pixel
    x = adata.X
    counts = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)   # sparse kept sparse
    if image is None:
        image = root / "wsis" / f"{sample_id}.tif"
        if not image.is_file():
            raise DataError(f"{image}: HEST slide of sample {sample_id!r} does not exist")
    section = validate.make_section(sample_id, image, np.asarray(adata.obs_names)[keep],
                                    array[keep], pixel[keep], counts[keep],
                                    np.asarray(adata.var_names), source=path)
    section.um_per_px = pixel_size(meta)
    d = meta.get("inter_spot_dist")
    section.pitch_um = float(d) if d not in (None, "") and float(d) > 0 else None
    return section


def read_hest(root, sections=None, hest_filter: str = "") -> list[Sample]:
    """Reads HEST samples into `Sample`s (see the module docstring for selection and order).

    Args:
      root: the HEST folder (``st/``, ``wsis/``, ``metadata/``, ``HEST_v1_*.csv``).
      sections: ids (list) or groups ({sample: [ids]}) parsed from ``data.sections``
        (None = use the filter).
      hest_filter: ``data.hest_filter`` (used when ``sections`` is empty).
    """
    root = Path(root)
    if not (root / "st").is_dir():
        raise DataError(f"{root / 'st'}: HEST spot folder does not exist (is data.root right?)")
    groups: Optional[dict[str, list[str]]] = None
    if isinstance(sections, dict):             # {sample: [ids]} (loaders.parse_section_groups)
        groups = {k: list(v) for k, v in sections.items()}
        ids = [i for g in groups.values() for i in g]
    elif sections:
        ids = [s.strip() for s in sections if s.strip()]
    elif hest_filter:
        ids = filter_ids(root, hest_filter)
    else:
        ids = sorted(p.stem for p in (root / "st").glob("*.h5ad"))
        if not ids:
            raise DataError(f"{root / 'st'}: no .h5ad files")
    rows = _csv_rows(root)
    metas = {i: {**rows.get(i, {}), **read_metadata(root, i)} for i in ids}
    implied = groups is None
    if implied:
        groups = {}
        for i in ids:
            groups.setdefault(str(metas[i].get("patient") or i), []).append(i)
        for g, members in groups.items():
            if all("section_order" in metas[i] for i in members):
                members.sort(key=lambda i: float(metas[i]["section_order"]))
    out = []
    for sample_id, members in (sorted(groups.items()) if implied else groups.items()):
        secs = [read_section(root, i, metas[i]) for i in members]
        logger.info("HEST sample %s: sections %s (order: %s)", sample_id, members,
                    "section_order" if all("section_order" in metas[i] for i in members)
                    else "as listed")
        out.append(Sample(sample_id=sample_id, sections=secs))
    return out


def sample_lattice_kind(root, ids) -> Optional[str]:
    """The lattice kind shared by the samples' technologies (None when unknown or mixed)."""
    kinds = {lattice_kind(read_metadata(Path(root), i)) for i in ids}
    return kinds.pop() if len(kinds) == 1 else None
