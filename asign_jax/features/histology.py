"""Label-free H&E descriptors of every spot patch, region tile and global tile, and a token grid.

``features.encoder = "histology"``. A section is described by what H&E shows, with no learned
weight and no label (docs/features.md):

1. **Stain** (``stain_vectors``): the section's own hematoxylin / eosin optical-density vectors,
   estimated from its tissue pixels by Macenko et al. (2009) (SVD plane of the OD, 1st / 99th
   percentile angles), Ruifrok & Johnston's vectors as the fallback when the estimate is
   degenerate; per-pixel concentrations of H, E and the residual (third, orthogonal vector) by
   least squares, each divided by its 99th percentile over the section's tissue (Macenko's
   normalisation, so a section stained darker or with another hue gives the same maps).
2. **Nuclei** (``segment_nuclei``): Otsu threshold of the normalised H over the section's
   tissue, a 3x3 opening, distance transform, its local maxima as markers, OpenCV's watershed;
   per nucleus: area, eccentricity and a moment solidity (area / area of the moment-equivalent
   ellipse; a convex hull per nucleus would need a Python loop), mean H, nearest-neighbour
   distance to the next nucleus centre.
3. **Texture and composition**: uniform rotation-invariant LBP (P=8, R=1) histograms of H and
   E, GLCM (Haralick) contrast, dissimilarity, homogeneity and correlation of H and E quantised
   to 8 levels at distances 1 and 2 (horizontal + vertical pairs pooled; these four statistics
   are expectations over the co-occurrence matrix, so summing pair maps over a window gives
   the window's GLCM values exactly), Laplacian energy of H and E, tissue, eosin-rich /
   nuclei-poor (stroma) and nuclear area fractions, H and E histograms (fractions above 4
   levels: the CDF, i.e. the quantiles read the other way round).

Every per-pixel quantity is summed into cells of ``features.histology_cell`` working pixels,
and every window's (and token sub-window's) statistic comes from summed-area tables of those
cells, so a window costs O(1) whatever its size: the image is processed once per section at
1 / ``features.histology_downsample`` of its resolution. Windows are snapped to the cell grid
and clipped to the image (no reflect padding: statistics are over the pixels that exist).

Per-section standardisation (``features.histology_standardize = "section"``): each descriptor
is z-scored over the section's own rows of the same scale (spots over its spots, tiles over
its tiles; tokens with their scale's statistics). Images only. ``"none"`` keeps raw values.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from asign_jax.errors import ConfigError, DataError
from asign_jax.features.cache import (coords_hash, load_cache, safe_name, save_cache,
                                      section_inputs)

logger = logging.getLogger(__name__)

HISTOLOGY_VERSION = 1      # bump when the descriptors change (part of the cache key)
STANDARDIZE = ("section", "none")

RUIFROK = np.array([[0.650, 0.704, 0.286],       # hematoxylin
                    [0.072, 0.990, 0.105]],      # eosin
                   np.float64)
"""Ruifrok & Johnston (2001) OD vectors, the fallback when the section's estimate fails."""

TISSUE_OD = 0.15           # Macenko's beta: a pixel with max OD above this is tissue
GLCM_LEVELS = 8
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


# ------------------------------------------------------------------------------------ stain

def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 optical density -log((I + 1) / 256)."""
    lut = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
    return lut[rgb]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def macenko(od: np.ndarray, alpha: float = 1.0) -> Optional[np.ndarray]:
    """(2, 3) unit H and E vectors from tissue ODs (n, 3) (Macenko 2009), None if degenerate.

    The OD are projected on the plane of their two leading principal directions; the
    ``alpha`` / 100 - ``alpha`` percentiles of the angle in that plane are the two stains; the
    one with the larger red component is hematoxylin (it absorbs red, eosin barely does).
    """
    od = np.asarray(od, np.float64)
    if len(od) < 100:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]                                   # two largest eigenvalues
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v = np.stack([v1, v2])
    v *= np.where(v.sum(1, keepdims=True) < 0, -1.0, 1.0)  # OD vectors are positive
    v = _unit(v)
    if v[0, 0] < v[1, 0]:
        v = v[::-1]
    if (v < -0.1).any() or np.degrees(np.arccos(np.clip(v[0] @ v[1], -1, 1))) < 5.0:
        return None
    return v


def stain_vectors(rgb: np.ndarray, sample: int = 200_000, seed: int = 0
                  ) -> tuple[np.ndarray, str]:
    """(3, 3) rows H, E, residual (unit OD vectors) of an image and the method used.

    Macenko on up to ``sample`` tissue pixels (max OD > ``TISSUE_OD``, fixed ``seed``), else
    Ruifrok's vectors; the residual is the unit cross product of H and E.
    """
    od = optical_density(rgb).reshape(-1, 3)
    tissue = np.flatnonzero(od.max(1) > TISSUE_OD)
    if len(tissue) > sample:
        tissue = np.sort(np.random.default_rng(seed).choice(tissue, sample, replace=False))
    he = macenko(od[tissue])
    method = "macenko"
    if he is None:
        he, method = _unit(RUIFROK.copy()), "ruifrok"
    res = _unit(np.cross(he[0], he[1]))
    return np.stack([he[0], he[1], res]), method


def concentrations(rgb: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 H, E, residual densities (OD = C @ stains)."""
    inv = np.linalg.inv(np.asarray(stains, np.float64)).astype(np.float32)
    od = optical_density(rgb)
    return (od.reshape(-1, 3) @ inv).reshape(od.shape)


