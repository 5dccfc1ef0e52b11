"""Atomic file writes: write a temporary file beside the target, then rename it over.

A reader (or a relaunch after a kill) sees either the old file or the whole new one, never a
half-written one. The temporary name carries the process id, so two processes writing the
same target never share a temporary file; it ends in ``.tmp`` (``.tmp.npz`` for npz).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path to write; renames it to ``path`` if the block succeeds.

    ``suffix`` is appended to the temporary name (``".npz"`` keeps numpy from adding one).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_safe(x):
    """NaN/inf -> None, numpy scalars and arrays -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(path, obj) -> Path:
    """Strict JSON (NaN/inf written as null, see ``json_safe``), indented, atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=1, allow_nan=False))


def write_npz(path, **arrays) -> Path:
    """``np.savez`` (uncompressed) atomically."""
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)
