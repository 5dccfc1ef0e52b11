"""Ground-truth section affines of the synthetic data (for the registration QC's TRE)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.errors import DataError
from asign_jax.preprocess.prepared import PreparedSample

log = logging.getLogger(__name__)


def load_ground_truth(config, prepared: PreparedSample,
                      workdir: Optional[Path] = None) -> Optional[list[np.ndarray]]:
    """Per-section (3, 3) canonical -> section px affines for synthetic data, else None.

    Read from ``<config.data.root or workdir/synthetic_data>/ground_truth/<section>.json``.
    """
    if str(config.data.format) != "synthetic":
        return None
    if config.data.root:
        root = Path(config.data.root)
    elif workdir is not None:
        root = Path(workdir) / "synthetic_data"
    else:
        return None
    out = []
    for s in prepared.sections:
        path = root / "ground_truth" / f"{s.name}.json"
        if not path.exists():
            log.warning("%s: missing; no TRE for sample %s", path, prepared.sample_id)
            return None
        try:
            a = np.asarray(json.loads(path.read_text())["affine"], np.float64)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: unreadable ground truth ({e})") from e
        if a.shape != (3, 3):
            raise DataError(f"{path}: 'affine' must be 3x3, got {a.shape}")
        out.append(a)
    return out
