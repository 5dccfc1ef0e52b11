"""Cell tables of the histology encoder and the descriptors of a window from them.

Every per-pixel quantity (``histology_pixels``) is summed into cells of
``features.histology_cell`` working pixels, and every window's (and token sub-window's)
statistic comes from summed-area tables of those cells, so a window costs O(1) whatever its
size. Windows are snapped to the cell grid and clipped to the image (no reflect padding).
The GLCM statistics (contrast, homogeneity, correlation) are expectations over the
co-occurrence matrix, so summing pair maps over a window gives the window's values exactly.
Descriptors: ``DESCRIPTOR_NAMES`` (``HISTOLOGY_DIM`` of them).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from asign_jax.errors import DataError
from asign_jax.features.histology_pixels import (GLCM_LEVELS, RUIFROK, TISSUE_OD, glcm_maps,
                                                 lbp_uniform, macenko, nucleus_props,
                                                 optical_density, otsu, segment_nuclei,
                                                 unit_rows)

GLCM_DISTANCES = (1, 2)
HIST_LEVELS = (0.25, 0.5, 0.75, 1.0)
LBP_BINS = 10

PIXEL_NAMES = (
    ["tissue", "h_sum", "h_sq", "e_sum", "e_sq", "r_sum", "r_sq", "stroma", "nuclear",
     "lap_h", "lap_e"]
    + [f"{c}_ge{t}" for c in "he" for t in HIST_LEVELS]
    + [f"lbp_{c}{k}" for c in "he" for k in range(LBP_BINS)]
    + [f"q_{c}{s}" for c in "he" for s in ("", "2")]
    + [f"glcm_{c}{d}_{s}" for c in "he" for d in GLCM_DISTANCES
       for s in ("w", "con", "hom", "ab")])
NUC_NAMES = ("n", "area", "area2", "ecc", "ecc2", "sol", "sol2", "nh", "nnd", "nnd2",
             "large", "crowded")

DESCRIPTOR_NAMES = tuple(
    ["tissue_frac", "h_mean", "h_std", "e_mean", "e_std", "r_mean", "r_std",
     "stroma_frac", "nuclear_frac", "lap_h", "lap_e"]
    + [f"{c}_ge{t}" for c in "he" for t in HIST_LEVELS]
    + [f"lbp_{c}{k}" for c in "he" for k in range(LBP_BINS)]
    + [f"glcm_{c}{d}_{s}" for c in "he" for d in GLCM_DISTANCES
       for s in ("contrast", "homogeneity", "correlation")]
    + ["nuclei_log_count", "nuclei_density", "area_mean", "area_std", "ecc_mean", "ecc_std",
       "solidity_mean", "solidity_std", "nuclear_h", "nnd_mean", "nnd_std", "large_frac",
       "crowded_frac"])
HISTOLOGY_DIM = len(DESCRIPTOR_NAMES)


class Cells:
    """Per-cell sums of pixel quantities over a (H, W) working image (H, W multiples of the
    cell side), and box sums of them through summed-area tables."""

    def __init__(self, shape, cell: int):
        self.cell = int(cell)
        self.hc, self.wc = shape[0] // self.cell, shape[1] // self.cell
        self.shape = shape
        self.channels: list[np.ndarray] = []

    def add_map(self, m: np.ndarray) -> None:
        """One channel: the per-cell sum of the (H, W) map ``m`` (exact block means x c²)."""
        m = np.asarray(m, np.float32)
        self.channels.append(cv2.resize(m, (self.wc, self.hc), interpolation=cv2.INTER_AREA)
                             * float(self.cell ** 2))

    def add_cells(self, table: np.ndarray) -> None:
        """Channels given per cell: (hc * wc, k) -> k channels."""
        t = np.asarray(table, np.float64).reshape(self.hc, self.wc, -1)
        self.channels.extend(t[..., j].astype(np.float32) for j in range(t.shape[-1]))

    def add_points(self, x: np.ndarray, y: np.ndarray, values: list[np.ndarray]) -> None:
        """One channel per value array: its sum over the points (x, y) falling in each cell."""
        cx = np.clip((x // self.cell).astype(np.int64), 0, self.wc - 1)
        cy = np.clip((y // self.cell).astype(np.int64), 0, self.hc - 1)
        ci = cy * self.wc + cx
        self.add_cells(np.stack([np.bincount(ci, v, self.hc * self.wc) for v in values], 1)
                       if values else np.zeros((self.hc * self.wc, 0)))

    def box_sums(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums (n, C) of every channel over boxes (n, 4) = x0, y0, x1, y1 in working px
        (snapped to cells, clipped to the image, at least one cell), and each box's pixel
        area (n,)."""
        c = self.cell
        b = np.rint(np.asarray(boxes, np.float64) / c).astype(np.int64)
        x0, x1 = np.clip(b[:, 0], 0, self.wc - 1), np.clip(b[:, 2], 1, self.wc)
        y0, y1 = np.clip(b[:, 1], 0, self.hc - 1), np.clip(b[:, 3], 1, self.hc)
        x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
        out = np.empty((len(b), len(self.channels)), np.float64)
        for j in range(0, len(self.channels), 4):   # cv2.integral: up to 4 channels at once
            group = self.channels[j:j + 4]
            s = cv2.integral(np.ascontiguousarray(np.stack(group, -1), np.float32),
                             sdepth=cv2.CV_64F).reshape(self.hc + 1, self.wc + 1, len(group))
            out[:, j:j + len(group)] = s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]
        return out, ((x1 - x0) * (y1 - y0) * c * c).astype(np.float64)


