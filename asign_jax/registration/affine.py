"""Affine helpers shared by the stack registration and its QC."""

from __future__ import annotations

import numpy as np

from asign_jax.registration.preprocess import SectionImage


def apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(n, 2) points through a (3, 3) affine."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return xy @ m[:2, :2].T + m[:2, 2]


def identity_small(moving: SectionImage, fixed: SectionImage) -> np.ndarray:
    """(3, 3) moving small -> fixed small for the identity in full-res px."""
    return fixed.to_small @ moving.to_full
