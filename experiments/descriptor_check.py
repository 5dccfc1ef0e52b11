"""Do the image features see the synthetic generator's tissue types? (images + the generator's
per-spot type only; no expression label is read).

    python experiments/descriptor_check.py --config configs/synthetic.py --workdir runs/syn

For every prepared section: per feature dimension the fraction of its variance explained by the
spot's tissue type (eta², one-way ANOVA), and a nearest-centroid classifier of the type,
leave-one-section-out within each sample (centroids from the other sections). Prints the mean
eta² over dimensions, the 5 most type-bound histology descriptors and the accuracy against
the majority-class rate. Writes ``<out>/results.json`` (default
``--out runs/experiments/descriptor_check``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax import atomic, entry
from asign_jax.data.synthetic import load_ground_truth
from asign_jax.features.histology_cells import DESCRIPTOR_NAMES
from asign_jax.preprocess.prepared import PreparedSample, list_prepared


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


def main(args):
    out = check(args.config, Path(args.workdir))
    print(f"encoder {args.config.features.encoder}: mean eta² over dimensions "
          f"{out['mean_eta2']:.3f}; nearest-centroid tissue type accuracy {out['accuracy']:.3f} "
          f"(majority class {out['majority']:.3f})")
    if "top" in out:
        print("most type-bound descriptors:", out["top"])
    print(f"written: {atomic.write_json(Path(args.out) / 'results.json', out)}")


if __name__ == "__main__":
    entry.run_script(main, "descriptor_check", config="required",
                     workdir=(entry.REQUIRED, "Run folder with prepared data."))
