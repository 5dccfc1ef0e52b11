"""Import torchvision ResNet-50 weights (a ``state_dict``) into ``ResNet50`` variables.

Accepted files:

* ``.pth`` / ``.pt`` written by ``torch.save(model.state_dict(), path)`` (needs torch; a
  checkpoint dict holding the state dict under ``"state_dict"`` or ``"model"`` and a
  ``"module."`` prefix from DataParallel are accepted too);
* ``.npz`` with the same keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), for
  machines without torch. Convert once where torch is installed::

      python -m asign_jax.features.torch_import resnet50.pth resnet50.npz

Conv weights OIHW -> HWIO; BN weight/bias -> params scale/bias, running_mean/var ->
batch_stats mean/var; ``fc.*`` and ``num_batches_tracked`` are ignored.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from asign_jax import atomic
from asign_jax.errors import DataError
from asign_jax.features.resnet import ResNet50

logger = logging.getLogger(__name__)

_BN_PARAM = {"scale": "weight", "bias": "bias"}
_BN_STAT = {"mean": "running_mean", "var": "running_var"}


def _torch_prefix(flax_path: tuple[str, ...]) -> str:
    """('layer2_0', 'downsample_bn') -> 'layer2.0.downsample.1'."""
    parts = []
    for p in flax_path:
        if p.startswith("layer"):
            stage, block = p.split("_")
            parts += [stage, block]
        elif p == "downsample_conv":
            parts += ["downsample", "0"]
        elif p == "downsample_bn":
            parts += ["downsample", "1"]
        else:
            parts.append(p)
    return ".".join(parts)


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"{path}: weights file does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except Exception as e:  # zipfile/ValueError/OSError: unreadable
            raise DataError(f"{path}: cannot read .npz weights ({e})") from e
    try:
        import torch
    except ImportError as e:
        raise DataError(f"{path}: reading a torch state_dict needs torch; install it or "
                        "convert the file once elsewhere with `python -m "
                        "asign_jax.features.torch_import in.pth out.npz`") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: cannot read torch weights ({e})") from e
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: expected a state_dict (a mapping of tensors), got "
                        f"{type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            out[str(k)] = v.detach().cpu().float().numpy() if v.is_floating_point() \
                else v.detach().cpu().numpy()
    return out


def state_dict_to_variables(sd: Mapping[str, np.ndarray], source: str = "state_dict") -> dict:
    """Converts a torchvision ResNet-50 state dict (numpy arrays) to flax variables.

    Raises DataError naming ``source`` and the first missing or mis-shaped key.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    shapes = jax.eval_shape(lambda: ResNet50().init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, 32, 32, 3)), train=False))
    used = set()

    def take(key: str, want: tuple[int, ...], transform=None) -> np.ndarray:
        if key not in sd:
            raise DataError(f"{source}: missing key {key!r} (not a torchvision ResNet-50 "
                            "state_dict?)")
        arr = np.asarray(sd[key], dtype=np.float32)
        if transform is not None:
            arr = transform(arr)
        if arr.shape != tuple(want):
            raise DataError(f"{source}: key {key!r} has shape {np.asarray(sd[key]).shape}, "
                            f"expected one converting to {tuple(want)}")
        used.add(key)
        return arr

    def convert(tree, kind: str, path=()):
        out = {}
        for name, leaf in tree.items():
            if isinstance(leaf, Mapping):
                out[name] = convert(leaf, kind, path + (name,))
                continue
            prefix = _torch_prefix(path)
            if name == "kernel":  # conv: OIHW -> HWIO
                out[name] = take(f"{prefix}.weight", leaf.shape,
                                 lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a)
            elif kind == "params":
                out[name] = take(f"{prefix}.{_BN_PARAM[name]}", leaf.shape)
            else:
                out[name] = take(f"{prefix}.{_BN_STAT[name]}", leaf.shape)
        return out

    variables = {"params": convert(shapes["params"], "params"),
                 "batch_stats": convert(shapes["batch_stats"], "batch_stats")}
    ignored = [k for k in sd if k not in used and not k.startswith("fc.")
               and not k.endswith("num_batches_tracked")]
    if ignored:
        logger.warning("%s: %d unexpected keys ignored (first: %s)", source, len(ignored),
                       ignored[:3])
    return variables


def load_torchvision_state_dict(path) -> dict:
    """Reads a torchvision ResNet-50 ``state_dict`` (.pth/.pt/.npz) as ``ResNet50`` variables.

    Returns ``{"params": ..., "batch_stats": ...}`` (nested dicts of float32 numpy arrays).
    """
    path = Path(path)
    sd = _read_state_dict(path)
    variables = state_dict_to_variables(sd, source=str(path))
    logger.info("loaded torchvision ResNet-50 weights from %s", path)
    return variables


def convert_to_npz(src, dst) -> Path:
    """Writes the state dict of ``src`` (.pth/.pt) to ``dst`` (.npz) after validating it."""
    src, dst = Path(src), Path(dst)
    sd = _read_state_dict(src)
    state_dict_to_variables(sd, source=str(src))  # validate before writing
    return atomic.write_npz(dst, **sd)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m asign_jax.features.torch_import in.pth out.npz")
    logging.basicConfig(level=logging.INFO)
    print(convert_to_npz(sys.argv[1], sys.argv[2]))
