"""The block's 3D expression volume as AnnData (``evaluation.spatial_data`` convention).

``volume.h5ad``: every spot of every section. X = imputed log-normalised expression (the
normalisation of ``uns["normalization"]``); measured spots keep their measured values (X and
``layers["measured"]``, NaN elsewhere) and ``obs["measured"]``; ``layers["network"]`` /
``layers["propagation"]`` are ASIGN's two halves (p_s, p_i; X = p'_s of eq. 6 elsewhere).
obs: section, layer, z, spot_id (original id, or "virtual"), origin (measured | virtual |
given), array_x / array_y (lattice index of the measured grid for virtual spots).
obsm: spatial (the section's own pixels), spatial_3d (registered x, y in reference pixels;
z). uns: genes, normalization, registration_qc, model, lattice, z_unit, spatial (lowres images).

``volume.zarr``: the same table, the spots as circles and the H&E images as SpatialData
(`evaluation.spatialdata_out`; needs the optional spatialdata).

``sections/<section>.h5ad``: that section's spots, with its hires and lowres image in
``uns["spatial"][<section>]`` (what ``sc.pl.spatial`` / ``squidpy.pl.spatial_scatter`` draw).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from asign_jax.evaluation import spatial_data, spatialdata_out

logger = logging.getLogger(__name__)

NORMALIZATION_FORMULA = {
    "asign": "y_g = ln((c_g + 1) / sum_g' (c_g' + 1)) over the selected genes",
    "triplex": "y_g = log1p(1e4 c_g / sum_g' c_g') over the selected genes",
    "stnet": "y_g = ln((1 + c_g) / (n_all_genes + sum over all genes))",
}


@dataclasses.dataclass
class BlockSpots:
    """Per spot of the block (N spots, in graph node order).

    layer (N,) int; spot_id (N,) unique id within its section; origin (N,) "measured" |
    "virtual" | "given"; pixel_xy (N, 2) own-section px; xy (N, 2) registered; array_xy (N, 2);
    measured (N, G) float32 log-normalised labels (NaN where not measured).
    """

    layer: np.ndarray
    spot_id: np.ndarray
    origin: np.ndarray
    pixel_xy: np.ndarray
    xy: np.ndarray
    array_xy: np.ndarray
    measured: np.ndarray

    @property
    def is_measured(self) -> np.ndarray:
        return self.origin == "measured"


def block_spots(prepared, registered, origins: Sequence[str]) -> BlockSpots:
    """Collects the per-spot arrays of the prepared block; ``origins`` per section."""
    secs = prepared.sections
    g = len(prepared.genes)
    measured = [s.spot_labels if s.labelled else np.full((s.n_spots, g), np.nan, np.float32)
                for s in secs]
    return BlockSpots(
        layer=np.concatenate([np.full(s.n_spots, l) for l, s in enumerate(secs)]),
        spot_id=np.concatenate([s.spot_ids for s in secs]).astype(str),
        origin=np.concatenate([np.full(s.n_spots, o) for s, o in zip(secs, origins)]),
        pixel_xy=np.concatenate([s.pixel_xy for s in secs]),
        xy=np.concatenate(registered.spot_xy).astype(np.float64),
        array_xy=np.concatenate([s.array_xy for s in secs]),
        measured=np.concatenate(measured).astype(np.float32))


def _qc_uns(qc: dict) -> dict:
    """The QC dict in an h5ad-writable form (no lists of dicts, no None)."""
    out = {"reference": str(qc["reference"])}
    for s in qc["sections"]:
        out[s["name"]] = {"method": str(s["method"]),
                          "inliers": -1 if s["inliers"] is None else int(s["inliers"]),
                          **{k: float("nan") if s[k] is None else float(s[k])
                             for k in ("dice_before", "dice_after")}}
    return out


def volume_adata(spots: BlockSpots, preds: dict, genes, section_names, z: Sequence[float],
                 uns: dict):
    """The ``volume.h5ad`` AnnData (module docstring); X keeps measured values exactly."""
    x = np.where(spots.is_measured[:, None], spots.measured, preds["prediction"])
    zz = np.asarray(z, np.float64)[spots.layer]
    adata = spatial_data.make_adata(
        x, genes, section_names, spots.layer, spots.spot_id, spots.pixel_xy,
        np.column_stack([spots.xy, zz]),
        columns={"z": zz, "measured": spots.is_measured, "origin": spots.origin,
                 "array_x": spots.array_xy[:, 0], "array_y": spots.array_xy[:, 1]},
        layers={"measured": spots.measured,
                **{k: v for k, v in preds.items() if k != "prediction"}})
    adata.obs["spot_id"] = spatial_data.str_column(
        np.where(spots.origin == "virtual", "virtual", spots.spot_id), adata.obs_names)
    adata.uns.update(uns)
    return adata


def write_outputs(out: Path, spots: BlockSpots, preds: dict, genes, prepared, z,
                  qc: dict, model_info: dict, lattices: dict, normalization: str,
                  thickness_um, affines=None) -> dict:
    """Writes ``volume.h5ad``, ``sections/<section>.h5ad`` and ``volume.zarr`` (SpatialData,
    `evaluation.spatialdata_out`; skipped with one line without spatialdata; ``affines``
    (L, 3, 3) section px -> reference px); returns {what: path} and the per-section libraries
    (for the figures)."""
    out = Path(out)
    names = [s.name for s in prepared.sections]
    libraries = {}
    for s in tqdm(prepared.sections, desc="section images", unit="section"):
        libraries[s.name] = spatial_data.spatial_library(
            s.image_path, lattices[s.name].spot_diameter, hires=True,
            image_scale=float(getattr(s, "image_scale", 1.0)))
    uns = {"genes": np.asarray([str(g) for g in genes], dtype=object),
           "normalization": {"method": normalization,
                             "formula": NORMALIZATION_FORMULA.get(normalization, "")},
           "registration_qc": _qc_uns(qc),
           "model": {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                     for k, v in model_info.items()},
           "lattice": {n: {"kind": l.kind, "pitch_px": l.pitch,
                           "spot_diameter_px": l.spot_diameter, "um_per_px": l.um_per_px}
                       for n, l in lattices.items()},
           "z_unit": "um" if thickness_um else "layer",
           "spatial_3d_unit": "x, y: reference-section pixels (" + names[qc_reference(qc, names)]
                              + "); z: " + ("um" if thickness_um else "layer index")}
    adata = volume_adata(spots, preds, genes, names, z, uns)
    adata.uns["spatial"] = {n: {**lib, "images": {"lowres": lib["images"]["lowres"]}}
                            for n, lib in libraries.items()}
    written = {"volume": out / "volume.h5ad"}
    adata.write_h5ad(written["volume"])
    (out / "sections").mkdir(parents=True, exist_ok=True)
    for l, n in enumerate(tqdm(names, desc="section files", unit="section")):
        sub = adata[adata.obs["layer"].to_numpy() == l].copy()
        sub.obs_names = pd.Index(spots.spot_id[spots.layer == l].astype(object), dtype=object)
        sub.uns["spatial"] = {n: libraries[n]}
        written[n] = out / "sections" / f"{n}.h5ad"
        sub.write_h5ad(written[n])
    zarr_path = spatialdata_out.write_volume_zarr(
        out / "volume.zarr", adata, prepared.sections, affines, z,
        {n: l.spot_diameter for n, l in lattices.items()},
        z_unit="um" if thickness_um else "layer")
    if zarr_path is not None:
        written["zarr"] = zarr_path
    return written, libraries


def qc_reference(qc: dict, names) -> int:
    return list(names).index(qc["reference"]) if qc["reference"] in names else len(names) // 2
