"""The feature extractor of each ``features.encoder`` (``make_extractor``), and the
``resnet50+histology`` pair (``ConcatExtractor``)."""

from __future__ import annotations

import numpy as np

from asign_jax.errors import ConfigError
from asign_jax.features.cache import OUTPUT_KEYS
from asign_jax.features.embeddings import EmbeddingsReader
from asign_jax.features.extract import FeatureExtractor
from asign_jax.features.histology import HistologyExtractor
from asign_jax.features.patch_features import PatchFeatureReader
from asign_jax.features.vit_extractor import ViTExtractor


class ConcatExtractor:
    """``features.encoder = "resnet50+histology"``: the ResNet-50 features and the histology
    descriptors side by side (D = 2048 + histology_cells.HISTOLOGY_DIM); the histology token grid follows the
    ResNet's at each scale so the token rows line up. Each part is cached by its own key."""

    def __init__(self, features_cfg):
        self.resnet = FeatureExtractor(features_cfg, _encoder_ok=True)
        c = features_cfg
        self.histology = HistologyExtractor(c, grids={
            "spot": self.resnet.grid_for(int(c.spot_input)),
            "region": self.resnet.grid_for(int(c.region_input)),
            "global": self.resnet.grid_for(int(c.global_input))})

    def section_features(self, section_name, image, spot_xy, region_origin, global_origin,
                         data_cfg, cache_dir=None, spot_ids=None) -> dict:
        a = self.resnet.section_features(section_name, image, spot_xy, region_origin,
                                         global_origin, data_cfg, cache_dir, spot_ids)
        b = self.histology.section_features(section_name, image, spot_xy, region_origin,
                                            global_origin, data_cfg, cache_dir, spot_ids)
        return {k: np.concatenate([a[k], b[k].astype(a[k].dtype)], axis=-1)
                for k in OUTPUT_KEYS}


def make_extractor(features_cfg):
    """The extractor for ``features_cfg.encoder``: ``resnet50``, ``embeddings``, ``histology``
    (features/histology.py), ``resnet50+histology`` (both, concatenated), ``vit``
    (features/vit.py) or ``patch_features`` (features/patch_features.py)."""
    if features_cfg.encoder == "resnet50":
        return FeatureExtractor(features_cfg)
    if features_cfg.encoder == "embeddings":
        return EmbeddingsReader(features_cfg)
    if features_cfg.encoder == "histology":
        return HistologyExtractor(features_cfg)
    if features_cfg.encoder == "resnet50+histology":
        return ConcatExtractor(features_cfg)
    if features_cfg.encoder == "vit":
        return ViTExtractor(features_cfg)
    if features_cfg.encoder == "patch_features":
        return PatchFeatureReader(features_cfg)
    raise ConfigError(f"features.encoder={features_cfg.encoder!r}: expected one of "
                      "resnet50, embeddings, histology, resnet50+histology, vit, patch_features")
