"""Writes TRIDENT-layout patch-feature files from any encoder the project has.

    python experiments/write_trident.py --config configs/her2st.py \
        [--config.features.encoder=vit --config.features.arch=... --config.features.weights=...] \
        --out runs/experiments/write_trident/her2st

For every imaged section of the config it encodes, with ``config.features``, the patches the
pipeline cuts (spot patches centred on the spots, region and global tiles from their
origins) and writes one folder per patch size, ``<out>/spot_<S>px``, ``region_<R>px``,
``global_<G>px`` (``--out`` defaults to ``runs/experiments/write_trident``), each holding
``<section>.h5`` in TRIDENT's layout (``features`` (N, D), ``coords`` (N, 2) level-0 top-left
px with ``patch_size_level0`` on ``coords``); the encoder's feature cache goes to
``<out>/cache``. Training with ``--config.features.encoder=patch_features
--config.features.patch_features=<the three folders, comma-separated>`` then reads patches
that coincide with the windows, so it must give the direct encoder's numbers (the round trip
in docs/foundation_models.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from asign_jax import entry
from asign_jax.data.loaders import load_samples
from asign_jax.errors import ConfigError
from asign_jax.features.encoders import make_extractor
from asign_jax.features.patch_features import write_trident
from asign_jax.preprocess.tiles import assign_tiles


def level_folders(out, data_cfg) -> dict[str, Path]:
    """{level: <out>/<level>_<side>px} for spot, region, global."""
    out = Path(out)
    return {"spot": out / f"spot_{int(data_cfg.spot_size)}px",
            "region": out / f"region_{int(data_cfg.region_size)}px",
            "global": out / f"global_{int(data_cfg.global_size)}px"}


def write_section(extractor, name: str, image: np.ndarray, spot_xy: np.ndarray, data_cfg,
                  out, spot_ids=None, cache_dir=None) -> dict[str, Path]:
    """Encodes one section's windows and writes its three TRIDENT files; returns their paths."""
    spot_xy = np.asarray(spot_xy, np.float64).reshape(-1, 2)
    region_origin, _ = assign_tiles(spot_xy, int(data_cfg.region_size))
    global_origin, _ = assign_tiles(spot_xy, int(data_cfg.global_size))
    feats = extractor.section_features(name, image, spot_xy, region_origin, global_origin,
                                       data_cfg, cache_dir, spot_ids=spot_ids)
    s = int(data_cfg.spot_size)
    tops = {"spot": (np.round(spot_xy).astype(np.int64) - s // 2, s),
            "region": (region_origin, int(data_cfg.region_size)),
            "global": (global_origin, int(data_cfg.global_size))}
    folders = level_folders(out, data_cfg)
    return {lv: write_trident(folders[lv] / f"{name}.h5", feats[f"{lv}_feats"], tl, side,
                              name=name)
            for lv, (tl, side) in tops.items()}


def main(args):
    config = args.config
    if config.data.format == "synthetic" and not config.data.root:
        raise ConfigError("synthetic data: set --config.data.root to a generated folder")
    out = Path(args.out)
    samples = load_samples(config)
    extractor = make_extractor(config.features)
    sections = [x for s in samples for x in s.sections if x.has_image]
    for x in tqdm(sections, desc="write_trident", unit="section"):
        image = x.read_image()
        write_section(extractor, x.name, image, x.pixel_xy, config.data, out,
                      spot_ids=x.spot_ids, cache_dir=out / "cache")
    dirs = ",".join(str(p) for p in level_folders(out, config.data).values())
    print(f"wrote {len(sections)} sections; train with --config.features.encoder="
          f"patch_features --config.features.patch_features={dirs}")


if __name__ == "__main__":
    entry.run_script(main, "write_trident", config="required")
