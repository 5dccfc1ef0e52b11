"""Image reading with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax.errors import DataError


def read_rgb(path: Path) -> np.ndarray:
    """Reads an image as (H, W, 3) uint8 RGB; raises DataError naming the file on failure."""
    import cv2

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image file does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
