"""The per-section feature cache shared by every extractor: ``<cache_dir>/<section>-<key>.npz``
holding the six arrays of ``section_features`` (see ``features/extract.py``)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax import atomic
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("spot_feats", "spot_tokens", "region_feats", "region_tokens", "global_feats",
               "global_tokens")


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "section"


def coords_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def image_hash(image) -> str:
    """What a section's pixels depend on, for a cache key: a slide read lazily
    (``data.slide.WorkingImage``) by its file identity and scale, an array by its bytes."""
    if hasattr(image, "fingerprint"):
        return image.fingerprint()
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def load_cache(path: Path, n: int, r: int, q: int) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in OUTPUT_KEYS}
    except Exception as e:   # corrupt / truncated: recompute
        logger.warning("%s: unreadable feature cache (%s); recomputing", path, e)
        return None
    if (len(out["spot_feats"]), len(out["region_feats"]), len(out["global_feats"])) != (n, r, q):
        logger.warning("%s: feature cache has the wrong number of rows; recomputing", path)
        return None
    return out


def save_cache(path: Path, arrays: dict) -> None:
    atomic.write_npz(path, **arrays)


def section_inputs(section_name: str, image, spot_xy, region_origin, global_origin) -> tuple:
    """The checked arguments of a ``section_features``: (spot_xy (N, 2) float64,
    region_origin (R, 2) int64, global_origin (Q, 2) int64); the image must be (H, W, 3) uint8."""
    spot_xy = np.asarray(spot_xy, np.float64).reshape(-1, 2)
    region_origin = np.asarray(region_origin, np.int64).reshape(-1, 2)
    global_origin = np.asarray(global_origin, np.int64).reshape(-1, 2)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"section {section_name!r}: image must be (H, W, 3) uint8, got "
                        f"{None if image is None else (image.shape, image.dtype)}")
    return spot_xy, region_origin, global_origin
