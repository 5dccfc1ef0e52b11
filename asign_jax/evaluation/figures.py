"""Figures of a run: gene maps over the H&E and the per-section box plot.

* ``draw_on_he``: a section's lowres H&E, cropped to its spots, with every spot a disc of the
  spot's own diameter coloured by a value (shared by ``block.figures``);
* ``plot_gene_maps``: per test section and gene, truth | the model | ``overlap`` over the
  section's H&E, one colour scale per gene (over every test section of the sample and every
  panel) with its colour bar, each panel titled with its method and the gene's PCC there;
* ``plot_section_box``: per-section pcc_gene and pcc_spot of every method, short labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax.data.lattice import infer_lattice
from asign_jax.evaluation import spatial_data
from asign_jax.evaluation.metrics import nan_or

# short box-plot labels: the method names of metrics.json are long and overlap
SHORT = {"asign": "ASIGN", "asign_model": "net p_s", "asign_propagation": "CLI p_i",
         "known_mean": "known mean", "label_propagation": "label prop.", "overlap": "overlap",
         "similarity": "similar.", "ridge": "ridge", "oracle": "oracle"}


def short_label(method: str) -> str:
    return SHORT.get(method, method)


def limits(v: np.ndarray) -> tuple[float, float]:
    """The 1st-99th percentile of ``v`` (NaN ignored): a colour scale outliers do not flatten."""
    lo, hi = np.nanpercentile(v, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def draw_on_he(ax, lib: Optional[dict], xy: np.ndarray, v: np.ndarray, vmin: float,
               vmax: float, title: str, *, rim: Optional[np.ndarray] = None,
               diameter_px: Optional[float] = None):
    """Spots ``xy`` (N, 2) (full-resolution pixels of the section image) coloured by ``v``
    over the lowres image of ``lib`` (a ``spatial_data.spatial_library``; None: no image),
    cropped to the spots plus one spot diameter; ``rim`` (N,) bool draws a black edge.
    Returns the scatter (for a colour bar)."""
    if lib is not None:
        img = lib["images"]["lowres"]
        s = lib["scalefactors"]["tissue_lowres_scalef"]
        d = lib["scalefactors"]["spot_diameter_fullres"] * s
        ax.imshow(img)
    else:
        img, s = None, 1.0
        d = diameter_px or 1.0
    p = np.asarray(xy, np.float64) * s
    pad = max(d, 1.0)
    x0, x1 = p[:, 0].min() - pad, p[:, 0].max() + pad
    y0, y1 = p[:, 1].min() - pad, p[:, 1].max() + pad
    if img is not None:
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)                                   # image rows grow downwards
    ax.set_aspect("equal")
    # marker area in points^2 from the spot diameter in (cropped) axis pixels
    ax.figure.canvas.draw_idle()
    bbox = ax.get_window_extent().transformed(ax.figure.dpi_scale_trans.inverted())
    pts_per_px = min(bbox.width / max(x1 - x0, 1e-9), bbox.height / max(y1 - y0, 1e-9)) * 72
    size = max(2.0, (0.9 * d * pts_per_px) ** 2)
    edge = "none" if rim is None else np.where(rim, "black", "none")
    sc = ax.scatter(p[:, 0], p[:, 1], c=v, s=size, cmap="viridis", vmin=vmin, vmax=vmax,
                    edgecolors=edge, linewidths=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return sc


def _libraries(prepared, layers: Sequence[int]) -> dict:
    """{layer: (lowres library or None, spot diameter in full-res px)} of the test sections."""
    out = {}
    for l in layers:
        s = prepared.sections[l]
        diam = infer_lattice(s.pixel_xy, where=s.name).spot_diameter
        lib = spatial_data.spatial_library(s.image_path, diam, hires=False) if s.image_path else None
        out[l] = (lib, diam)
    return out


def plot_gene_maps(out_dir: Path, stem: str, p, genes: Sequence[str],
                   eval_genes: Sequence[str], prepared=None) -> list[Path]:
    """``genemap_<stem>_<section>_<gene>.png`` per test section and gene of ``eval_genes``:
    truth | ``p.method`` | overlap. With ``prepared`` (the sample's ``PreparedSample``) the
    spots sit on the section's H&E in its own pixels; without it, on the registered
    coordinates. ``p``: a ``scoring.SamplePredictions``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genes = [str(g) for g in genes]
    layer = p.layer.astype(int)
    test_layers = sorted(set(layer.tolist()) - {p.known_layer})
    if prepared is not None:
        own_xy = np.concatenate([s.pixel_xy for s in prepared.sections])
        libs = _libraries(prepared, test_layers)
    else:
        own_xy, libs = np.asarray(p.spot["xy"]), {l: (None, None) for l in test_layers}
    panels = [("truth", p.truth), (p.method, p.preds[p.method]), ("overlap", p.preds["overlap"])]
    test_rows = np.isin(layer, test_layers)
    written = []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for gname in eval_genes:
        if gname not in genes:
            continue
        g = genes.index(gname)
        vmin, vmax = limits(p.truth[test_rows, g])        # one scale per gene: all sections
        for l in test_layers:
            rows = layer == l
            truth = p.truth[rows, g]
            lib, diam = libs[l]
            xy = own_xy[rows]
            w, h = np.ptp(xy[:, 0]) + 1, np.ptp(xy[:, 1]) + 1
            panel_w = 3.6
            fig, axes = plt.subplots(1, 3, figsize=(3 * panel_w + 1.0,
                                                    panel_w * min(max(h / w, 0.4), 2.0) + 0.9),
                                     layout="constrained")
            for ax, (name, values) in zip(axes, panels):
                v = values[rows, g]
                title = ("measured (truth)" if name == "truth" else
                         f"{name}: pcc_gene {_pcc(truth, v):.2f}, "
                         f"MSE {float(np.mean((v - truth) ** 2)):.3f}")
                sc = draw_on_he(ax, lib, xy, v, vmin, vmax, title, diameter_px=diam)
            fig.colorbar(sc, ax=list(axes), shrink=0.85, label=f"{gname} (log-normalised)")
            fig.suptitle(f"{stem}, section {p.section_names[l]} (test layer {l}; known layer "
                         f"{p.known_layer}): {gname}", fontsize=10)
            path = Path(out_dir) / f"genemap_{stem}_{p.section_names[l]}_{gname}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def plot_section_box(path: Path, fold_results: Sequence[dict]) -> Path:
    """Box plot of the per-section pcc_gene and pcc_spot of every method (short labels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(fold_results[0]["mean"])
    n_sec = sum(len(fr["sections"]) for fr in fold_results)
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(methods)), 4.4), layout="constrained")
    for ax, metric in zip(axes, ("pcc_gene", "pcc_spot")):
        data = []
        for m in methods:
            v = np.array([nan_or(s["methods"][m][metric]) for fr in fold_results
                          for s in fr["sections"]])
            data.append(v[~np.isnan(v)] if np.isfinite(v).any() else [np.nan])
        ax.boxplot(data, tick_labels=[short_label(m) for m in methods])
        for i, d in enumerate(data, start=1):
            if not np.isfinite(np.asarray(d, float)).any():    # e.g. known_mean's pcc_gene
                ax.text(i, 0.5, "undefined", transform=ax.get_xaxis_transform(), rotation=90,
                        ha="center", va="center", fontsize=8, color="grey")
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for t in ax.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")
        ax.set_title(f"{metric} per test section ({n_sec} sections)", fontsize=10)
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