def _safe_div(a, b):
    return np.where(b > 0, a / np.maximum(b, 1e-12), 0.0)


def _std(s1, s2, n):
    m = _safe_div(s1, n)
    return np.sqrt(np.maximum(_safe_div(s2, n) - m * m, 0.0))


def descriptors_from_sums(sums: np.ndarray, area: np.ndarray, nnd_scale: float) -> np.ndarray:
    """(n, C) box sums (``PIXEL_NAMES`` then ``NUC_NAMES``) -> (n, HISTOLOGY_DIM) float32."""
    col = {k: sums[:, i] for i, k in enumerate(PIXEL_NAMES + list(NUC_NAMES))}
    t = col["tissue"]
    out = [_safe_div(t, area)]
    for c in "her":
        out += [_safe_div(col[f"{c}_sum"], t), _std(col[f"{c}_sum"], col[f"{c}_sq"], t)]
    out += [_safe_div(col["stroma"], t), _safe_div(col["nuclear"], t),
            _safe_div(col["lap_h"], t), _safe_div(col["lap_e"], t)]
    out += [_safe_div(col[f"{c}_ge{v}"], t) for c in "he" for v in HIST_LEVELS]
    for c in "he":
        lbp_total = sum(col[f"lbp_{c}{k}"] for k in range(LBP_BINS))
        out += [_safe_div(col[f"lbp_{c}{k}"], lbp_total) for k in range(LBP_BINS)]
    for c in "he":
        for d in GLCM_DISTANCES:
            g = {s: col[f"glcm_{c}{d}_{s}"] for s in ("w", "con", "hom", "ab")}
            w = g["w"]
            mu = _safe_div(col[f"q_{c}"], t)            # the window's level mean / variance
            var = _safe_div(col[f"q_{c}2"], t) - mu * mu
            corr = np.where(var > 1e-6, (_safe_div(g["ab"], w) - mu * mu)
                            / np.maximum(var, 1e-6), 0.0)
            out += [_safe_div(g["con"], w), _safe_div(g["hom"], w), np.clip(corr, -1, 1)]
    n = col["n"]
    out += [np.log1p(n), _safe_div(n, t) * 1000.0 * nnd_scale ** 2,
            _safe_div(col["area"], n), _std(col["area"], col["area2"], n),
            _safe_div(col["ecc"], n), _std(col["ecc"], col["ecc2"], n),
            _safe_div(col["sol"], n), _std(col["sol"], col["sol2"], n),
            _safe_div(col["nh"], n), _safe_div(col["nnd"], n), _std(col["nnd"], col["nnd2"], n),
            _safe_div(col["large"], n), _safe_div(col["crowded"], n)]
    return np.stack(out, 1).astype(np.float32)


def section_cells(work: np.ndarray, cell: int, seed: int = 0) -> tuple[Cells, dict]:
    """Every per-pixel and per-nucleus quantity of a working-resolution image in cell tables.

    ``work``: (H, W, 3) uint8 with H, W multiples of ``cell``. Returns the tables (channels
    ``PIXEL_NAMES`` then ``NUC_NAMES``) and a summary (stain vectors and method, nucleus
    threshold, number of nuclei).
    """
    tissue, tissue_idx, sample, (h, e, r), stains, method = _stain_maps(work, seed)
    thr = otsu(np.clip(h.ravel()[sample], 0, 2))
    labels = segment_nuclei(h, tissue, thr)
    cells = Cells(h.shape, cell)
    _add_pixel_channels(cells, h, e, r, tissue, tissue_idx, labels > 0, thr)
    n = _add_nucleus_channels(cells, labels, h)
    assert len(cells.channels) == len(PIXEL_NAMES) + len(NUC_NAMES)
    return cells, {"stains": stains.round(4).tolist(), "stain_method": method,
                   "nucleus_threshold": float(thr), "nuclei": n}


