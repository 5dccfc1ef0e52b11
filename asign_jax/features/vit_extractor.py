"""Patch features through a pathology foundation-model ViT (``features.encoder = "vit"``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from asign_jax.errors import ConfigError
from asign_jax.features.cache import coords_hash, image_hash
from asign_jax.features.extract import (CACHE_VERSION, FeatureExtractor, adaptive_avg_pool,
                                        encoder_settings)
from asign_jax.features.vit import ViT, ViTArch, get_arch, pooled_and_tokens
from asign_jax.features.vit_weights import file_hash, load_vit_weights

logger = logging.getLogger(__name__)


def _vit_forward(model, variables, images, grid, mean, std):
    """uint8 (B, S, S, 3) -> feature (B, F) float32, tokens (B, grid², F) float16."""
    x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
    cls, patches = model.apply(variables, x)
    f, t = pooled_and_tokens(model.arch, cls, patches, adaptive_avg_pool, grid)
    return f, t.astype(jnp.float16)


_vit_forward_jit = jax.jit(_vit_forward, static_argnums=(0, 3, 4, 5))


class ViTExtractor(FeatureExtractor):
    """A pathology foundation-model ViT (``features.arch`` of ``vit.ARCHS``) from the user's
    weights file (``features.weights``; nothing is downloaded), with ``FeatureExtractor``'s
    section loop, batching and cache (keyed by a hash of the weights file's bytes).

    Patches are resized (cv2.INTER_AREA) to the configured input rounded down to a multiple
    of the patch size; the position embeddings are interpolated when that differs from the
    arch's training size. Features follow the arch's output rule (``vit.pooled_and_tokens``).
    """

    def __init__(self, features_cfg, variables: Optional[dict] = None,
                 arch: Optional[ViTArch] = None):
        self.cfg = features_cfg
        self.batch_size, dtype, self.token_grid = encoder_settings(features_cfg)
        self.arch_name = str(features_cfg.arch)
        self.arch = arch if arch is not None else get_arch(self.arch_name)
        self.feature_dim = self.arch.feature_dim
        self.model = ViT(self.arch, dtype=dtype)
        weights = str(features_cfg.weights or "")
        if variables is None:
            if not weights:
                raise ConfigError(f"features.encoder='vit' needs features.weights: the "
                                  f"checkpoint of features.arch={self.arch_name!r} "
                                  f"({self.arch.hf_repo or 'a timm state dict'}; .bin/.pth/.pt/"
                                  ".safetensors/.npz), downloaded by you under its licence")
            variables = load_vit_weights(weights, self.arch, self.arch_name)
            self._weights_id = file_hash(weights)
        else:
            leaves = jax.tree_util.tree_leaves(variables)
            self._weights_id = "given:" + hashlib.blake2b(
                b"".join(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes()
                         for a in leaves), digest_size=16).hexdigest()
        if dtype != jnp.float32:
            variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
        self.variables = jax.device_put(variables)
        self._logged_grid: set[int] = set()
        self._logged_side: set[int] = set()

    def input_side(self, input_size: int) -> int:
        p = self.arch.patch
        s = max(p, (int(input_size) // p) * p)
        if s != int(input_size) and int(input_size) not in self._logged_side:
            logger.info("%s: input %d px is not a multiple of the patch size %d: using %d px",
                        self.arch_name, input_size, p, s)
            self._logged_side.add(int(input_size))
        return s

    def grid_for(self, input_size: int) -> int:
        m = self.input_side(input_size) // self.arch.patch
        return min(m, self.token_grid)

    def _forward(self, batch: np.ndarray, grid: int):
        return _vit_forward_jit(self.model, self.variables, batch, grid,
                                tuple(self.arch.mean), tuple(self.arch.std))

    def cache_key(self, section_name, image: np.ndarray, spot_xy, region_origin, global_origin,
                  data_cfg) -> str:
        c = self.cfg
        desc = {
            "version": CACHE_VERSION, "encoder": "vit", "arch": self.arch_name,
            "arch_fields": dataclasses.asdict(self.arch), "weights": self._weights_id,
            "dtype": str(c.dtype),
            "sizes": [int(data_cfg.spot_size), int(data_cfg.region_size),
                      int(data_cfg.global_size)],
            "inputs": [int(c.spot_input), int(c.region_input), int(c.global_input)],
            "token_grid": self.token_grid, "section": str(section_name),
            "image_shape": [int(v) for v in image.shape],
            "image": image_hash(image),
            "coords": coords_hash(spot_xy, region_origin, global_origin),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()
                              ).hexdigest()[:20]
