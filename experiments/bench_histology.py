"""CPU and wall time of the histology features of HER2ST patient C (C2-C6) and B4, no caching:

    python experiments/bench_histology.py     (from the repository root; data in ../shared/data/her2st)
"""
import time, cv2, pandas as pd, glob
from asign_jax.config import base_config
from asign_jax.features.histology import HistologyExtractor
from asign_jax.preprocess.tiles import assign_tiles
c = base_config(); ex = HistologyExtractor(c.features)
tot_w = tot_c = rd_c = 0.0
for sec, img in [("B4","B/B4/*.jpg"),("C2","C/C2/*.jpg"),("C3","C/C3/*.jpg"),("C4","C/C4/*.jpg"),("C5","C/C5/*.jpg"),("C6","C/C6/*.jpg")]:
    c0 = time.process_time()
    im = cv2.cvtColor(cv2.imread(glob.glob("../shared/data/her2st/ST-imgs/" + img)[0]), cv2.COLOR_BGR2RGB)
    rd_c += time.process_time() - c0
    sp = pd.read_csv(f"../shared/data/her2st/ST-spotfiles/{sec}_selection.tsv", sep="\t")
    xy = sp[["pixel_x", "pixel_y"]].values
    ro, _ = assign_tiles(xy, 512); go, _ = assign_tiles(xy, 1024)
    w0, c0 = time.time(), time.process_time()
    ex.describe(sec, im, xy, ro, go, c.data)
    tot_w += time.time() - w0; tot_c += time.process_time() - c0
print(f"histology features of 6 sections: wall {tot_w:.1f} s, CPU {tot_c:.1f} s (image reading: CPU {rd_c:.1f} s)")
