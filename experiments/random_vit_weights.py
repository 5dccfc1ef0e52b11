"""Writes a randomly initialised checkpoint of an arch of ``asign_jax.features.vit.ARCHS``.

    python experiments/random_vit_weights.py --arch tiny_test --out runs/h20

writes ``<out>/<arch>.<format>`` (here ``runs/h20/tiny_test.safetensors``; ``--out`` defaults
to ``runs/experiments/random_vit_weights``) and prints its path. timm key names (HF for
Phikon's ``keys == "hf"`` archs is not written: timm names only); ``--format safetensors``
(the default; needs the ``safetensors`` package), ``pth`` / ``pt`` / ``bin`` (needs torch) or
``npz``. For the end-to-end check and benchmarks without real weights; the features of a
random network carry no pathology.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asign_jax import entry
from asign_jax.errors import ConfigError
from asign_jax.features.vit import get_arch
from asign_jax.features.vit_weights import random_state_dict

FORMATS = ("safetensors", "pth", "pt", "bin", "npz")


def write(arch_name: str, out, seed: int = 0) -> Path:
    """Writes the random checkpoint to the file ``out`` (its suffix picks the format)."""
    arch = get_arch(arch_name)
    if arch.keys != "timm":
        raise ConfigError(f"--arch {arch_name}: only timm-named archs are written")
    out = Path(out)
    if out.suffix.lstrip(".") not in FORMATS:
        raise ConfigError(f"{out}: use .safetensors, .pth, .pt, .bin or .npz")
    sd = random_state_dict(arch, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(sd, str(out))
    elif out.suffix in (".pth", ".pt", ".bin"):
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, out)
    else:
        np.savez(out, **sd)
    return out


def main(args):
    print(write(args.arch, Path(args.out) / f"{args.arch}.{args.format}", args.seed))


if __name__ == "__main__":
    entry.run_script(main, "random_vit_weights", config="none",
                     arch=("tiny_test", "A row of asign_jax.features.vit.ARCHS."),
                     seed=(0, "Seed of the random weights."),
                     format=("safetensors", "Checkpoint format: <out>/<arch>.<format>.", FORMATS))
