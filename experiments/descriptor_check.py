"""Do the image features see the synthetic generator's tissue types? (images + the generator's
per-spot type only; no expression label is read).

    python experiments/descriptor_check.py --config configs/synthetic.py --workdir runs/syn

For every prepared section: per feature dimension the fraction of its variance explained by the
spot's tissue type (eta², one-way ANOVA), and a nearest-centroid classifier of the type,
leave-one-section-out within each sample (centroids from the other sections). Prints the mean
eta² over dimensions, the 5 most type-bound histology descriptors and the accuracy against
the majority-class rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]

from asign_jax.data.synthetic import load_ground_truth  # noqa: E402
from asign_jax.features.histology_cells import DESCRIPTOR_NAMES  # noqa: E402
from asign_jax.preprocess.prepared import PreparedSample, list_prepared  # noqa: E402


def eta2(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(D,) between-type variance / total variance of every column of x (n, D)."""
    tot = x.var(0) * len(x) + 1e-12
    between = sum(((t == k).sum() * (x[t == k].mean(0) - x.mean(0)) ** 2) for k in np.unique(t))
    return between / tot


def check(config, workdir: Path) -> dict:
    root = Path(config.data.root) if config.data.root else workdir / "synthetic_data"
    etas, correct, total, majority = [], 0, 0, 0
    for sid in list_prepared(workdir):
        ps = PreparedSample.load(workdir, sid)
        feats, types = [], []
        for sec in ps.sections:
            gt = load_ground_truth(root, sec.name)["spots"]
            row = {str(i): k for k, i in enumerate(gt["ids"])}
            t = np.asarray(gt["type"])[[row[str(i)] for i in sec.spot_ids]]
            x = np.asarray(sec.spot_feats, np.float64)
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            feats.append(x)
            types.append(t)
            etas.append(eta2(x, t))
        for i in range(len(feats)):
            xo = np.concatenate([f for j, f in enumerate(feats) if j != i])
            to = np.concatenate([t for j, t in enumerate(types) if j != i])
            ks = np.unique(to)
            cent = np.stack([xo[to == k].mean(0) for k in ks])
            pred = ks[np.argmin(((feats[i][:, None] - cent[None]) ** 2).sum(-1), 1)]
            correct += int((pred == types[i]).sum())
            total += len(pred)
            majority += int(np.bincount(types[i]).max())
    e = np.mean(etas, 0)
    out = {"mean_eta2": float(e.mean()), "accuracy": correct / total,
           "majority": majority / total}
    if len(e) == len(DESCRIPTOR_NAMES):
        top = np.argsort(-e)[:5]
        out["top"] = [(DESCRIPTOR_NAMES[i], round(float(e[i]), 3)) for i in top]
    return out


FLAGS = flags.FLAGS


def main(argv):
    del argv
    out = check(FLAGS.config, Path(FLAGS.workdir))
    print(f"encoder {FLAGS.config.features.encoder}: mean eta² over dimensions "
          f"{out['mean_eta2']:.3f}; nearest-centroid tissue type accuracy {out['accuracy']:.3f} "
          f"(majority class {out['majority']:.3f})")
    if "top" in out:
        print("most type-bound descriptors:", out["top"])


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
    flags.DEFINE_string("workdir", None, "Run folder with prepared data.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
