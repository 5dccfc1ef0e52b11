"""Figures of an imputed block: gene maps over each section's H&E, and the whole block.

* ``figures/genemap_<section>_<gene>.png``: the section's lowres H&E (cropped to its spots)
  with every spot coloured by its imputed expression (measured spots: their measured value,
  black rim), one colour scale per gene over the block;
* ``figures/block_<gene>.png``: all sections side by side (same colour scale), and the
  registered block stacked in 3D.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from asign_jax.evaluation.figures import draw_on_he, limits as _limits


def _section_axes(ax, lib: dict, xy: np.ndarray, v: np.ndarray, measured: np.ndarray,
                  vmin: float, vmax: float, title: str):
    return draw_on_he(ax, lib, xy, v, vmin, vmax, title, rim=measured)


def plot_block(out_dir: Path, adata, libraries: dict, genes: Sequence[str]) -> list[Path]:
    """Writes the figures of the module docstring for each gene of ``genes``; returns paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(adata.obs["section"].cat.categories)
    layer = adata.obs["layer"].to_numpy()
    measured = adata.obs["measured"].to_numpy(bool)
    xy = adata.obsm["spatial"]
    xyz = adata.obsm["spatial_3d"]
    var = list(adata.var_names)
    written = []
    for gene in tqdm(genes, desc="figures", unit="gene"):
        v = np.asarray(adata.X[:, var.index(gene)]).ravel()
        vmin, vmax = _limits(v)
        for l, n in enumerate(names):
            rows = layer == l
            fig, ax = plt.subplots(figsize=(5.5, 5.5))
            sc = _section_axes(ax, libraries[n], xy[rows], v[rows], measured[rows], vmin, vmax,
                               f"{n}: {gene} ({'measured' if measured[rows].any() else 'imputed'})")
            fig.colorbar(sc, ax=ax, shrink=0.7, label="log-normalised expression")
            p = out_dir / f"genemap_{n}_{gene}.png"
            fig.savefig(p, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(p)
        fig = plt.figure(figsize=(3.2 * len(names) + 1, 8))
        grid = fig.add_gridspec(2, len(names), height_ratios=(1, 1.4))
        top = []
        for l, n in enumerate(names):
            ax = fig.add_subplot(grid[0, l])
            top.append(ax)
            rows = layer == l
            sc = _section_axes(ax, libraries[n], xy[rows], v[rows], measured[rows], vmin, vmax,
                               f"{n}" + (" (measured)" if measured[rows].any() else ""))
        ax3 = fig.add_subplot(grid[1, :], projection="3d")
        ax3.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=v, cmap="viridis", vmin=vmin,
                    vmax=vmax, s=6, depthshade=False)
        ax3.set_xlabel("x (reference px)")
        ax3.set_ylabel("y (reference px)")
        ax3.set_zlabel("z")
        ax3.invert_yaxis()
        ax3.invert_zaxis()                       # first section on top
        ax3.set_title("registered block")
        fig.colorbar(sc, ax=top, shrink=0.8, label=f"{gene} (log-normalised)")
        fig.suptitle(f"{gene}: imputed block ({len(names)} sections)")
        p = out_dir / f"block_{gene}.png"
        fig.savefig(p, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(p)
    return written