# ----------------------------------------------------------------------------------- nuclei

def segment_nuclei(h: np.ndarray, tissue: np.ndarray, threshold: float,
                   min_distance: int = 2) -> np.ndarray:
    """(H, W) int32 nucleus labels (0 = none) of a hematoxylin density map.

    ``h > threshold`` on tissue, opened 3x3; distance transform; markers = connected plateaus
    of its local maxima (``2 min_distance + 1`` window) of depth >= 1 px; OpenCV watershed on
    the inverted distance splits touching nuclei.
    """
    mask = ((h > threshold) & tissue).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if not mask.any():
        return np.zeros(h.shape, np.int32)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    k = 2 * int(min_distance) + 1
    peaks = ((dist >= cv2.dilate(dist, np.ones((k, k), np.uint8))) & (dist >= 1.0)
             ).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks, connectivity=8)
    markers = markers.astype(np.int32) + 1                 # 1 = background, 2.. = nuclei
    markers[(mask > 0) & (peaks == 0)] = 0                 # to be flooded
    img = cv2.cvtColor((255 - np.clip(dist * (255.0 / max(float(dist.max()), 1.0)), 0, 255)
                        ).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(img, markers)
    labels = markers - 1
    labels[(labels < 1) | (mask == 0)] = 0
    return labels


def nucleus_props(labels: np.ndarray, h: np.ndarray) -> dict:
    """Per-nucleus x, y (centroid), area, eccentricity, solidity, mean h; vectorised moments.

    Solidity here = area / (pi a b) with a, b the semi-axes of the ellipse with the same
    second moments (1 for an ellipse, lower for lobed or merged shapes).
    """
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    n = int(labels.max()) + 1
    ys, xs = np.divmod(idx, labels.shape[1])
    xs = xs.astype(np.float64)
    ys = ys.astype(np.float64)
    area = np.bincount(lab, minlength=n).astype(np.float64)
    keep = area > 0
    keep[0] = False
    a = np.maximum(area, 1.0)
    mx = np.bincount(lab, xs, n) / a
    my = np.bincount(lab, ys, n) / a
    cxx = np.bincount(lab, xs * xs, n) / a - mx ** 2 + 1.0 / 12
    cyy = np.bincount(lab, ys * ys, n) / a - my ** 2 + 1.0 / 12
    cxy = np.bincount(lab, xs * ys, n) / a - mx * my
    tr, det = cxx + cyy, np.maximum(cxx * cyy - cxy ** 2, 1e-9)
    disc = np.sqrt(np.maximum(tr ** 2 / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 1e-9)
    ecc = np.sqrt(np.clip(1.0 - l2 / l1, 0.0, 1.0))
    sol = np.clip(area / (4.0 * np.pi * np.sqrt(l1 * l2)), 0.0, 1.0)
    nh = np.bincount(lab, h.ravel()[idx].astype(np.float64), n) / a
    return {"x": mx[keep], "y": my[keep], "area": area[keep], "ecc": ecc[keep],
            "sol": sol[keep], "nh": nh[keep]}


# ---------------------------------------------------------------------------------- texture

def _lbp_lut() -> np.ndarray:
    """256 -> uniform rotation-invariant code: number of set bits if <= 2 transitions, else 9."""
    codes = np.arange(256)
    bits = (codes[:, None] >> np.arange(8)) & 1
    trans = (bits != np.roll(bits, 1, axis=1)).sum(1)
    return np.where(trans <= 2, bits.sum(1), 9).astype(np.uint8)


_LBP_LUT = _lbp_lut()
_LBP_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def lbp_uniform(x: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W) uint8 uniform LBP codes 0..9 (P=8, R=1, integer neighbours)."""
    p = np.pad(x, 1, mode="edge")
    hh, ww = x.shape
    code = np.zeros(x.shape, np.uint8)
    for bit, (dy, dx) in enumerate(_LBP_OFFSETS):
        code |= (p[1 + dy:1 + dy + hh, 1 + dx:1 + dx + ww] >= x).astype(np.uint8) << bit
    return _LBP_LUT[code]


def _glcm_tables() -> np.ndarray:
    """(L² + 1, 4) weight, contrast, homogeneity, product of each pair code a * L + b (code
    L² = a pair with a non-tissue pixel: all zero)."""
    a, b = np.divmod(np.arange(GLCM_LEVELS ** 2), GLCM_LEVELS)
    d2 = (a - b) ** 2.0
    t = np.stack([np.ones_like(d2), d2, 1.0 / (1.0 + d2), a * b * 1.0], 1)
    return np.concatenate([t, np.zeros((1, 4))])


_GLCM_TABLE = _glcm_tables()


def glcm_maps(q: np.ndarray, t: np.ndarray, d: int) -> list[np.ndarray]:
    """Pair maps (4 x (H, W) float32) at distance ``d`` of quantised ``q`` (uint8, L levels):
    pair count, contrast, homogeneity and product of the horizontal and vertical pixel pairs
    whose two pixels are tissue ``t``, each pair attributed to its first pixel. A window's sums
    of these give its GLCM contrast, homogeneity and correlation exactly."""
    ll = GLCM_LEVELS * GLCM_LEVELS
    out = [np.zeros(q.shape, np.float32) for _ in range(4)]
    table = _GLCM_TABLE.astype(np.float32)
    for sa, sb in (((slice(None), slice(0, -d)), (slice(None), slice(d, None))),
                   ((slice(0, -d), slice(None)), (slice(d, None), slice(None)))):
        code = q[sa] * np.uint8(GLCM_LEVELS) + q[sb]
        code[~(t[sa] & t[sb])] = ll
        for k, o in enumerate(out):
            o[sa] += table[:, k][code]
    return out


# ------------------------------------------------------------------------------ cell tables

class _Cells:
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


# ---------------------------------------------------------------------------------- section

def section_cells(work: np.ndarray, cell: int, seed: int = 0) -> tuple[_Cells, dict]:
    """Every per-pixel and per-nucleus quantity of a working-resolution image in cell tables.

    ``work``: (H, W, 3) uint8 with H, W multiples of ``cell``. Returns the tables (channels
    ``PIXEL_NAMES`` then ``NUC_NAMES``) and a summary (stain vectors and method, nucleus
    threshold, number of nuclei).
    """
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
        he, method = _unit(RUIFROK.copy()), "ruifrok"
    stains = np.stack([he[0], he[1], _unit(np.cross(he[0], he[1]))])
    inv = np.linalg.inv(stains)                                  # OD = C @ stains
    scale = np.maximum(np.percentile(np.abs(odf[sample] @ inv), 99, axis=0), 1e-3)
    m = (inv / scale).astype(np.float32)                         # normalised concentrations
    h, e, r = (cv2.transform(od, m[:, k][None, :]).reshape(tissue.shape) for k in range(3))
    del od, odf
    for x in (h, e, r):
        x[~tissue] = 0.0
    thr = _otsu(np.clip(h.ravel()[sample], 0, 2))
    labels = segment_nuclei(h, tissue, thr)
    nuclear = labels > 0
    cells = _Cells(h.shape, cell)
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
    assert len(cells.channels) == len(PIXEL_NAMES) + len(NUC_NAMES)
    return cells, {"stains": stains.round(4).tolist(), "stain_method": method,
                   "nucleus_threshold": float(thr), "nuclei": n}


def _otsu(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values ``v`` (1-D)."""
    hist, edges = np.histogram(v, bins=bins)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = (np.sum(hist * mids) - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(np.argmax(between[:-1]))])


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


class HistologyExtractor:
    """``features.encoder = "histology"``: the descriptors of the module docstring."""

    def __init__(self, features_cfg, grids: Optional[dict] = None):
        self.cfg = features_cfg
        self.downsample = int(features_cfg.histology_downsample)
        self.cell = int(features_cfg.histology_cell)
        self.mode = str(features_cfg.histology_standardize)
        self.token_grid = int(features_cfg.token_grid)
        self.grids = dict(grids or {})
        if self.downsample < 1 or self.cell < 1:
            raise ConfigError("features.histology_downsample and features.histology_cell "
                              "must be >= 1")
        if self.mode not in STANDARDIZE:
            raise ConfigError(f"features.histology_standardize={self.mode!r}: expected one of "
                              f"{', '.join(STANDARDIZE)}")
        self.last_summary: dict = {}

    def cache_key(self, section_name, image, spot_xy, region_origin, global_origin,
                  data_cfg) -> str:
        desc = {
            "version": HISTOLOGY_VERSION, "encoder": "histology",
            "downsample": self.downsample, "cell": self.cell, "standardize": self.mode,
            "grids": [int(self.grids.get(k, self.token_grid))
                      for k in ("spot", "region", "global")],
            "sizes": [int(data_cfg.spot_size), int(data_cfg.region_size),
                      int(data_cfg.global_size)],
            "section": str(section_name), "image_shape": [int(v) for v in image.shape],
            "image": hashlib.blake2b(np.ascontiguousarray(image).data,
                                     digest_size=16).hexdigest(),
            "coords": coords_hash(spot_xy, region_origin, global_origin),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]

    def section_features(self, section_name: str, image: np.ndarray, spot_xy: np.ndarray,
                         region_origin: np.ndarray, global_origin: np.ndarray, data_cfg,
                         cache_dir=None, spot_ids=None) -> dict:
        """Same arguments and outputs as ``FeatureExtractor.section_features`` with
        D = ``HISTOLOGY_DIM``; tokens are the descriptors of the token_grid² sub-windows."""
        del spot_ids
        spot_xy, region_origin, global_origin = section_inputs(section_name, image, spot_xy,
                                                               region_origin, global_origin)
        cache_path = None
        if cache_dir is not None:
            key = self.cache_key(section_name, image, spot_xy, region_origin, global_origin,
                                 data_cfg)
            cache_path = Path(cache_dir) / f"{safe_name(section_name)}-{key}.npz"
            cached = load_cache(cache_path, len(spot_xy), len(region_origin),
                                 len(global_origin))
            if cached is not None:
                logger.info("section %s: histology features loaded from %s", section_name,
                            cache_path)
                return cached
        out = self.describe(section_name, image, spot_xy, region_origin, global_origin,
                            data_cfg)
        if cache_path is not None:
            save_cache(cache_path, out)
        return out

    def describe(self, section_name, image, spot_xy, region_origin, global_origin,
                 data_cfg) -> dict:
        """Computes the six arrays (no cache)."""
        ss, rs, gs = int(data_cfg.spot_size), int(data_cfg.region_size), int(
            data_cfg.global_size)
        full = {"spot": np.concatenate([spot_xy - ss // 2, spot_xy - ss // 2 + ss], 1)
                if len(spot_xy) else np.zeros((0, 4)),
                "region": np.concatenate([region_origin, region_origin + rs], 1).astype(float),
                "global": np.concatenate([global_origin, global_origin + gs], 1).astype(float)}
        allb = np.concatenate(list(full.values()))
        hgt, wid = image.shape[:2]
        unit = self.downsample * self.cell
        x0 = int(max(0, np.floor(allb[:, 0].min() / unit) * unit)) if len(allb) else 0
        y0 = int(max(0, np.floor(allb[:, 1].min() / unit) * unit)) if len(allb) else 0
        x1 = int(min(wid, np.ceil(allb[:, 2].max()))) if len(allb) else wid
        y1 = int(min(hgt, np.ceil(allb[:, 3].max()))) if len(allb) else hgt
        with tqdm(total=4, desc=f"histology {section_name}", unit="step", leave=False) as bar:
            crop = image[y0:y1, x0:x1]
            if self.downsample > 1:
                crop = cv2.resize(crop, (max(1, crop.shape[1] // self.downsample),
                                         max(1, crop.shape[0] // self.downsample)),
                                  interpolation=cv2.INTER_AREA)
            ph, pw = (-crop.shape[0]) % self.cell, (-crop.shape[1]) % self.cell
            if ph or pw:      # background (white) up to a multiple of the cell side
                crop = cv2.copyMakeBorder(crop, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                          value=(255, 255, 255))
            bar.update(1)
            try:
                cells, summary = section_cells(np.ascontiguousarray(crop), self.cell)
            except DataError as e:
                raise DataError(f"section {section_name!r}: {e}") from e
            self.last_summary = summary
            logger.info("section %s: histology stains %s (%s), %d nuclei", section_name,
                        summary["stains"][:2], summary["stain_method"], summary["nuclei"])
            bar.update(2)
            out = {}
            origin = np.array([x0, y0, x0, y0], np.float64)
            for level in ("spot", "region", "global"):
                b = (full[level] - origin) / self.downsample
                g = int(self.grids.get(level, self.token_grid))
                sums, area = cells.box_sums(np.concatenate([b, token_boxes(b, g)]))
                d = descriptors_from_sums(sums, area, float(self.downsample))
                n = len(b)
                feats, toks = d[:n], d[n:].reshape(n, g * g, HISTOLOGY_DIM)
                if self.mode == "section":
                    feats, toks = standardize(feats, toks)
                out[f"{level}_feats"] = feats.astype(np.float32)
                out[f"{level}_tokens"] = toks.astype(np.float16)
            bar.update(1)
        for k, v in out.items():
            if not np.isfinite(v).all():
                raise DataError(f"section {section_name!r}: non-finite {k} from the histology "
                                "descriptors")
        return out
