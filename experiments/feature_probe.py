"""Ridge within each VALIDATION sample (train.val_samples): fit on its known layer 0, scored on
its other layers; features z-scored per sample. No graph, no registration, no test sample:

    python experiments/feature_probe.py runs/syn_histo Z
"""
import sys, numpy as np
from pathlib import Path
from asign_jax.preprocess.prepared import PreparedSample
from asign_jax.evaluation.references import ridge
from asign_jax.evaluation.metrics import section_metrics
wd = Path(sys.argv[1])
for sid in sys.argv[2].split(","):
    ps = PreparedSample.load(wd, sid)
    secs = ps.sections
    x = [np.asarray(s.spot_feats, np.float64) for s in secs]
    y = [np.asarray(s.spot_labels, np.float64) for s in secs]
    # per-sample z-score (train.feature_norm = sample view) of the features
    allx = np.concatenate(x); mu, sd = allx.mean(0), allx.std(0) + 1e-3
    x = [(a - mu) / sd for a in x]
    res = []
    for l in range(1, len(secs)):
        p, _ = ridge(x[0], y[0], x[l])
        m, _ = section_metrics(p, y[l])
        km, _ = section_metrics(np.broadcast_to(y[0].mean(0), y[l].shape), y[l])
        res.append((m["mse"], m["pcc_gene"], km["mse"]))
    r = np.mean(res, 0)
    print(f"{wd.name} {sid}: ridge within (fit on layer 0, scored on layers 1..): mse {r[0]:.4f} pcc_gene {r[1]:.4f}  (known_mean mse {r[2]:.4f})")
