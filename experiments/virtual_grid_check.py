"""Honest check of the virtual grids of ``asign_jax.impute`` on HER2ST patient C.

The worked example imputes C3-C6 from their images alone (C2's counts only). Their real
counts exist in the shared data, so the imputed block can be scored afterwards:

* every real spot of C3-C6 is mapped into the block's reference frame with the impute run's
  registration (``<impute>/work/registration/C/registered.npz``), and the nearest VIRTUAL spot
  of the same section within half a pitch is its stand-in (the others are counted, not scored);
* the virtual spot's imputed expression (X of ``volume.h5ad``, and ASIGN's halves) is scored
  against the real spot's counts, log-normalised over the impute run's genes exactly as the
  run normalises labels (``preprocess.normalize``); references on the same pairs:
  ``known_mean`` (C2's mean profile) and ``overlap`` (IoU-weighted C2 spots around the
  VIRTUAL spot, the information the imputation had);
* beside it, the cross-validation numbers of ``asign_jax.train`` on the same known layer
  (``configs/her2st.py``: known C2, B4 extra): its metrics.json per section, and its
  predictions at the real spots re-scored on the matched subset only, so the three effects
  (which spots, where the spot sits, which run) can be told apart.

pcc_gene = per gene across spots (spatial pattern); pcc_spot = per spot across genes.

    python experiments/virtual_grid_check.py --impute runs/patient_c --cv runs/her2st_cv \
        --data ../shared/data/her2st --out runs/virtual_grid_check
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from asign_jax import atomic, entry
from asign_jax.data import her2st
from asign_jax.evaluation.metrics import METRICS, section_metrics
from asign_jax.evaluation.references import overlap
from asign_jax.preprocess.normalize import normalize
from asign_jax.registration.affine import apply_affine
from asign_jax.registration.result import RegisteredSample


def _row(name, m):
    return {"method": name, **{k: (None if m[k] is None or not np.isfinite(m[k])
                                   else round(float(m[k]), 4)) for k in METRICS}}


def main(args):

    import anndata as ad

    imp, cv = Path(args.impute), Path(args.cv)
    vol = ad.read_h5ad(imp / "volume.h5ad")
    genes = np.asarray(vol.var_names, dtype=str)
    reg = RegisteredSample.load(imp / "work", args.sample)
    names = list(vol.obs["section"].cat.categories)
    measured = vol.obs["measured"].to_numpy(bool)
    known_name = names[int(vol.obs["layer"].to_numpy()[measured][0])]
    lat = vol.uns["lattice"][known_name]
    radius = float(lat["spot_diameter_px"])     # IoU circle: the spot's own size doubled
    sec_of = vol.obs["section"].to_numpy()
    known_rows = sec_of == known_name
    known_xy, known_y = vol.obsm["spatial_3d"][known_rows, :2], vol.layers["measured"][known_rows]
    cv_pred = ad.read_h5ad(cv / "predictions" / f"{args.sample}.h5ad")
    cv_metrics = json.loads((cv / "metrics.json").read_text())
    cv_sections = {s["section"]: s for f in cv_metrics["folds"] for s in f["sections"]}
    common = sorted(set(genes) & set(cv_pred.var_names))

    report = {"genes_impute": len(genes), "genes_cv": int(cv_pred.n_vars),
              "genes_shared": len(common), "known": known_name, "sections": []}
    lines = [f"known layer {known_name}; impute genes {len(genes)}, CV genes {cv_pred.n_vars}, "
             f"shared {len(common)}; pitch {lat['pitch_px']:.1f} px, match radius "
             f"{lat['pitch_px'] / 2:.1f} px (half a pitch)",
             "pcc_gene: per gene across spots; pcc_spot: per spot across genes", ""]
    for name in names:
        if name == known_name:
            continue
        res = _score_section(args, name, names.index(name), vol, reg, genes, lat, radius,
                             known_xy, known_y, cv_pred, cv_sections.get(name), common)
        report["sections"].append(res)
        lines += _section_lines(res)
    report["mean"] = _means(report["sections"])
    lines += _mean_lines(report["mean"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "virtual_grid_check.json", report)
    atomic.write_text(out / "virtual_grid_check.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out / 'virtual_grid_check.json'}, {out / 'virtual_grid_check.txt'}")


def _score_section(args, name: str, layer: int, vol, reg, genes, lat: dict, radius: float,
                   known_xy, known_y, cv_pred, cvs, common: list) -> dict:
    """One image-only section: its real spots matched to the nearest virtual spot (within
    half a pitch) in the block frame, the imputation and the references scored there, and the
    CV run's numbers (all real spots, and the matched ones) beside them."""
    real = her2st.read_section(args.data, name).subset_genes(genes)
    truth = normalize(real.counts, "asign")
    real_ref = apply_affine(reg.affines[layer], real.pixel_xy)
    rows = np.flatnonzero(vol.obs["section"].to_numpy() == name)
    d, j = cKDTree(vol.obsm["spatial_3d"][rows, :2]).query(real_ref)
    ok = d <= lat["pitch_px"] / 2
    pick = rows[j[ok]]
    t = truth[ok]
    res = {"section": name, "real_spots": real.n_spots, "matched": int(ok.sum()),
           "median_offset_px": round(float(np.median(d[ok])), 1), "methods": []}
    ov, _ = overlap(known_xy, known_y, vol.obsm["spatial_3d"][pick, :2], radius)
    for label, pred in (("impute ASIGN (virtual spot)", vol.X[pick]),
                        ("impute network half p_s", vol.layers["network"][pick]),
                        ("impute propagation half p_i", vol.layers["propagation"][pick]),
                        ("known_mean", np.broadcast_to(known_y.mean(0), t.shape)),
                        ("overlap (at the virtual spot)", ov)):
        res["methods"].append(_row(label, section_metrics(np.asarray(pred), t)[0]))
    # cross-validation: its own genes and normalisation, all real spots (metrics.json) ...
    if cvs is not None:
        for m in ("asign", "asign_propagation", "known_mean", "overlap"):
            if m in cvs["methods"]:
                res["methods"].append(_row(f"CV {m} (all real spots)", cvs["methods"][m]))
    # ... and on the matched real spots only
    cv_rows = np.flatnonzero(cv_pred.obs["section"].to_numpy() == name)
    ids = cv_pred.obs["spot_id"].to_numpy()[cv_rows]
    pos = {s: i for i, s in enumerate(ids)}
    sel = [pos[s] for s in real.spot_ids[ok] if s in pos]
    if sel:
        sub = cv_pred[cv_rows[sel]]
        res["methods"].append(_row("CV asign (matched real spots)", section_metrics(
            np.asarray(sub.X), np.asarray(sub.layers["truth"]))[0]))
        # the two runs' predictions, on the shared genes, for the same real spot
        gi = [list(genes).index(g) for g in common]
        ci = [list(cv_pred.var_names).index(g) for g in common]
        a = vol.X[pick][[i for i, s in enumerate(real.spot_ids[ok]) if s in pos]][:, gi]
        b = np.asarray(sub.X)[:, ci]
        res["agreement_pcc_gene"] = round(float(np.nanmean(
            [np.corrcoef(a[:, g], b[:, g])[0, 1] for g in range(len(ci))
             if a[:, g].std() > 0 and b[:, g].std() > 0])), 4)
    return res


