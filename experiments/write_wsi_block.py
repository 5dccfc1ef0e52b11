"""A block of whole-slide-sized pyramidal TIFFs and the same block as JPEGs, imputed both ways.

    python experiments/write_wsi_block.py --config configs/her2st.py --impute

Writes under ``--out`` (default ``runs/experiments/write_wsi_block``), from the shared HER2ST
patient C (``--sections``, default C2-C5, ``--measured`` C3 with ST, the others image-only):

* ``jpeg/<S>.jpg``: each section's JPEG pasted into a ``--canvas`` x ``--canvas`` px frame
  filled with its own background colour, at the working resolution ``data.um_per_px`` (the
  HER2ST JPEGs' own pixels: 0.6875 µm/px), and ``jpeg.yaml`` (spots in those pixels);
* ``wsi/<S>.tif``: the same frame as a tiled pyramidal TIFF ``factor = data.um_per_px /
  --um_per_px`` times finer (level 0 at ``--um_per_px``, resolution tags set), written tile by
  tile (`data.pyramid.write_upsampled_pyramid`: levels finer than the JPEG are its
  nearest-neighbour upsampling, the level of the JPEG's size is the decoded JPEG, coarser
  levels are the JPEG's own DCT reductions when the factor is a power of two), and
  ``wsi.yaml`` (spots in level-0 px).

The default ``--um_per_px`` 0.171875 = 0.6875 / 4 makes level 2 exactly the JPEG's pixels, so
the two blocks must impute to the same numbers; at 0.25 µm/px (factor 2.75) the slide is read
at level 1 (0.5 µm/px) and resized, so the numbers are close, not equal. ``--canvas`` 0 =
the smallest frame whose level 0 is at least 60,000 px a side.

``--impute`` then runs ``python -m asign_jax.impute`` on both manifests (``--config``, one
child process each, peak RSS of each from ``os.wait4``), and compares the two ``volume.h5ad``
(spot ids, coordinates, X). Results: ``<out>/report.json``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from asign_jax import entry
from asign_jax.data import her2st, pyramid
from asign_jax.data.image import header_size, jpeg_reductions, read_rgb
from asign_jax.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def frame(img: np.ndarray, canvas: int, off: np.ndarray) -> np.ndarray:
    """``img`` at (x, y) offset ``off`` in a canvas x canvas frame of its border's median
    colour."""
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.empty((canvas, canvas, 3), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    out[off[1]:off[1] + h, off[0]:off[0] + w] = img
    return out


def write_spots(src: Path, dst: Path, offset: np.ndarray, factor: float) -> None:
    """The HER2ST selection file with pixel_x/y moved into the frame and scaled to the slide."""
    import pandas as pd
    sel = pd.read_csv(src, sep="\t")
    sel["pixel_x"] = (sel["pixel_x"] + offset[0]) * factor
    sel["pixel_y"] = (sel["pixel_y"] + offset[1]) * factor
    dst.parent.mkdir(parents=True, exist_ok=True)
    sel.to_csv(dst, sep="\t", index=False)


def manifest(path: Path, images: dict, measured: str, counts: Path, spots: Path,
             um_per_px: float = 0.0) -> Path:
    """The block manifest; both blocks are the sample ``block``: the validation blocks of the
    known layer are seeded by the sample id, so another id would train another model."""
    rows = []
    for name, image in images.items():
        row = f"  - name: {name}\n    image: {image}\n"
        if um_per_px:
            row += f"    um_per_px: {um_per_px!r}\n"
        if name == measured:
            row += f"    st: {{format: her2st, counts: {counts}, spots: {spots}}}\n"
        rows.append(row)
    path.write_text("sample: block\nsections:\n" + "".join(rows))
    return path


def write_block(config, out: Path, sections: list[str], measured: str, um_per_px: float,
                canvas: int, tile: int, keep: bool = False) -> dict:
    """Writes the two blocks (module docstring); returns {"jpeg": manifest, "wsi": manifest,
    "factor", "canvas", "seconds", "bytes"}."""
    root = Path(config.data.root)
    factor = float(config.data.um_per_px) / float(um_per_px)
    canvas = canvas or int(math.ceil(60000 / factor))
    power_of_two = factor >= 1 and float(factor).is_integer() and (int(factor) & (int(factor) - 1)) == 0
    jpegs, tifs, info = {}, {}, {"factor": factor, "canvas": canvas, "seconds": {}, "bytes": {}}
    for name in sections:
        t = time.perf_counter()
        src = her2st.find_image(root, name)
        if src is None:
            raise DataError(f"{root}: no image for section {name}")
        h, w = header_size(src)
        if canvas < max(h, w):
            raise ConfigError(f"--canvas {canvas} is smaller than the {w} x {h} px section {name}")
        off = np.array([(canvas - w) // 2, (canvas - h) // 2])   # centred
        jpegs[name] = (out / "jpeg" / f"{name}.jpg").resolve()
        tifs[name] = (out / "wsi" / f"{name}.tif").resolve()
        if jpegs[name].is_file() and tifs[name].is_file() and keep:
            print(f"{name}: kept {tifs[name]} and {jpegs[name]} (--keep)", flush=True)
        else:
            img = frame(read_rgb(src), canvas, off)
            jpegs[name].parent.mkdir(parents=True, exist_ok=True)
            import cv2
            cv2.imwrite(str(jpegs[name]), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            del img
            decoded = read_rgb(jpegs[name])
            pyramid.write_upsampled_pyramid(
                tifs[name], decoded, factor, um_per_px, tile=tile,
                reductions=jpeg_reductions(jpegs[name]) if power_of_two else None)
            del decoded
        if name == measured:
            sel = root / "ST-spotfiles" / f"{name}_selection.tsv"
            write_spots(sel, (out / "jpeg" / sel.name).resolve(), off, 1.0)
            write_spots(sel, (out / "wsi" / sel.name).resolve(), off, factor)
        info["seconds"][name] = round(time.perf_counter() - t, 1)
        info["bytes"][name] = tifs[name].stat().st_size
        print(f"{name}: {tifs[name]} ({info['bytes'][name] / 2 ** 30:.2f} GiB, level 0 "
              f"{round(canvas * factor)} px a side at {um_per_px} µm/px) and {jpegs[name]} "
              f"({canvas} px), {info['seconds'][name]:.0f} s", flush=True)
    counts = root / "ST-cnts" / f"{measured}.tsv.gz"
    sel = f"{measured}_selection.tsv"
    info["jpeg"] = str(manifest(out / "jpeg.yaml", jpegs, measured, counts.resolve(),
                                (out / "jpeg" / sel).resolve()))
    info["wsi"] = str(manifest(out / "wsi.yaml", tifs, measured, counts.resolve(),
                               (out / "wsi" / sel).resolve()))
    return info


def run_impute(manifest_path: str, out: Path, config_path: str, overrides=()) -> dict:
    """``python -m asign_jax.impute`` in a child process; its wall time and peak RSS."""
    cmd = [sys.executable, "-m", "asign_jax.impute", "--manifest", manifest_path,
           "--out", str(out), "--config", config_path, *overrides]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise DataError(f"{' '.join(cmd)}: exit status {proc.returncode}")
    return {"seconds": round(time.perf_counter() - t, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2), "out": str(out)}


def compare(a: Path, b: Path) -> dict:
    import anndata as ad
    va, vb = ad.read_h5ad(a / "volume.h5ad"), ad.read_h5ad(b / "volume.h5ad")
    same_ids = list(va.obs_names) == list(vb.obs_names)
    out = {"spots": [int(va.n_obs), int(vb.n_obs)], "same_spot_ids": same_ids}
    if same_ids:
        out["max_abs_diff_xy"] = float(np.abs(va.obsm["spatial"] - vb.obsm["spatial"]).max())
        out["max_abs_diff_X"] = float(np.abs(np.asarray(va.X) - np.asarray(vb.X)).max())
        out["X_equal"] = bool(np.array_equal(va.X, vb.X))
    return out


def main(args):
    if args.config is None:
        raise ConfigError("--config is required (configs/her2st.py: the shared HER2ST data)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.measured not in sections:
        raise ConfigError(f"--measured {args.measured!r} is not in --sections {sections}")
    report = {"block": write_block(args.config, out, sections, args.measured, args.um_per_px,
                                   args.canvas, args.tile, args.keep)}
    if args.impute:
        from absl import flags
        from ml_collections import config_flags
        config_path = config_flags.get_config_filename(flags.FLAGS["config"])
        report["impute"] = {k: run_impute(report["block"][k], out / f"impute_{k}", config_path)
                            for k in ("jpeg", "wsi")}
        report["compare"] = compare(out / "impute_jpeg", out / "impute_wsi")
        print(json.dumps(report["compare"], indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    entry.run_script(
        main, "write_wsi_block", config="required",
        sections=("C2,C3,C4,C5", "Sections of the block, in order."),
        measured=("C3", "The section with ST."),
        um_per_px=(0.171875, "Level-0 µm/px of the TIFFs."),
        canvas=(0, "Frame side, working px (0 = level 0 >= 60,000 px)."),
        tile=(256, "TIFF tile side, px."),
        keep=(False, "Keep a section's TIFF and JPEG when both exist (same flags)."),
        impute=(False, "Run impute on both blocks and compare."))
