"""Peak memory of reading and preparing a full-size synthetic Visium HD section.

    python experiments/visium_hd_memory.py --out /tmp/vhd --bins 500000 --genes 18000

``--write`` (default on when the folder is absent) writes ``<out>/S1/binned_outputs/
square_008um/`` (10x HDF5 bins x genes, CSC like Space Ranger, ``--nnz_per_bin`` non-zero
genes per bin drawn with a skewed gene popularity; ``spatial/tissue_positions.parquet`` on a
square 8 µm lattice; ``scalefactors_json.json`` with ``--um_per_px``; genes drawn with
replacement, so a bin has up to ``--nnz_per_bin`` distinct genes) and a pyramidal TIFF
(``<out>/S1/S1_full_image.tif``) covering the bins. Then, in this process, it reads the
section with ``data.format = "visium_hd"`` and prepares it (gene selection over all genes on
the sparse counts, densifying the ``--n_genes`` selected, normalisation, region/global tiles
and their labels) with a stub feature extractor (zeros: ResNet-50 on 500k patches is not a
CPU job; feature memory is per batch anyway) and prints the peak RSS (ru_maxrss) after each
step.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

from asign_jax import entry


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def write(out: Path, bins: int, genes: int, nnz_per_bin: int, um_per_px: float, seed: int = 0):
    import h5py
    import pandas as pd

    from asign_jax.data.pyramid import write_pyramid_tiff
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(bins)))
    folder = out / "S1" / "binned_outputs" / "square_008um"
    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    k = np.arange(bins)
    row, col = k // side, k % side
    pitch_px = 8.0 / um_per_px
    margin = 20.0
    barcodes = np.array([f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(row, col)], dtype="S")
    pd.DataFrame({"barcode": barcodes.astype(str), "in_tissue": 1, "array_row": row,
                  "array_col": col, "pxl_row_in_fullres": margin + pitch_px * row,
                  "pxl_col_in_fullres": margin + pitch_px * col}).to_parquet(
        folder / "spatial" / "tissue_positions.parquet")
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"microns_per_pixel": um_per_px, "bin_size_um": 8.0, "spot_diameter_fullres": pitch_px,
         "tissue_hires_scalef": 0.1}))
    # CSC (genes x bins): per bin nnz_per_bin distinct genes, Zipf-like popularity
    pop = 1.0 / np.arange(1, genes + 1) ** 0.8
    pop /= pop.sum()
    indptr = np.arange(bins + 1, dtype=np.int64) * nnz_per_bin
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = barcodes
        m["shape"] = np.array([genes, bins], np.int64)
        m["indptr"] = indptr
        d = m.create_dataset("data", (bins * nnz_per_bin,), np.int32)
        ind = m.create_dataset("indices", (bins * nnz_per_bin,), np.int64)
        chunk = 50000
        for s in range(0, bins, chunk):
            n = min(chunk, bins - s)
            # with replacement (vectorised); a repeated gene in a bin is summed by the reader
            g = np.sort(rng.choice(genes, (n, nnz_per_bin), p=pop), axis=1)
            ind[s * nnz_per_bin:(s + n) * nnz_per_bin] = g.reshape(-1)
            d[s * nnz_per_bin:(s + n) * nnz_per_bin] = rng.integers(1, 6, n * nnz_per_bin)
        feats = m.create_group("features")
        feats["name"] = np.array([f"GENE{i:05d}" for i in range(genes)], dtype="S")
        feats["id"] = np.array([f"ENSG{i:011d}" for i in range(genes)], dtype="S")
        feats["feature_type"] = np.array([b"Gene Expression"] * genes)
    size = int(2 * margin + pitch_px * side) + 1
    img = np.full((size, size, 3), 230, np.uint8)
    img[::7, :, 0] = 120
    write_pyramid_tiff(out / "S1" / "S1_full_image.tif", img, um_per_px)


class ZeroFeatures:
    def section_features(self, name, image, spot_xy, region_origin, global_origin, data_cfg,
                         cache_dir=None, spot_ids=None):
        z = lambda n: np.zeros((len(n), 8), np.float32)  # noqa: E731
        return {"spot_feats": z(spot_xy), "region_feats": z(region_origin),
                "region_tokens": z(region_origin)[:, None], "global_feats": z(global_origin),
                "global_tokens": z(global_origin)[:, None]}


def main(args):
    out = Path(args.out)
    if args.write or not (out / "S1").is_dir():
        t = time.perf_counter()
        write(out, args.bins, args.genes, args.nnz_per_bin, args.um_per_px)
        print(f"wrote {out} in {time.perf_counter() - t:.0f} s (writer peak RSS "
              f"{peak_gib():.2f} GiB); run again without --write to measure reading")
        return
    from asign_jax.config import base_config
    from asign_jax.data.loaders import load_samples
    from asign_jax.preprocess.prepare import prepare_samples
    c = base_config()
    c.data.format, c.data.root, c.data.n_genes = "visium_hd", str(out), args.n_genes
    print(f"start: peak RSS {peak_gib():.2f} GiB")
    t = time.perf_counter()
    samples = load_samples(c)
    s = samples[0].sections[0]
    print(f"read {s.n_spots} bins x {len(s.genes)} genes ({s.counts.nnz} non-zeros, "
          f"{type(s.counts).__name__}) in {time.perf_counter() - t:.0f} s: peak RSS "
          f"{peak_gib():.2f} GiB")
    t = time.perf_counter()
    prepared = prepare_samples(samples, c, out / "work", extractor=ZeroFeatures())
    p = prepared[0].sections[0]
    print(f"prepared {p.n_spots} spots x {p.spot_labels.shape[1]} genes, "
          f"{len(p.region_origin)} region / {len(p.global_origin)} global tiles in "
          f"{time.perf_counter() - t:.0f} s: peak RSS {peak_gib():.2f} GiB")


if __name__ == "__main__":
    entry.run_script(main, "visium_hd_memory", config="none",
                     bins=(500_000, "Bins of the synthetic section."),
                     genes=(18_000, "Genes of the synthetic section."),
                     nnz_per_bin=(60, "Non-zero genes per bin."),
                     um_per_px=(1.0, "Pixel size of the written image."),
                     n_genes=(250, "Genes kept by the preparation."),
                     write=(False, "Write the section first (default when --out has none)."))