def _section_lines(res: dict) -> list:
    """The printed block of one section: matches, then one line per method."""
    lines = [f"{res['section']}: {res['matched']}/{res['real_spots']} real spots matched "
             f"(median offset {res['median_offset_px']} px)"
             + (f"; impute vs CV prediction, pcc_gene over shared genes "
                f"{res['agreement_pcc_gene']}" if "agreement_pcc_gene" in res else "")]
    w = max(len(r["method"]) for r in res["methods"])
    lines.append(f"  {'method':<{w}}  " + "  ".join(f"{m:>8}" for m in METRICS))
    for r in res["methods"]:
        lines.append(f"  {r['method']:<{w}}  " + "  ".join(
            f"{'-' if r[m] is None else format(r[m], '.4f'):>8}" for m in METRICS))
    return lines + [""]


def _means(sections: list) -> dict:
    """{method: {metric: mean over the sections}} (NaN where a metric is undefined)."""
    means = {}
    for r in sections:
        for m in r["methods"]:
            means.setdefault(m["method"], []).append([np.nan if m[k] is None else m[k]
                                                      for k in METRICS])
    with warnings.catch_warnings():           # known_mean has no pcc_gene (constant)
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: dict(zip(METRICS, np.round(np.nanmean(v, 0), 4).tolist()))
                for k, v in means.items()}


def _mean_lines(mean: dict) -> list:
    w = max(map(len, mean))
    lines = ["mean over sections", f"  {'method':<{w}}  " + "  ".join(f"{m:>8}" for m in METRICS)]
    for k, v in mean.items():
        lines.append(f"  {k:<{w}}  " + "  ".join(
            f"{'-' if not np.isfinite(v[m]) else format(v[m], '.4f'):>8}" for m in METRICS))
    return lines


if __name__ == "__main__":
    entry.run_script(main, "virtual_grid_check", config="none",
                     impute=(entry.REQUIRED, "--out folder of asign_jax.impute."),
                     cv=(entry.REQUIRED, "--workdir of asign_jax.train (configs/her2st.py)."),
                     data=("../shared/data/her2st", "The HER2ST folder (withheld counts)."),
                     sample=("C", "The patient."))
