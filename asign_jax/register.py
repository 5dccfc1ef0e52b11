"""Registers every prepared sample onto its middle section.

    python -m asign_jax.register --config configs/her2st.py --workdir DIR [--samples A,B]

Reads ``<workdir>/prepared/index.json`` and writes, per sample,
``<workdir>/registration/<sample_id>/{registered.npz, qc.json, overlay.png}``. For synthetic
data (``config.data.format == "synthetic"``) the ground-truth affines in
``<config.data.root>/ground_truth/<section>.json`` (root "" = ``<workdir>/synthetic_data``,
as in ``asign_jax.prepare``) give the QC target registration error.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
from absl import app, flags

from asign_jax.errors import DataError
from asign_jax.preprocess.prepared import PreparedSample, list_prepared
from asign_jax.registration.qc import format_table
from asign_jax.registration.stack import register_sample

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


def run(config, workdir: Path, samples: Optional[list[str]] = None) -> dict:
    """Registers the prepared samples; returns {sample_id: qc dict}."""
    from tqdm import tqdm

    workdir = Path(workdir)
    ids = list_prepared(workdir)
    if samples:
        missing = sorted(set(samples) - set(ids))
        if missing:
            raise DataError(f"{workdir / 'prepared' / 'index.json'}: samples {missing} are not "
                            f"prepared (have {ids})")
        ids = [s for s in ids if s in samples]
    qcs = {}
    t0 = time.perf_counter()
    for sid in tqdm(ids, desc="samples"):
        prepared = PreparedSample.load(workdir, sid)
        gt = load_ground_truth(config, prepared, workdir)
        register_sample(prepared, config, workdir, ground_truth=gt)
        qcs[sid] = json.loads((workdir / "registration" / sid / "qc.json").read_text())
    print()
    for sid, qc in qcs.items():
        print(format_table(sid, qc))
    print(f"\n{len(qcs)} samples in {time.perf_counter() - t0:.1f} s; results in "
          f"{workdir / 'registration'}/<sample>/{{registered.npz, qc.json, overlay.png}}")
    return qcs


def main(argv):
    del argv
    f = flags.FLAGS
    logging.getLogger().setLevel(logging.INFO)
    samples = [s for s in f.samples.split(",") if s] or None
    run(f.config, Path(f.workdir), samples)


if __name__ == "__main__":
    from asign_jax.entry import define_flags
    define_flags("Work directory (holds prepared/).",
                 samples=("", "Comma-separated sample ids ('' = all prepared)."))
    app.run(main)
