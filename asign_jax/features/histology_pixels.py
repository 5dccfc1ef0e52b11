"""Per-pixel H&E measurements of the histology encoder: stains, nuclei, LBP and GLCM codes.

* stain (``stain_vectors``): the section's own hematoxylin / eosin optical-density vectors by
  Macenko et al. (2009) (SVD plane of the OD, 1st / 99th percentile angles), Ruifrok &
  Johnston's vectors as the fallback when the estimate is degenerate.
* nuclei (``segment_nuclei``, ``nucleus_props``): Otsu threshold of the normalised H, a 3x3
  opening, distance transform, its local maxima as markers, OpenCV's watershed; per nucleus
  area, eccentricity, moment solidity and mean H.
* texture: uniform rotation-invariant LBP (P=8, R=1) codes and GLCM pair maps of H and E
  quantised to ``GLCM_LEVELS`` levels (``glcm_maps``), summed per window by the cell tables.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

RUIFROK = np.array([[0.650, 0.704, 0.286],       # hematoxylin
                    [0.072, 0.990, 0.105]],      # eosin
                   np.float64)
"""Ruifrok & Johnston (2001) OD vectors, the fallback when the section's estimate fails."""

TISSUE_OD = 0.15           # Macenko's beta: a pixel with max OD above this is tissue
GLCM_LEVELS = 8


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 optical density -log((I + 1) / 256)."""
    lut = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
    return lut[rgb]


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` (..., 3) scaled to unit L2 norm."""
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
    v = unit_rows(v)
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
        he, method = unit_rows(RUIFROK.copy()), "ruifrok"
    res = unit_rows(np.cross(he[0], he[1]))
    return np.stack([he[0], he[1], res]), method


def concentrations(rgb: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 H, E, residual densities (OD = C @ stains)."""
    inv = np.linalg.inv(np.asarray(stains, np.float64)).astype(np.float32)
    od = optical_density(rgb)
    return (od.reshape(-1, 3) @ inv).reshape(od.shape)


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


def otsu(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values ``v`` (1-D)."""
    hist, edges = np.histogram(v, bins=bins)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = (np.sum(hist * mids) - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(np.argmax(between[:-1]))])


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
