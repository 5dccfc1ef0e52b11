"""The feature extractor of each ``features.encoder`` (``make_extractor``), and the
``resnet50+histology`` pair (``ConcatExtractor``)."""

from __future__ import annotations

import numpy as np

from asign_jax.config import check_choice
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


ENCODERS = {
    "resnet50": FeatureExtractor,
    "embeddings": EmbeddingsReader,
    "histology": HistologyExtractor,           # features/histology.py
    "resnet50+histology": ConcatExtractor,     # both, concatenated
    "vit": ViTExtractor,                       # features/vit.py
    "patch_features": PatchFeatureReader,      # features/patch_features.py
}
"""``features.encoder`` -> the extractor class (each built from ``config.features``)."""


def make_extractor(features_cfg):
    """The extractor for ``features_cfg.encoder`` (``ENCODERS``)."""
    return ENCODERS[check_choice("features.encoder", str(features_cfg.encoder))](features_cfg)
