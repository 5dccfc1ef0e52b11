"""Patch features for a section: spot patches, region tiles and global tiles through ResNet-50.

``encoders.make_extractor(config.features)`` returns the extractor ``prepare`` uses; every
kind (``FeatureExtractor`` here, ``vit_extractor.ViTExtractor`` for foundation-model ViTs,
``EmbeddingsReader`` for precomputed embeddings, ``PatchFeatureReader`` for TRIDENT / HEST
files, ``HistologyExtractor`` for the H&E descriptors) offers the same
``section_features(...)``, returning::

    spot_feats (N, D) float32, spot_tokens (N, T, D) float16, region_feats (R, D) float32,
    region_tokens (R, T, D) float16, global_feats (Q, D) float32, global_tokens (Q, T, D) float16

(the spot token grid feeds the baselines that read a spot's token grid, ``models/egn.py``,
``his2st.py``, ``triplex.py``; it costs no extra forward pass).

Results of ``FeatureExtractor.section_features`` are cached per section in ``cache_dir`` as
``<section>-<key>.npz``; the key hashes everything the features depend on (encoder, weights
file path/size/mtime, init seed, patch and input sizes, token grid, dtype, section name,
a hash of the image's pixels, a hash of the coordinates), so a changed setting or a replaced
image (e.g. a truncated file copied again) never reuses a stale file.

``input_files`` lists the files an encoder reads (for the run folder's fingerprints);
``adaptive_avg_pool`` is the token pooling shared with the ViT and the models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from asign_jax.errors import ConfigError, DataError
from asign_jax.features.augment import imagenet_normalize
from asign_jax.features.cache import coords_hash as _coords_hash
from asign_jax.features.cache import image_hash
from asign_jax.features.cache import load_cache as _load_cache
from asign_jax.features.cache import safe_name as _safe_name
from asign_jax.features.cache import save_cache as _save_cache
from asign_jax.features.cache import section_inputs
from asign_jax.features.patches import crop_patches
from asign_jax.features.resnet import (DEFAULT_RESIDUAL_INIT_SCALE, ResNet50,
                                       fixed_seed_variables)
from asign_jax.features.torch_import import load_torchvision_state_dict

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
CACHE_VERSION = 2          # bump when the feature computation changes (2: + spot_tokens)


def _forward(model, variables, images, grid):
    """uint8 (B, S, S, 3) -> pooled (B, 2048) float32, tokens (B, grid², 2048) float16."""
    pooled, fmap = model.apply(variables, imagenet_normalize(images), train=False)
    return pooled.astype(jnp.float32), adaptive_avg_pool(fmap, grid).astype(jnp.float16)


# one jit shared by all extractors: a second extractor (another seed or weights file)
# reuses the compiled executables of the same model, batch and input size
_forward_jit = jax.jit(_forward, static_argnums=(0, 3))


def encoder_settings(features_cfg) -> tuple:
    """(batch size, compute dtype, token grid side) of a network encoder, checked."""
    batch_size = int(features_cfg.batch_size)
    if batch_size < 1:
        raise ConfigError(f"features.batch_size={batch_size} must be >= 1")
    try:
        dtype = jnp.dtype(features_cfg.dtype)
    except TypeError as e:
        raise ConfigError(f"features.dtype={features_cfg.dtype!r} is not a dtype") from e
    return batch_size, dtype, int(features_cfg.token_grid)


def feature_map_size(input_size: int) -> int:
    """Side of ResNet-50's last feature map for a square ``input_size`` input (5 stride-2 ops)."""
    n = int(input_size)
    for _ in range(5):     # stem conv, maxpool, 3 strided stages: floor((n - 1) / 2) + 1
        n = (n - 1) // 2 + 1
    return n


def _adaptive_pool_matrix(n: int, g: int) -> np.ndarray:
    """(g, n) averaging matrix of torch's adaptive_avg_pool (bins floor(i n/g)..ceil((i+1)n/g))."""
    m = np.zeros((g, n), np.float32)
    for i in range(g):
        lo, hi = (i * n) // g, -((-(i + 1) * n) // g)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(fmap: jax.Array, grid: int) -> jax.Array:
    """(B, h, w, C) -> (B, grid*grid, C) adaptive average pooling (row-major tokens)."""
    b, h, w, c = fmap.shape
    ph = jnp.asarray(_adaptive_pool_matrix(h, grid))
    pw = jnp.asarray(_adaptive_pool_matrix(w, grid))
    t = jnp.einsum("ih,bhwc,jw->bijc", ph, fmap.astype(jnp.float32), pw)
    return t.reshape(b, grid * grid, c)


