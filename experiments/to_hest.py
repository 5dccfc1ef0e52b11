"""Converts data the project reads into the HEST-1k layout (one pyramidal TIFF per section).

    python experiments/to_hest.py --config configs/her2st.py --out ../shared/hest_her2st

(``--out`` defaults to ``runs/experiments/to_hest``; ``--root`` overrides ``data.root``.)

Reads the sections of ``--config`` (any ``data.format``; the HER2ST subset by default) WITHOUT
the gene intersection, and writes ``st/<id>.h5ad`` (X raw counts as CSR, the file's genes,
obs_names the spot ids, obsm['spatial'] the spot centres in level-0 px, obs array_col/array_row
= array x/y), ``wsis/<id>.tif`` (level 0 = the image's pixels, lossless zlib tiles; levels
1-3 = the JPEG's own 1/2, 1/4, 1/8 DCT-domain reductions, i.e. what the JPEG path's reduced
decoding gives registration), ``metadata/<id>.json`` (pixel size ``--um_per_px``, default
HER2ST's 0.6875 µm/px; spot diameter / inter-spot distance of the format's lattice;
``patient`` = the sample id; ``section_order`` = the layer) and ``HEST_v1_asign.csv``.
Section ids keep their names (C2, ..., B4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from asign_jax import entry
from asign_jax.data import her2st, pyramid, slide
from asign_jax.data.image import jpeg_reductions, read_rgb
from asign_jax.data.lattice import DIAMETER_UM, FORMAT_KIND, PITCH_UM
from asign_jax.data.loaders import parse_section_list
from asign_jax.errors import ConfigError


def write_section(out: Path, sid: str, patient: str, layer: int, section, um_per_px: float,
                  kind: str) -> dict:
    import anndata
    import scipy.sparse as sp
    obs = pd.DataFrame({"array_col": section.array_xy[:, 0], "array_row": section.array_xy[:, 1],
                        "in_tissue": 1}, index=pd.Index([str(v) for v in section.spot_ids], dtype=object))
    var = pd.DataFrame(index=pd.Index([str(g) for g in section.genes], dtype=object))
    ad = anndata.AnnData(X=sp.csr_matrix(np.asarray(section.counts, np.float32)), obs=obs,
                         var=var)
    ad.obsm["spatial"] = np.asarray(section.pixel_xy, np.float64)
    (out / "st").mkdir(parents=True, exist_ok=True)
    ad.write_h5ad(out / "st" / f"{sid}.h5ad")
    img = read_rgb(section.image_path)
    pyramid.write_pyramid_tiff(out / "wsis" / f"{sid}.tif", img, um_per_px,
                             levels=jpeg_reductions(Path(section.image_path)))
    meta = {"id": sid, "patient": patient, "section_order": layer, "st_technology":
            "Spatial Transcriptomics" if kind == "square" else "Visium",
            "pixel_size_um_estimated": um_per_px, "spot_diameter": DIAMETER_UM[kind],
            "inter_spot_dist": PITCH_UM[kind], "fullres_px_width": int(img.shape[1]),
            "fullres_px_height": int(img.shape[0]), "organ": "Breast",
            "source_image": str(section.image_path)}
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    (out / "metadata" / f"{sid}.json").write_text(json.dumps(meta, indent=1))
    return meta


def convert(cfg, out, um_per_px: float, root: str = "") -> Path:
    """Writes the sections of ``cfg`` (HER2ST layout) under ``out`` in the HEST-1k layout;
    returns the CSV's path."""
    root = root or cfg.data.root
    if cfg.data.format not in ("her2st", "synthetic"):
        raise ConfigError(f"--config data.format={cfg.data.format!r}: only the HER2ST layout "
                          "is converted by this script")
    samples = her2st.read_her2st(root, parse_section_list(cfg.data.sections), images_only=True)
    out = Path(out)
    rows = []
    kind = FORMAT_KIND[cfg.data.format]
    for s in samples:
        for layer, x in enumerate(s.sections):
            rows.append(write_section(out, x.name, s.sample_id, layer, x, um_per_px, kind))
            logging.info("wrote %s (%d spots x %d genes)", x.name, x.n_spots, len(x.genes))
    csv = out / "HEST_v1_asign.csv"
    pd.DataFrame(rows).drop(columns=["source_image"]).to_csv(csv, index=False)
    logging.info("wrote %s", csv)
    return csv


def main(args):
    convert(args.config, args.out, args.um_per_px, args.root)


if __name__ == "__main__":
    entry.run_script(main, "to_hest", config="required",
                     root=("", "data.root override (default: the config's)."),
                     um_per_px=(slide.HER2ST_UM_PER_PX, "Pixel size written to the metadata."))