def _stain_maps(work: np.ndarray, seed: int):
    """Tissue mask (H, W) bool, its flat indices, the stain-estimation sample of them, the
    normalised H, E, residual maps (3 x (H, W) float32, 0 off tissue), the (3, 3) stain
    vectors and their method ("macenko" or "ruifrok")."""
    od = optical_density(work)
    od_max = od.max(-1)
    tissue = od_max > TISSUE_OD
    del od_max
    tissue_idx = np.flatnonzero(tissue)
    if len(tissue_idx) < 16:
        raise DataError("histology: the image has (almost) no tissue pixels (max OD > "
                        f"{TISSUE_OD} in {len(tissue_idx)} px)")
    rng = np.random.default_rng(seed)
    sample = (tissue_idx if len(tissue_idx) <= 200_000
              else np.sort(rng.choice(tissue_idx, 200_000, replace=False)))
    odf = od.reshape(-1, 3)
    he = macenko(odf[sample])
    method = "macenko"
    if he is None:
        he, method = unit_rows(RUIFROK.copy()), "ruifrok"
    stains = np.stack([he[0], he[1], unit_rows(np.cross(he[0], he[1]))])
    inv = np.linalg.inv(stains)                                  # OD = C @ stains
    scale = np.maximum(np.percentile(np.abs(odf[sample] @ inv), 99, axis=0), 1e-3)
    m = (inv / scale).astype(np.float32)                         # normalised concentrations
    h, e, r = (cv2.transform(od, m[:, k][None, :]).reshape(tissue.shape) for k in range(3))
    del od, odf
    for x in (h, e, r):
        x[~tissue] = 0.0
    return tissue, tissue_idx, sample, (h, e, r), stains, method


def _add_pixel_channels(cells: Cells, h, e, r, tissue, tissue_idx, nuclear, thr) -> None:
    """The ``PIXEL_NAMES`` channels: sums, squares, fractions, Laplacian energy, histogram
    levels, LBP histograms, quantised levels and GLCM pair maps of H and E."""
    cell = cells.cell
    tis = tissue.astype(np.float32)
    lap_h = cv2.Laplacian(h, cv2.CV_32F, ksize=3)
    lap_e = cv2.Laplacian(e, cv2.CV_32F, ksize=3)
    stroma = tissue & (e > 0.5) & (h < thr) & ~nuclear
    for x in (tis, h, h * h, e, e * e, r, r * r, stroma.astype(np.float32),
              nuclear.astype(np.float32), lap_h * lap_h * tis, lap_e * lap_e * tis):
        cells.add_map(x)
    del lap_h, lap_e, stroma
    for c in (h, e):
        for v in HIST_LEVELS:
            cells.add_map((c >= v).astype(np.float32))
    ys, xs = np.divmod(tissue_idx, h.shape[1])
    n_cells = cells.hc * cells.wc
    cell_t = (ys // cell) * cells.wc + xs // cell
    del ys, xs
    for c in (h, e):
        codes = lbp_uniform(c).ravel()[tissue_idx]
        cells.add_cells(np.bincount(cell_t * LBP_BINS + codes, minlength=n_cells * LBP_BINS
                                    ).reshape(n_cells, LBP_BINS))
    del cell_t
    for c in (h, e):
        q = np.clip(c * GLCM_LEVELS, 0, GLCM_LEVELS - 1).astype(np.uint8)
        qf = q.astype(np.float32)
        cells.add_map(qf)
        cells.add_map(qf * qf)
        del qf
    for c in (h, e):
        q = np.clip(c * GLCM_LEVELS, 0, GLCM_LEVELS - 1).astype(np.uint8)
        for d in GLCM_DISTANCES:
            for x in glcm_maps(q, tissue, d):
                cells.add_map(x)


def _add_nucleus_channels(cells: Cells, labels: np.ndarray, h: np.ndarray) -> int:
    """The ``NUC_NAMES`` channels (per-nucleus sums at the nucleus centres); returns the
    number of nuclei."""
    props = nucleus_props(labels, h)
    n = len(props["x"])
    if n >= 2:
        pts = np.stack([props["x"], props["y"]], 1)
        nnd = cKDTree(pts).query(pts, k=2)[0][:, 1]
    else:
        nnd = np.zeros(n)
    big = np.percentile(props["area"], 75) if n else 0.0
    near = np.percentile(nnd, 25) if n else 0.0
    cells.add_points(props["x"], props["y"], [
        np.ones(n), props["area"], props["area"] ** 2, props["ecc"], props["ecc"] ** 2,
        props["sol"], props["sol"] ** 2, props["nh"], nnd, nnd ** 2,
        (props["area"] > big).astype(np.float64), (nnd < near).astype(np.float64)])
    return n


def token_boxes(boxes: np.ndarray, grid: int) -> np.ndarray:
    """(n, 4) boxes -> (n * grid², 4) sub-boxes, row-major (row = y) inside each box."""
    b = np.asarray(boxes, np.float64)
    f = np.arange(grid + 1) / grid
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * f            # (n, g+1)
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * f
    i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")   # i row, j col
    i, j = i.ravel(), j.ravel()
    sub = np.stack([xs[:, j], ys[:, i], xs[:, j + 1], ys[:, i + 1]], -1)   # (n, g², 4)
    return sub.reshape(-1, 4)


def standardize(feats: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores (n, D) ``feats`` and (n, T, D) ``tokens`` with the mean / std of ``feats``."""
    if len(feats) == 0:
        return feats, tokens
    mu, sd = feats.mean(0), feats.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return ((feats - mu) / sd).astype(np.float32), ((tokens - mu) / sd).astype(np.float32)