class FeatureExtractor:
    """ResNet-50 patch encoder (torchvision weights or a fixed-seed initialisation).

    The model is built once; one jitted apply per input size runs fixed-size batches
    (the last batch is zero-padded), so nothing recompiles across sections.
    """

    def __init__(self, features_cfg, variables: Optional[dict] = None,
                 _encoder_ok: bool = False):
        self.cfg = features_cfg
        if features_cfg.encoder != "resnet50" and not _encoder_ok:
            raise ConfigError(f"features.encoder={features_cfg.encoder!r}: FeatureExtractor "
                              "handles 'resnet50' (use make_extractor for 'embeddings')")
        self.batch_size, dtype, self.token_grid = encoder_settings(features_cfg)
        self.model = ResNet50(dtype=dtype)
        weights = str(features_cfg.weights or "")
        self._weights_id = "fixed-seed"
        if variables is None:
            if weights:
                variables = load_torchvision_state_dict(weights)
            else:
                variables = fixed_seed_variables(int(features_cfg.init_seed))
                logger.info("ResNet-50 without weights: fixed-seed initialisation "
                            "(init_seed=%d), identical for every section",
                            int(features_cfg.init_seed))
        if weights:
            p = Path(weights)
            st = p.stat() if p.exists() else None
            self._weights_id = (f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}" if st
                                else str(p))
        self.variables = jax.device_put(variables)
        self._logged_grid: set[int] = set()

    # ---------------------------------------------------------------------------- encoding

    feature_dim = FEATURE_DIM

    def input_side(self, input_size: int) -> int:
        """Side the patches are resized to for a configured input of ``input_size``."""
        return int(input_size)

    def _forward(self, batch: np.ndarray, grid: int):
        """uint8 (B, S, S, 3) -> (feats (B, D) float32, tokens (B, grid², D) float16)."""
        return _forward_jit(self.model, self.variables, batch, grid)

    def grid_for(self, input_size: int) -> int:
        """Token grid used at ``input_size`` (the configured grid, or the map size if smaller)."""
        m = feature_map_size(input_size)
        if m >= self.token_grid:
            return self.token_grid
        if input_size not in self._logged_grid:
            logger.info("feature map at %d px input is %dx%d, smaller than token_grid=%d: "
                        "using a %dx%d token grid", input_size, m, m, self.token_grid, m, m)
            self._logged_grid.add(input_size)
        return m

    def encode(self, patches: np.ndarray, input_size: int, tokens: bool,
               progress: Optional[Callable[[int], None]] = None):
        """Encodes uint8 patches.

        Args:
          patches: (n, h, w, 3) uint8; resized to ``input_size`` (cv2.INTER_AREA) if needed.
          input_size: side fed to the network.
          tokens: also return the pooled token grid of the last feature map.
          progress: called with the number of patches done after each batch.

        Returns:
          feats (n, 2048) float32, tokens (n, T, 2048) float16 or None.
        """
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[-1] != 3:
            raise ValueError(f"patches must be (n, h, w, 3), got {patches.shape}")
        n, s = len(patches), self.input_side(int(input_size))
        grid = self.grid_for(s)
        if n == 0:
            return (np.zeros((0, self.feature_dim), np.float32),
                    np.zeros((0, grid * grid, self.feature_dim), np.float16) if tokens else None)
        outs = []
        for i in range(0, n, self.batch_size):
            chunk = patches[i:i + self.batch_size]
            batch = np.zeros((self.batch_size, s, s, 3), np.uint8)
            for j, p in enumerate(chunk):
                if p.shape[:2] != (s, s):
                    p = cv2.resize(p, (s, s), interpolation=cv2.INTER_AREA)
                batch[j] = p
            outs.append((len(chunk), self._forward(batch, grid)))
            if progress is not None:
                progress(len(chunk))
        feats = np.concatenate([np.asarray(f)[:m] for m, (f, _) in outs])
        toks = np.concatenate([np.asarray(t)[:m] for m, (_, t) in outs]) if tokens else None
        return feats, toks

    # ---------------------------------------------------------------------------- sections

    def cache_key(self, section_name, image: np.ndarray, spot_xy, region_origin, global_origin,
                  data_cfg) -> str:
        """Hex key of everything a section's features depend on (``image``: (H, W, 3) uint8)."""
        c = self.cfg
        desc = {
            "version": CACHE_VERSION, "encoder": "resnet50", "weights": self._weights_id,
            "init_seed": int(c.init_seed), "dtype": str(c.dtype),
            "init": f"pcg64-he-fanin-r{DEFAULT_RESIDUAL_INIT_SCALE}",
            "sizes": [int(data_cfg.spot_size), int(data_cfg.region_size),
                      int(data_cfg.global_size)],
            "inputs": [int(c.spot_input), int(c.region_input), int(c.global_input)],
            "token_grid": self.token_grid, "section": str(section_name),
            "image_shape": [int(v) for v in image.shape],
            "image": image_hash(image),
            "coords": _coords_hash(spot_xy, region_origin, global_origin),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]

    def section_features(self, section_name: str, image: np.ndarray, spot_xy: np.ndarray,
                         region_origin: np.ndarray, global_origin: np.ndarray, data_cfg,
                         cache_dir=None, spot_ids=None) -> dict:
        """Features of one section (see the module docstring for the returned arrays).

        Args:
          section_name: section id (cache file name and messages).
          image: (H, W, 3) uint8 full-resolution image.
          spot_xy: (N, 2) spot centres (x, y) in pixels; patches of ``data_cfg.spot_size``.
          region_origin / global_origin: (R, 2) / (Q, 2) top-left (x, y) of the tiles of
            ``data_cfg.region_size`` / ``global_size``; edge tiles are reflect-padded.
          data_cfg: ``config.data``.
          cache_dir: folder of the per-section cache (None = no caching).
          spot_ids: unused here (the embeddings reader matches spots by id).
        """
        del spot_ids
        spot_xy, region_origin, global_origin = section_inputs(section_name, image, spot_xy,
                                                               region_origin, global_origin)
        cache_path = None
        if cache_dir is not None:
            key = self.cache_key(section_name, image, spot_xy, region_origin,
                                 global_origin, data_cfg)
            cache_path = Path(cache_dir) / f"{_safe_name(section_name)}-{key}.npz"
            cached = _load_cache(cache_path, len(spot_xy), len(region_origin),
                                 len(global_origin))
            if cached is not None:
                logger.info("section %s: features loaded from %s", section_name, cache_path)
                return cached

        c = self.cfg
        total = len(spot_xy) + len(region_origin) + len(global_origin)
        with tqdm(total=total, desc=f"features {section_name}", unit="patch",
                  leave=False) as bar:
            chunk = 4 * self.batch_size
            parts, tparts = [], []
            for i in range(0, len(spot_xy), chunk):   # crop lazily: N patches can be large
                patches = crop_patches(image, spot_xy[i:i + chunk], int(data_cfg.spot_size))
                f, t = self.encode(patches, int(c.spot_input), True, bar.update)
                parts.append(f)
                tparts.append(t)
            g = self.grid_for(int(c.spot_input))
            out = {"spot_feats": (np.concatenate(parts) if parts
                                  else np.zeros((0, self.feature_dim), np.float32)),
                   "spot_tokens": (np.concatenate(tparts) if tparts
                                   else np.zeros((0, g * g, self.feature_dim), np.float16))}
            for level, origin, size, inp in (
                    ("region", region_origin, int(data_cfg.region_size), int(c.region_input)),
                    ("global", global_origin, int(data_cfg.global_size), int(c.global_input))):
                feats, toks = [], []
                for i in range(0, len(origin), chunk):
                    # centre = origin + size // 2 makes crop_patches' top-left exactly origin
                    patches = crop_patches(image, origin[i:i + chunk] + size // 2, size)
                    f, t = self.encode(patches, inp, True, bar.update)
                    feats.append(f)
                    toks.append(t)
                g = self.grid_for(inp)
                out[f"{level}_feats"] = (np.concatenate(feats) if feats
                                         else np.zeros((0, self.feature_dim), np.float32))
                out[f"{level}_tokens"] = (np.concatenate(toks) if toks
                                          else np.zeros((0, g * g, self.feature_dim), np.float16))
        for k, v in out.items():
            if not np.isfinite(v).all():
                raise DataError(f"section {section_name!r}: non-finite {k} from the encoder")
        if cache_path is not None:
            _save_cache(cache_path, out)
        return out


def input_files(features_cfg) -> list[Path]:
    """The files the features are read from (weights, embeddings or patch-feature files), for
    the run folder's check that a reused ``prepare`` stage was made from the same bytes."""
    enc = features_cfg.encoder
    if enc in ("resnet50", "resnet50+histology", "vit") and features_cfg.weights:
        paths = [Path(features_cfg.weights)]
    elif enc == "embeddings" and features_cfg.embeddings:
        paths = [Path(features_cfg.embeddings)]
    elif enc == "patch_features":
        paths = [p for d in str(features_cfg.patch_features).split(",") if d.strip()
                 for p in sorted(Path(d.strip()).glob("*.h5*"))]
    else:
        paths = []
    return [p for p in paths if p.is_file()]
