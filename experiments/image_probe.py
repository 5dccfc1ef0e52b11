"""How much expression the image features carry, read on the VALIDATION role only.

    python experiments/image_probe.py --config configs/synthetic.py --workdir runs/synthetic

For the first fold of the config (its prepared graphs in ``--workdir``, features as the model
sees them), on the validation rows only, it scores linear image models and how much they add
to a parameter-free propagation (alpha_j = 1, unknown spots start at the known mean):

* ``ridge within``: fit on the validation view's known spots (the ``ridge`` reference);
* ``ridge pooled``: fit on every label training may use (training samples, known layers),
  penalty by leave-one-sample-out CV (what ``model.asign.image_skip`` starts from);
* ``ridge pooled, relative``: the same on labels minus each sample's mean profile, plus the
  known spots' mean (``model.asign.spot_offset="known"``);
* the propagation, and propagation + the relative ridge blended per gene (eq. 6 with alpha
  fit on the same validation rows: an optimistic indication of the available gain).

It was the probe behind the "image half" notes of docs/deviations.md; no test row is read.
Writes ``<out>/results.json`` (default ``--out runs/experiments/image_probe``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax import atomic, entry, stages
from asign_jax.evaluation.metrics import section_metrics
from asign_jax.evaluation.references import label_propagation, ridge, ridge_fit
from asign_jax.evaluation.scoring import role_views
from asign_jax.graph import roles
from asign_jax.models.cli import known_mean
from asign_jax.models.cli import fit_blend
from asign_jax.training import batches
from asign_jax.training.folds import make_folds


def probe(config, workdir: Path) -> dict:
    _, graphs, _ = stages.load_inputs(config, workdir)
    fold = make_folds(config.train, {s: len(g.section_names) for s, g in graphs.items()},
                      seed=int(config.seed))[0]
    pool = batches.build_pool(graphs, fold, seed=int(config.seed))
    g = pool.arrays["spot"]
    xs, ys, yr, groups = [], [], [], []
    for i in range(len(pool)):
        m = np.asarray(g.nodes["label_mask"][i])
        if m.any():
            y = np.asarray(g.nodes["label"][i])[m]
            xs.append(np.asarray(g.nodes["feat"][i])[m])
            ys.append(y)
            yr.append(y - y.mean(0))
            groups.append(np.full(int(m.sum()), i))
    x, grp = np.concatenate(xs), np.concatenate(groups)
    w, mx, my, _ = ridge_fit(x, np.concatenate(ys), groups=grp)
    wr, mxr, _, _ = ridge_fit(x, np.concatenate(yr), groups=grp)
    rows = {}
    for sid, masked, scored in role_views(fold, graphs, "val"):
        spot = roles.unpadded_nodes(masked, "spot")
        truth = np.asarray(roles.unpadded_nodes(graphs[sid], "spot")["label"])
        knw, lab, feat = np.asarray(spot["known"]), np.asarray(spot["label"]), spot["feat"]
        layer = np.asarray(spot["layer"])
        scored = layer != fold.known_layer[sid] if scored is None else scored
        mean = np.asarray(known_mean(lab, knw))
        start = np.broadcast_to(mean, lab.shape).astype(np.float32)
        sg = masked.spot
        prop = label_propagation(lab, knw, sg.senders, sg.receivers, sg.edges["weight"],
                                 int(config.model.asign.cli_iterations))
        rel = (feat - mxr) @ wr + mean
        alpha = fit_blend(rel[scored], prop[scored], truth[scored])
        preds = {"known_mean": start, "ridge within": ridge(feat[knw], lab[knw], feat)[0],
                 "ridge pooled": (feat - mx) @ w + my, "ridge pooled, relative": rel,
                 "propagation (alpha_j = 1)": prop,
                 "propagation + relative ridge (eq. 6, alpha fit here)":
                     alpha * rel + (1 - alpha) * prop}
        for name, p in preds.items():
            per = [section_metrics(p[scored & (layer == l)], truth[scored & (layer == l)])[0]
                   for l in sorted(set(layer[scored].tolist()))]
            rows.setdefault(name, []).extend(per)
    return {k: {m: float(np.nanmean([s[m] for s in v])) for m in ("mse", "pcc_gene")}
            for k, v in rows.items()}


def main(args):
    out = probe(args.config, Path(args.workdir))
    print("validation rows of the first fold (no test row is read)")
    for name, v in out.items():
        print(f"{name:<55} mse {v['mse']:.4f}  pcc_gene {v['pcc_gene']:.4f}")
    print(f"written: {atomic.write_json(Path(args.out) / 'results.json', out)}")


if __name__ == "__main__":
    entry.run_script(main, "image_probe", config="required",
                     workdir=(entry.REQUIRED, "Run folder with prepared data and graphs."))
