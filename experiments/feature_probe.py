"""Ridge within each VALIDATION sample (train.val_samples): fit on its known layer 0, scored on
its other layers; features z-scored per sample. No graph, no registration, no test sample:

    python experiments/feature_probe.py --workdir runs/syn_histo --samples Z

``--workdir`` is a run folder whose ``prepare`` stage is done; ``--samples`` comma-separated
sample ids (validation samples only: the probe reads every layer's labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax import entry
from asign_jax.evaluation.metrics import section_metrics
from asign_jax.evaluation.references import ridge
from asign_jax.preprocess.prepared import PreparedSample


def probe(workdir: Path, sample_id: str) -> dict:
    """{"mse", "pcc_gene", "known_mean_mse"} of the ridge fit on layer 0, averaged over the
    sample's other layers."""
    secs = PreparedSample.load(workdir, sample_id).sections
    x = [np.asarray(s.spot_feats, np.float64) for s in secs]
    y = [np.asarray(s.spot_labels, np.float64) for s in secs]
    # per-sample z-score (train.feature_norm = sample view) of the features
    allx = np.concatenate(x)
    mu, sd = allx.mean(0), allx.std(0) + 1e-3
    x = [(a - mu) / sd for a in x]
    res = []
    for layer in range(1, len(secs)):
        p, _ = ridge(x[0], y[0], x[layer])
        m, _ = section_metrics(p, y[layer])
        km, _ = section_metrics(np.broadcast_to(y[0].mean(0), y[layer].shape), y[layer])
        res.append((m["mse"], m["pcc_gene"], km["mse"]))
    r = np.mean(res, 0)
    return {"mse": float(r[0]), "pcc_gene": float(r[1]), "known_mean_mse": float(r[2])}


def main(args):
    wd = Path(args.workdir)
    for sid in [s.strip() for s in args.samples.split(",") if s.strip()]:
        r = probe(wd, sid)
        print(f"{wd.name} {sid}: ridge within (fit on layer 0, scored on layers 1..): mse "
              f"{r['mse']:.4f} pcc_gene {r['pcc_gene']:.4f}  (known_mean mse "
              f"{r['known_mean_mse']:.4f})")


if __name__ == "__main__":
    entry.run_script(main, "feature_probe", config="none",
                     workdir=(entry.REQUIRED, "Run folder with a finished prepare stage."),
                     samples=("Z", "Validation sample ids, comma-separated."))
