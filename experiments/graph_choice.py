"""Which 3D graph construction to use, read on the VALIDATION role only (no training).

    python experiments/graph_choice.py --config configs/her2st.py --workdir runs/her2st \
        [--variants paper,calibrated:336,calibrated:500,calibrated:336:0.5] [--out DIR]

For every graph variant the spot graph of each sample is rebuilt in memory from the prepared
data and the registration of ``--workdir``, and a parameter-free propagation is scored on the
validation rows of every fold (``scoring.role_views(fold, graphs, "val")``): eq. 5 with
alpha_j = 1 and the edge weights of the variant, ``model.asign.cli_iterations`` iterations, unknown
spots starting at the known spots' mean. No test row is read. The table (and
``<out>/results.json``, default ``--out runs/experiments/graph_choice``) gives validation
MSE / pcc_gene per variant, with ``known_mean`` and ``overlap`` beside them.

Variant syntax: ``paper`` (IoU + raw cosine, top-k over all other-layer nodes) or
``calibrated:<cross_radius px>[:<expand_min_sim>[:<sim_weight>]]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax import atomic, entry
from asign_jax.evaluation import references
from asign_jax.evaluation.metrics import fold_means, section_metrics
from asign_jax.evaluation.scoring import role_views
from asign_jax.graph import roles
from asign_jax.graph.build import build_sample_graph
from asign_jax.graph.io import registered_sample
from asign_jax.preprocess.prepared import PreparedSample, list_prepared
from asign_jax.training.standardize import standardize_features

from asign_jax.training.folds import make_folds


def variant_config(config, spec: str):
    c = config.copy_and_resolve_references()
    parts = spec.split(":")
    c.graph.cross_mode = parts[0]
    if parts[0] == "calibrated":
        if len(parts) > 1:
            c.graph.cross_radius = float(parts[1])
        if len(parts) > 2:
            c.graph.expand_min_sim = float(parts[2])
        if len(parts) > 3:
            c.graph.sim_weight = float(parts[3])
    elif parts[0] != "paper":
        raise ValueError(f"unknown variant {spec!r}")
    return c


def propagation_scores(config, graphs: dict, fold) -> list[dict]:
    """Per validation section: metrics of the parameter-free propagation and the references."""
    sections = []
    for sid, masked, scored in role_views(fold, graphs, "val"):
        spot = roles.unpadded_nodes(masked, "spot")
        truth = np.asarray(roles.unpadded_nodes(graphs[sid], "spot")["label"])
        refs, _ = references.predict_sample(spot, fold.known_layer[sid],
                                            float(config.graph.spot_radius),
                                            spot_graph=masked.spot,
                                            n_iter=int(config.model.asign.cli_iterations))
        preds = {"propagation": refs.pop("label_propagation"), **refs}
        layer = np.asarray(spot["layer"])
        rows_all = layer != fold.known_layer[sid] if scored is None else scored
        for l in sorted(set(layer[rows_all].tolist())):
            rows = rows_all & (layer == l)
            sections.append({"sample": sid, "layer": l, "methods": {
                m: section_metrics(p[rows], truth[rows])[0] for m, p in preds.items()}})
    return sections


def evaluate_variant(config, workdir: Path, spec: str) -> dict:
    cfg = variant_config(config, spec)
    graphs, stats = {}, {}
    for sid in list_prepared(workdir):
        prepared = PreparedSample.load(workdir, sid)
        sg = build_sample_graph(prepared, registered_sample(workdir, prepared, cfg),
                                cfg.graph, cfg.data)
        stats[sid] = sg.stats["spot"]
        graphs[sid] = standardize_features(sg, str(cfg.train.feature_norm))
    folds = make_folds(cfg.train, {s: len(g.section_names) for s, g in graphs.items()},
                       seed=int(cfg.seed))
    per_fold = []
    for fold in folds:
        secs = propagation_scores(cfg, graphs, fold)
        per_fold.append({m: fold_means(secs, m) for m in secs[0]["methods"]})
    methods = list(per_fold[0])
    mean = {m: {k: _nanmean([f[m][k] for f in per_fold]) for k in per_fold[0][m]}
            for m in methods}
    return {"variant": spec, "validation": mean, "spot_graph_stats": stats}


def _nanmean(v) -> float:
    v = np.asarray(v, np.float64)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")


def main(args):
    rows = [evaluate_variant(args.config, Path(args.workdir), v)
            for v in args.variants.split(",")]
    print("validation rows only (no test row is read); parameter-free propagation per graph")
    print(f"{'variant':<28} {'mse':>7} {'pcc_gene':>9} {'iou0 share':>10} {'median len':>10}")
    for r in rows:
        v = r["validation"]["propagation"]
        st = max(r["spot_graph_stats"].values(), key=lambda x: x["n_cross"])   # a 3D sample
        print(f"{r['variant']:<28} {v['mse']:>7.4f} {v['pcc_gene']:>9.4f} "
              f"{st['cross_iou0_share']:>10.3f} {st['cross_median_pitches'] or 0:>10.2f}")
    for m in ("known_mean", "overlap", "ridge"):
        v = rows[0]["validation"][m]
        print(f"{m:<28} {v['mse']:>7.4f} {v['pcc_gene']:>9.4f}")
    print(f"written: {atomic.write_json(Path(args.out) / 'results.json', rows)}")


if __name__ == "__main__":
    entry.run_script(main, "graph_choice", config="required",
                     workdir=(entry.REQUIRED, "Run folder with prepared data and registration."),
                     variants=("paper,calibrated:224,calibrated:336,calibrated:500,"
                               "calibrated:336:0.5", "Comma-separated graph variants."))
