"""Encoding time of a foundation-model ViT on this machine, float32 vs bfloat16.

    python experiments/bench_vit.py --arch uni --size 224 --batch 8 --batches 2

Random weights (``vit_weights.random_state_dict``: the speed does not depend on them) of an arch of
``asign_jax.features.vit.ARCHS`` (``uni`` = ViT-L/16), through ``ViTExtractor.encode`` (the
jitted forward, the arch's output rule and a 4 x 4 token grid, as the pipeline runs it).
One warm-up batch compiles; the timed batches give seconds per 1,000 patches (extrapolated
from ``batch * batches`` patches). ``--dtypes`` is comma-separated. Prints one JSON line per
dtype and writes them to ``<out>/bench_vit.json`` (default ``runs/experiments/bench_vit``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from asign_jax import entry
from asign_jax.config import base_config
from asign_jax.errors import ConfigError
from asign_jax.features.vit import get_arch
from asign_jax.features.vit_extractor import ViTExtractor
from asign_jax.features.vit_weights import random_state_dict, state_dict_to_params


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


def main(args):
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes:
        raise ConfigError("--dtypes: give at least one compute dtype (e.g. float32,bfloat16)")
    rows = [bench(args.arch, args.size, args.batch, args.batches, d) for d in dtypes]
    for r in rows:
        print(json.dumps(r))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_vit.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    entry.run_script(main, "bench_vit", config="none",
                     arch=("uni", "A row of asign_jax.features.vit.ARCHS."),
                     size=(224, "Input side, px."),
                     batch=(8, "Patches per batch."),
                     batches=(2, "Timed batches (after one warm-up batch)."),
                     dtypes=("float32,bfloat16", "Compute dtypes, comma-separated."))
