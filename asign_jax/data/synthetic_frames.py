"""The frames of a synthetic section: canonical block frame -> section pixels, and back.

Each section is rendered in the canonical frame (image_size px square, x = column, y = row),
then warped into its own image frame by the forward map  F(p) = u + d(u),  u = A p,  where A
is a random affine (rotation, translation, anisotropic scale; 3x3 on homogeneous column
vectors (x, y, 1)) and d a smooth elastic displacement with |d| <= elastic_px, defined in the
section frame. Spot pixel coordinates are F(canonical spot centre), so each spot sits on the
tissue its counts were drawn from. The ground-truth JSON keeps A and d's modes
(``synthetic.py``'s docstring).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

LOWRES_STEP = 16             # px; smooth fields are evaluated on this grid, then upsampled


def hex_lattice(n_spots: int, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_spots`` points of a Visium-style hexagonal lattice, row by row.

    Rows are ``pitch * sqrt(3) / 2`` apart and every other row is shifted by ``pitch / 2``
    (10x Visium: 55 um spots, 100 um centre to centre), filling a near-square patch.

    Returns:
      xy: (n_spots, 2) float64 centres (x = column, y = row), the first at (0, 0).
      array_xy: (n_spots, 2) int64 (column, row) array indices, Visium-style (x doubled so
        that neighbours in a row differ by 2 and the shifted rows take the odd columns).
    """
    n = int(n_spots)
    cols = max(1, int(math.ceil(math.sqrt(n * 2.0 / math.sqrt(3.0)))))
    row, col = np.divmod(np.arange(n), cols)
    xy = np.stack([(col + 0.5 * (row % 2)) * pitch, row * pitch * math.sqrt(3.0) / 2.0], 1)
    return xy.astype(np.float64), np.stack([2 * col + row % 2, row], 1).astype(np.int64)


def canonical_to_section(gt: Mapping, xy: np.ndarray) -> np.ndarray:
    """Exact forward map F(p) = A p + d(A p): canonical (N, 2) -> section pixels (N, 2)."""
    u = apply_affine(np.asarray(gt["affine"], np.float64), xy)
    return u + elastic(gt["elastic"], u)


def section_to_canonical(gt: Mapping, xy: np.ndarray, iterations: int = 8) -> np.ndarray:
    """Inverse of ``canonical_to_section``: section pixels (N, 2) -> canonical (N, 2)."""
    q = np.asarray(xy, np.float64).reshape(-1, 2)
    u = q.copy()
    for _ in range(iterations):
        u = q - elastic(gt["elastic"], u)
    return apply_affine(np.linalg.inv(np.asarray(gt["affine"], np.float64)), u)


def true_reference_coords(gt_l: Mapping, gt_ref: Mapping, pixel_xy: np.ndarray,
                          exact: bool = False) -> np.ndarray:
    """Maps section-l pixel points (N, 2) into the reference section's pixel frame.

    ``exact=False``: the affine part only, A_ref A_l^{-1} q (what an affine registration can
    recover; off by at most about 2 x elastic_px). ``exact=True``: F_ref(F_l^{-1}(q)).
    """
    if exact:
        return canonical_to_section(gt_ref, section_to_canonical(gt_l, pixel_xy))
    m = np.asarray(gt_ref["affine"], np.float64) @ np.linalg.inv(
        np.asarray(gt_l["affine"], np.float64))
    return apply_affine(m, pixel_xy)


def apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points (N, 2) through the 3x3 affine ``m`` (homogeneous column vectors), (N, 2)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return xy @ m[:2, :2].T + m[:2, 2]


def elastic(modes: Mapping, u: np.ndarray) -> np.ndarray:
    """Elastic displacement d(u) at section-frame points (N, 2), (N, 2)."""
    u = np.asarray(u, np.float64).reshape(-1, 2)
    out = np.zeros_like(u)
    for axis, key in enumerate(("x", "y")):
        for kx, ky, phase, amp in modes[key]:
            out[:, axis] += amp * np.cos(kx * u[:, 0] + ky * u[:, 1] + phase)
    return out


def random_transform(rng: np.random.Generator, p: Mapping) -> dict:
    """Random affine + elastic modes of one section (the JSON-ready ground truth part)."""
    s = p["image_size"]
    c = s / 2.0
    angle = rng.uniform(-p["max_rotation_deg"], p["max_rotation_deg"])
    t = rng.uniform(-p["max_translation_px"], p["max_translation_px"], 2)
    scale = rng.uniform(1.0 - p["max_scale"], 1.0 + p["max_scale"], 2)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = rot @ np.diag(scale)
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + t - lin @ np.array([c, c])
    modes = {}
    for key in ("x", "y"):
        n = 3
        wavelength = rng.uniform(0.35, 0.9, n) * s
        direction = rng.uniform(0, 2 * np.pi, n)
        k = 2 * np.pi / wavelength
        w = rng.uniform(0.3, 1.0, n)
        amp = w / w.sum() * p["elastic_px"] / math.sqrt(2.0)   # |d| <= elastic_px
        modes[key] = [[float(k[i] * math.cos(direction[i])), float(k[i] * math.sin(direction[i])),
                       float(rng.uniform(0, 2 * np.pi)), float(amp[i])] for i in range(n)]
    return {"affine": m.tolist(), "rotation_deg": float(angle), "translation_px": t.tolist(),
            "scale": scale.tolist(), "elastic_px": p["elastic_px"], "elastic": modes}


def inverse_maps(gt: Mapping, size: int) -> np.ndarray:
    """cv2.remap map section pixel -> canonical pixel (x, y), (size, size, 2) float32.

    Computed exactly on a coarse grid and upsampled bilinearly: exact for the affine part
    except in the outer half cell (background), error << 0.1 px for the smooth elastic part.
    """
    import cv2

    step = LOWRES_STEP
    n = -(-size // step)
    cq = (np.arange(n) + 0.5) * step - 0.5                  # cv2.resize sample positions
    qx, qy = np.meshgrid(cq, cq)
    q = np.stack([qx.ravel(), qy.ravel()], 1)
    u = q.copy()
    for _ in range(8):
        u = q - elastic(gt["elastic"], u)
    p = apply_affine(np.linalg.inv(np.asarray(gt["affine"], np.float64)), u)
    maps = cv2.resize(p.reshape(n, n, 2).astype(np.float32), (n * step, n * step),
                      interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(maps[:size, :size])
