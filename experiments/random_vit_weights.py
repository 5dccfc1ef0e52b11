"""Writes a randomly initialised checkpoint of an arch of ``asign_jax.features.vit.ARCHS``.

    python experiments/random_vit_weights.py --arch tiny_test --out runs/h20/tiny_test.safetensors

timm key names (HF for Phikon's ``keys == "hf"`` archs is not written: timm names only);
``.safetensors`` (needs the ``safetensors`` package), ``.pth`` / ``.bin`` (needs torch) or
``.npz``. For the end-to-end check and benchmarks without real weights; the features of a
random network carry no pathology.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

from asign_jax.features.vit import get_arch  # noqa: E402
from asign_jax.features.vit_weights import random_state_dict  # noqa: E402

_ARCH = flags.DEFINE_string("arch", "tiny_test", "a row of asign_jax.features.vit.ARCHS")
_OUT = flags.DEFINE_string("out", "runs/experiments/random_vit_weights/tiny_test.safetensors",
                           "checkpoint to write (.safetensors, .pth, .bin or .npz)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the random weights")


def write(arch_name: str, out, seed: int = 0) -> Path:
    arch = get_arch(arch_name)
    if arch.keys != "timm":
        raise app.UsageError(f"{arch_name}: only timm-named archs are written")
    sd = random_state_dict(arch, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(sd, str(out))
    elif out.suffix in (".pth", ".pt", ".bin"):
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, out)
    elif out.suffix == ".npz":
        np.savez(out, **sd)
    else:
        raise app.UsageError(f"{out}: use .safetensors, .pth, .pt, .bin or .npz")
    return out


def main(argv):
    del argv
    print(write(_ARCH.value, _OUT.value, _SEED.value))


if __name__ == "__main__":
    app.run(main)
