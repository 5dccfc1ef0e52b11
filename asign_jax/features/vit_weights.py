"""Weights of the Flax ``vit.ViT``: timm / transformers state dicts read and converted.

A timm ``state_dict`` maps one to one onto ``ViT``'s parameters (``vit.py``'s docstring has
the key table; conv kernels OIHW -> HWIO, dense kernels transposed); HF ``ViTModel`` keys
(Phikon) are renamed to timm's first (``hf_to_timm``). Files: ``.safetensors`` (numpy only),
``.npz``, or ``.bin`` / ``.pth`` / ``.pt`` (torch). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from flax.traverse_util import unflatten_dict

from asign_jax.errors import DataError
from asign_jax.features.torch_import import _read_state_dict
from asign_jax.features.vit import ViTArch, param_shapes

logger = logging.getLogger(__name__)


def random_state_dict(arch: ViTArch, seed: int = 0) -> dict[str, np.ndarray]:
    """A timm-named state dict of random weights (for tests, benchmarks and the end-to-end
    check without real weights): N(0, 0.02) weights, LayerNorm 1/0, LayerScale 0.1."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for path, shape in sorted(param_shapes(arch).items()):
        key, transform = _timm_key(path)
        tshape = _torch_shape(path, shape)
        if path[-1] == "scale":
            v = np.ones(tshape, np.float32) + 0.05 * rng.standard_normal(tshape, np.float32)
        elif path[-1] == "gamma":
            v = np.full(tshape, 0.1, np.float32)
        else:
            v = 0.02 * rng.standard_normal(tshape, dtype=np.float32)
        out[key] = v
    return out


def _timm_key(path: tuple[str, ...]) -> tuple[str, Optional[str]]:
    """flax path -> (timm key, transform): ('blocks_3','attn','qkv','kernel') ->
    ('blocks.3.attn.qkv.weight', 'dense')."""
    parts = []
    for p in path[:-1]:
        parts += p.split("_", 1) if p.startswith("blocks_") else [p]
    leaf = path[-1]
    if path[0] == "patch_embed":
        parts = ["patch_embed", "proj"]
    if leaf == "kernel":
        return ".".join(parts + ["weight"]), ("conv" if path[0] == "patch_embed" else "dense")
    if leaf == "scale":
        return ".".join(parts + ["weight"]), None
    return ".".join(parts + [leaf]), None


def _torch_shape(path, shape):
    if path[-1] != "kernel":
        return shape
    if len(shape) == 4:                       # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return (shape[1], shape[0])


def hf_to_timm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a transformers ``ViTModel`` state dict (Phikon) to timm keys; q/k/v are
    concatenated into ``attn.qkv``. Unknown keys are kept (and reported as unexpected)."""
    sd = {(k[4:] if k.startswith("vit.") else k): v for k, v in sd.items()}
    out, qkv = {}, {}
    simple = {"embeddings.cls_token": "cls_token",
              "embeddings.position_embeddings": "pos_embed",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    sub = {"layernorm_before": "norm1", "layernorm_after": "norm2",
           "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
           "output.dense": "mlp.fc2"}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
            continue
        if k.startswith("pooler."):
            continue
        if k.startswith("encoder.layer."):
            i, rest = k[len("encoder.layer."):].split(".", 1)
            name, leaf = rest.rsplit(".", 1)
            if name.startswith("attention.attention."):
                qkv.setdefault((i, leaf), {})[name.split(".")[-1]] = v
                continue
            if name in sub:
                out[f"blocks.{i}.{sub[name]}.{leaf}"] = v
                continue
        out[k] = v
    for (i, leaf), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(
                [parts["query"], parts["key"], parts["value"]], axis=0)
        else:
            for n, v in parts.items():
                out[f"encoder.layer.{i}.attention.attention.{n}.{leaf}"] = v
    return out


_IGNORED_PREFIXES = ("head.", "fc_norm.", "pooler.")

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file with numpy only (8-byte header length, JSON header,
    raw little-endian buffer); BF16 tensors are widened to float32."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except Exception as e:
        raise DataError(f"{path}: cannot read safetensors weights ({e})") from e
    out = {}
    for k, meta in header.items():
        if k == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        raw = np.asarray(buf[lo:hi])
        if meta["dtype"] == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif meta["dtype"] in _ST_DTYPES:
            a = raw.view(np.dtype(_ST_DTYPES[meta["dtype"]]).newbyteorder("<"))
        else:
            raise DataError(f"{path}: tensor {k!r} has unsupported dtype {meta['dtype']}")
        out[k] = a.reshape(meta["shape"]).astype(np.float32) if a.dtype.kind == "f" \
            else a.reshape(meta["shape"])
    return out


def read_state_dict(path) -> dict[str, np.ndarray]:
    """``.safetensors`` (numpy only), ``.npz``, or ``.bin``/``.pth``/``.pt`` (needs torch)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: weights file does not exist")
    if path.suffix == ".safetensors":
        sd = read_safetensors(path)
    else:
        sd = _read_state_dict(path)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def state_dict_to_params(sd: Mapping[str, np.ndarray], arch: ViTArch, arch_name: str,
                         source: str) -> dict:
    """Converts a timm (or, for ``keys == 'hf'``, transformers) state dict to ``ViT`` params.

    Raises one-line DataError naming the arch, ``source`` and the first missing / unexpected /
    mis-shaped keys.
    """
    if arch.keys == "hf":
        sd = hf_to_timm(sd)
    shapes = param_shapes(arch)
    want = {}
    for path, shape in shapes.items():
        key, transform = _timm_key(path)
        want[key] = (path, shape, transform)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and not k.startswith(_IGNORED_PREFIXES)]
    if missing or unexpected:
        raise DataError(
            f"features.arch={arch_name!r}: {source}: state dict does not match "
            f"({len(missing)} missing keys, first {missing[:3]}; {len(unexpected)} unexpected "
            f"keys, first {unexpected[:3]})")
    out = {}
    for key, (path, shape, transform) in want.items():
        a = np.asarray(sd[key], dtype=np.float32)
        if transform == "conv" and a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
        elif transform == "dense" and a.ndim == 2:
            a = a.T
        if a.shape != shape:
            raise DataError(f"features.arch={arch_name!r}: {source}: key {key!r} has shape "
                            f"{np.asarray(sd[key]).shape}, expected one converting to {shape}")
        out[path] = np.ascontiguousarray(a)
    return unflatten_dict(out)


def load_vit_weights(path, arch: ViTArch, arch_name: str) -> dict:
    """Reads a weights file as ``ViT(arch)`` params ({'params': ...})."""
    sd = read_state_dict(path)
    params = state_dict_to_params(sd, arch, arch_name, str(path))
    logger.info("loaded %s weights from %s", arch_name, path)
    return {"params": params}


def file_hash(path, chunk: int = 1 << 24) -> str:
    """blake2b of the file's bytes (the feature cache key of a weights file)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
