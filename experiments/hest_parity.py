"""Checks that a dataset converted by experiments/to_hest.py prepares to the same arrays.

    python experiments/hest_parity.py --a configs/her2st.py --b configs/hest.py \
        --b_root ../shared/hest_her2st --out runs/hest_parity

Loads both configs' samples, prepares them with a pixel-checksum extractor (per patch /
tile: the 3 channel means and a position-weighted pixel sum, so equal features = identical
pixels; no network), and prints the largest absolute difference of every prepared array, the
gene lists, and of the registration thumbnails (and their px maps) of every section. Exit
status 1 when anything differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from asign_jax import entry
from asign_jax.block.sources import load_config
from asign_jax.data.loaders import load_samples
from asign_jax.features.patches import crop_patches
from asign_jax.preprocess.prepare import prepare_samples
from asign_jax.registration.preprocess import load_section
from asign_jax.registration.stack import section_image

KEYS = ("pixel_xy", "array_xy", "spot_counts", "spot_labels", "region_origin", "region_labels",
        "global_origin", "global_labels", "spot_region", "spot_global", "region_global",
        "image_shape", "spot_feats", "region_feats", "global_feats")


class ChecksumExtractor:
    def section_features(self, name, image, spot_xy, region_origin, global_origin, data_cfg,
                         cache_dir=None, spot_ids=None):
        def f(centres, size):
            outs = []
            for i in range(0, len(centres), 64):
                p = crop_patches(image, centres[i:i + 64], size).astype(np.float64)
                w = np.arange(size, dtype=np.float64)[None, :, None, None]
                outs.append(np.c_[p.mean((1, 2)), (p * w).sum((1, 2, 3))])
            return np.concatenate(outs) if outs else np.zeros((0, 4))
        r, g = int(data_cfg.region_size), int(data_cfg.global_size)
        out = {"spot_feats": f(np.asarray(spot_xy), int(data_cfg.spot_size)),
               "region_feats": f(np.asarray(region_origin) + r // 2, r),
               "global_feats": f(np.asarray(global_origin) + g // 2, g)}
        for k in ("region", "global"):
            out[f"{k}_tokens"] = out[f"{k}_feats"][:, None]
        return out


def _config(path, root):
    c = load_config(path)
    if root:
        c.data.root = root
    return c


def parity(args) -> int:
    """Prints the comparison; returns the number of differing samples / sections."""
    prepared = {}
    for tag, cfg_path, root in (("a", args.a, args.a_root), ("b", args.b, args.b_root)):
        cfg = _config(cfg_path, root)
        prepared[tag] = prepare_samples(load_samples(cfg), cfg, Path(args.out) / tag,
                                        extractor=ChecksumExtractor())
        long_side = int(cfg.registration.long_side)
    bad = 0
    pa, pb = prepared["a"], prepared["b"]
    print(f"samples a {[p.sample_id for p in pa]}  b {[p.sample_id for p in pb]}")
    for sa_, sb_ in zip(pa, pb):
        same_genes = list(sa_.genes) == list(sb_.genes)
        bad += not same_genes
        print(f"sample {sa_.sample_id}: genes identical: {same_genes} ({len(sa_.genes)})")
        for sa, sb in zip(sa_.sections, sb_.sections):
            diffs = {}
            for k in KEYS:
                x, y = getattr(sa, k), getattr(sb, k)
                if x is None or y is None:
                    diffs[k] = "none" if x is None and y is None else "MISSING"
                    continue
                x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
                diffs[k] = float(np.abs(x - y).max()) if x.shape == y.shape and x.size else (
                    0.0 if x.shape == y.shape else f"shape {x.shape} vs {y.shape}")
            ia = load_section(sa.name, section_image(sa), long_side)
            ib = load_section(sb.name, section_image(sb), long_side)
            diffs["thumbnail"] = (float(np.abs(ia.rgb.astype(int) - ib.rgb.astype(int)).max())
                                  if ia.rgb.shape == ib.rgb.shape else "shape")
            diffs["to_small"] = float(np.abs(ia.to_small - ib.to_small).max())
            diffs["tissue_mask"] = int((ia.mask != ib.mask).sum()) if ia.mask.shape == \
                ib.mask.shape else "shape"
            nz = {k: v for k, v in diffs.items() if v not in (0.0, 0, "none")}
            bad += bool(nz)
            print(f"  {sa.name} vs {sb.name} (scale {sb.image_scale}): "
                  + ("all identical" if not nz else f"DIFFER {nz}"))
    print("PARITY OK" if not bad else f"PARITY FAILED ({bad})")
    return bad


def main(args):
    if parity(args):
        sys.exit(1)


if __name__ == "__main__":
    entry.run_script(main, "hest_parity", config="none",
                     a=("configs/her2st.py", "First config file."),
                     b=("configs/hest.py", "Second config file (the converted layout)."),
                     a_root=("", "data.root of the first (default: its config's)."),
                     b_root=("", "data.root of the second (default: its config's)."))
