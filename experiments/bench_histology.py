"""CPU and wall time of the histology features of HER2ST patient C (C2-C6) and B4, no caching:

    python experiments/bench_histology.py [--root ../shared/data/her2st] [--config configs/her2st.py]

Without ``--config`` the descriptors run with ``base_config()``'s ``features`` block.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import cv2
import pandas as pd

from asign_jax import entry
from asign_jax.config import base_config
from asign_jax.errors import DataError
from asign_jax.features.histology import HistologyExtractor
from asign_jax.preprocess.tiles import assign_tiles

SECTIONS = ("B4", "C2", "C3", "C4", "C5", "C6")


def bench(config, root: Path) -> dict:
    """{"wall", "cpu", "read_cpu"} seconds of describing every section of ``SECTIONS``."""
    ex = HistologyExtractor(config.features)
    tot_w = tot_c = rd_c = 0.0
    for sec in SECTIONS:
        found = glob.glob(str(root / "ST-imgs" / sec[0] / sec / "*.jpg"))
        if not found:
            raise DataError(f"{root / 'ST-imgs' / sec[0] / sec}: no image (--root is the HER2ST "
                            "folder)")
        c0 = time.process_time()
        im = cv2.cvtColor(cv2.imread(found[0]), cv2.COLOR_BGR2RGB)
        rd_c += time.process_time() - c0
        sp = pd.read_csv(root / "ST-spotfiles" / f"{sec}_selection.tsv", sep="\t")
        xy = sp[["pixel_x", "pixel_y"]].values
        ro, _ = assign_tiles(xy, int(config.data.region_size))
        go, _ = assign_tiles(xy, int(config.data.global_size))
        w0, c0 = time.time(), time.process_time()
        ex.describe(sec, im, xy, ro, go, config.data)
        tot_w += time.time() - w0
        tot_c += time.process_time() - c0
    return {"wall": tot_w, "cpu": tot_c, "read_cpu": rd_c}


def main(args):
    t = bench(args.config if args.config is not None else base_config(), Path(args.root))
    print(f"histology features of {len(SECTIONS)} sections: wall {t['wall']:.1f} s, CPU "
          f"{t['cpu']:.1f} s (image reading: CPU {t['read_cpu']:.1f} s)")


if __name__ == "__main__":
    entry.run_script(main, "bench_histology", config="optional",
                     root=("../shared/data/her2st", "The HER2ST folder (ST-imgs, ST-spotfiles)."))
