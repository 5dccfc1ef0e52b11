"""Encoding time of a foundation-model ViT on this machine, float32 vs bfloat16.

    python experiments/bench_vit.py --arch uni --size 224 --batch 8 --batches 2

Random weights (``vit_weights.random_state_dict``: the speed does not depend on them) of an arch of
``asign_jax.features.vit.ARCHS`` (``uni`` = ViT-L/16), through ``ViTExtractor.encode`` (the
jitted forward, the arch's output rule and a 4 x 4 token grid, as the pipeline runs it).
One warm-up batch compiles; the timed batches give seconds per 1,000 patches (extrapolated
from ``batch * batches`` patches). Writes ``<out>/bench_vit.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

from asign_jax.config import base_config  # noqa: E402
from asign_jax.features.vit import get_arch  # noqa: E402
from asign_jax.features.vit_extractor import ViTExtractor  # noqa: E402
from asign_jax.features.vit_weights import random_state_dict, state_dict_to_params  # noqa: E402

_ARCH = flags.DEFINE_string("arch", "uni", "a row of asign_jax.features.vit.ARCHS")
_SIZE = flags.DEFINE_integer("size", 224, "input side, px")
_BATCH = flags.DEFINE_integer("batch", 8, "patches per batch")
_BATCHES = flags.DEFINE_integer("batches", 2, "timed batches (after one warm-up batch)")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
_OUT = flags.DEFINE_string("out", "runs/experiments/bench_vit", "output folder")


def bench(arch_name: str, size: int, batch: int, batches: int, dtype: str) -> dict:
    arch = get_arch(arch_name)
    params = {"params": state_dict_to_params(random_state_dict(arch), arch, arch_name,
                                             "random")}
    c = base_config().features
    c.encoder, c.arch, c.dtype, c.batch_size, c.token_grid = "vit", arch_name, dtype, batch, 4
    ex = ViTExtractor(c, variables=params)
    x = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3)).astype(np.uint8)
    t0 = time.perf_counter()
    ex.encode(x, size, tokens=True)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        f, _ = ex.encode(x, size, tokens=True)
    dt = time.perf_counter() - t0
    n = batch * batches
    return {"arch": arch_name, "size": size, "dtype": dtype, "batch": batch, "patches": n,
            "first_batch_s": round(compile_s, 2), "s_per_1000_patches": round(dt / n * 1000, 1),
            "feature_dim": int(f.shape[1]), "finite": bool(np.isfinite(f).all())}


def main(argv):
    del argv
    rows = [bench(_ARCH.value, _SIZE.value, _BATCH.value, _BATCHES.value, d)
            for d in _DTYPES.value]
    for r in rows:
        print(json.dumps(r))
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_vit.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
