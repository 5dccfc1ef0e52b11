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
