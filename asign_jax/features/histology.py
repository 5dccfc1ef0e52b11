"""Label-free H&E descriptors of every spot patch, region tile and global tile, and a token grid.

``features.encoder = "histology"``. A section is described by what H&E shows, with no learned
weight and no label (docs/features.md):

1. **Stain** (``stain_vectors``): the section's own hematoxylin / eosin optical-density vectors,
   estimated from its tissue pixels by Macenko et al. (2009) (SVD plane of the OD, 1st / 99th
   percentile angles), Ruifrok & Johnston's vectors as the fallback when the estimate is
   degenerate; per-pixel concentrations of H, E and the residual (third, orthogonal vector) by
   least squares, each divided by its 99th percentile over the section's tissue (Macenko's
   normalisation, so a section stained darker or with another hue gives the same maps).
2. **Nuclei** (``segment_nuclei``): Otsu threshold of the normalised H over the section's
   tissue, a 3x3 opening, distance transform, its local maxima as markers, OpenCV's watershed;
   per nucleus: area, eccentricity and a moment solidity (area / area of the moment-equivalent
   ellipse; a convex hull per nucleus would need a Python loop), mean H, nearest-neighbour
   distance to the next nucleus centre.
3. **Texture and composition**: uniform rotation-invariant LBP (P=8, R=1) histograms of H and
   E, GLCM (Haralick) contrast, dissimilarity, homogeneity and correlation of H and E quantised
   to 8 levels at distances 1 and 2 (horizontal + vertical pairs pooled; these four statistics
   are expectations over the co-occurrence matrix, so summing pair maps over a window gives
   the window's GLCM values exactly), Laplacian energy of H and E, tissue, eosin-rich /
   nuclei-poor (stroma) and nuclear area fractions, H and E histograms (fractions above 4
   levels: the CDF, i.e. the quantiles read the other way round).

Every per-pixel quantity is summed into cells of ``features.histology_cell`` working pixels,
and every window's (and token sub-window's) statistic comes from summed-area tables of those
cells, so a window costs O(1) whatever its size: the image is processed once per section at
1 / ``features.histology_downsample`` of its resolution. Windows are snapped to the cell grid
and clipped to the image (no reflect padding: statistics are over the pixels that exist).

Context (``features.histology_context``, window sides in full-resolution px): every row (spot,
region, global) also gets the descriptors of windows of those sides centred on its centre,
appended after its own (D = ``HISTOLOGY_DIM`` * (1 + len)); each token of the row carries its
own sub-window's descriptors and the row's context blocks. Context windows are clipped to the
box the section is described over (its tiles' bounding box), so the row's own descriptors and
the section's stain / nucleus statistics are those without context. A spot's neighbourhood (how much
tumour, stroma, infiltrate is around it) is what a 224 px patch alone does not show, and the
summed-area tables make these windows cost no more than the spot's.

Per-section standardisation (``features.histology_standardize = "section"``): each descriptor
is z-scored over the section's own rows of the same scale (spots over its spots, tiles over
its tiles; tokens with their scale's statistics). Images only. ``"none"`` keeps raw values.

Stages: per-pixel measurements (``histology_pixels.py``), cell tables and the descriptors of
a window (``histology_cells.py``), and the section loop with its cache (here).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from asign_jax.errors import ConfigError, DataError
from asign_jax.features.cache import (coords_hash, image_hash, load_cache, safe_name,
                                      save_cache, section_inputs)
from asign_jax.features.histology_cells import (HISTOLOGY_DIM, descriptors_from_sums,
                                                section_cells, standardize, token_boxes)
from asign_jax.features.patches import read_box

logger = logging.getLogger(__name__)

HISTOLOGY_VERSION = 1      # bump when the descriptors change (part of the cache key)
STANDARDIZE = ("section", "none")


class HistologyExtractor:
    """``features.encoder = "histology"``: the descriptors of the module docstring."""

    def __init__(self, features_cfg, grids: Optional[dict] = None):
        self.cfg = features_cfg
        self.downsample = int(features_cfg.histology_downsample)
        self.cell = int(features_cfg.histology_cell)
        self.mode = str(features_cfg.histology_standardize)
        self.token_grid = int(features_cfg.token_grid)
        self.grids = dict(grids or {})
        self.context = tuple(int(v) for v in features_cfg.histology_context)
        if any(v < 1 for v in self.context):
            raise ConfigError(f"features.histology_context={self.context!r}: window sides "
                              "must be >= 1 px")
        if self.downsample < 1 or self.cell < 1:
            raise ConfigError("features.histology_downsample and features.histology_cell "
                              "must be >= 1")
        if self.mode not in STANDARDIZE:
            raise ConfigError(f"features.histology_standardize={self.mode!r}: expected one of "
                              f"{', '.join(STANDARDIZE)}")
        self.last_summary: dict = {}

    @property
    def dim(self) -> int:
        """D: the descriptors of the row's window and of each context window."""
        return HISTOLOGY_DIM * (1 + len(self.context))

    def cache_key(self, section_name, image, spot_xy, region_origin, global_origin,
                  data_cfg) -> str:
        desc = {
            "version": HISTOLOGY_VERSION, "encoder": "histology",
            "downsample": self.downsample, "cell": self.cell, "standardize": self.mode,
            "context": list(self.context),
            "grids": [int(self.grids.get(k, self.token_grid))
                      for k in ("spot", "region", "global")],
            "sizes": [int(data_cfg.spot_size), int(data_cfg.region_size),
                      int(data_cfg.global_size)],
            "section": str(section_name), "image_shape": [int(v) for v in image.shape],
            "image": image_hash(image),
            "coords": coords_hash(spot_xy, region_origin, global_origin),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]

    def section_features(self, section_name: str, image: np.ndarray, spot_xy: np.ndarray,
                         region_origin: np.ndarray, global_origin: np.ndarray, data_cfg,
                         cache_dir=None, spot_ids=None) -> dict:
        """Same arguments and outputs as ``FeatureExtractor.section_features`` with
        D = ``self.dim``; tokens are the descriptors of the token_grid² sub-windows."""
        del spot_ids
        spot_xy, region_origin, global_origin = section_inputs(section_name, image, spot_xy,
                                                               region_origin, global_origin)
        cache_path = None
        if cache_dir is not None:
            key = self.cache_key(section_name, image, spot_xy, region_origin, global_origin,
                                 data_cfg)
            cache_path = Path(cache_dir) / f"{safe_name(section_name)}-{key}.npz"
            cached = load_cache(cache_path, len(spot_xy), len(region_origin),
                                 len(global_origin))
            if cached is not None:
                logger.info("section %s: histology features loaded from %s", section_name,
                            cache_path)
                return cached
        out = self.describe(section_name, image, spot_xy, region_origin, global_origin,
                            data_cfg)
        if cache_path is not None:
            save_cache(cache_path, out)
        return out

    def describe(self, section_name, image, spot_xy, region_origin, global_origin,
                 data_cfg) -> dict:
        """Computes the six arrays (no cache)."""
        ss, rs, gs = int(data_cfg.spot_size), int(data_cfg.region_size), int(
            data_cfg.global_size)
        full = {"spot": np.concatenate([spot_xy - ss // 2, spot_xy - ss // 2 + ss], 1)
                if len(spot_xy) else np.zeros((0, 4)),
                "region": np.concatenate([region_origin, region_origin + rs], 1).astype(float),
                "global": np.concatenate([global_origin, global_origin + gs], 1).astype(float)}
        allb = np.concatenate(list(full.values()))   # context windows are clipped to this box
        hgt, wid = image.shape[:2]
        unit = self.downsample * self.cell
        x0 = int(max(0, np.floor(allb[:, 0].min() / unit) * unit)) if len(allb) else 0
        y0 = int(max(0, np.floor(allb[:, 1].min() / unit) * unit)) if len(allb) else 0
        x1 = int(min(wid, np.ceil(allb[:, 2].max()))) if len(allb) else wid
        y1 = int(min(hgt, np.ceil(allb[:, 3].max()))) if len(allb) else hgt
        with tqdm(total=4, desc=f"histology {section_name}", unit="step", leave=False) as bar:
            crop = read_box(image, x0, y0, x1, y1, self.downsample)
            ph, pw = (-crop.shape[0]) % self.cell, (-crop.shape[1]) % self.cell
            if ph or pw:      # background (white) up to a multiple of the cell side
                crop = cv2.copyMakeBorder(crop, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                                          value=(255, 255, 255))
            bar.update(1)
            try:
                cells, summary = section_cells(np.ascontiguousarray(crop), self.cell)
            except DataError as e:
                raise DataError(f"section {section_name!r}: {e}") from e
            self.last_summary = summary
            logger.info("section %s: histology stains %s (%s), %d nuclei", section_name,
                        summary["stains"][:2], summary["stain_method"], summary["nuclei"])
            bar.update(2)
            out = {}
            origin = np.array([x0, y0, x0, y0], np.float64)
            for level in ("spot", "region", "global"):
                b = (full[level] - origin) / self.downsample
                g = int(self.grids.get(level, self.token_grid))
                sums, area = cells.box_sums(np.concatenate([b, token_boxes(b, g)]))
                d = descriptors_from_sums(sums, area, float(self.downsample))
                n = len(b)
                feats, toks = d[:n], d[n:].reshape(n, g * g, HISTOLOGY_DIM)
                if self.mode == "section":
                    feats, toks = standardize(feats, toks)
                ctx = self._context(cells, b)
                if ctx is not None:
                    feats = np.concatenate([feats, ctx], 1)
                    toks = np.concatenate([toks, np.broadcast_to(
                        ctx[:, None], (n, g * g, ctx.shape[1]))], 2)
                out[f"{level}_feats"] = feats.astype(np.float32)
                out[f"{level}_tokens"] = toks.astype(np.float16)
            bar.update(1)
        for k, v in out.items():
            if not np.isfinite(v).all():
                raise DataError(f"section {section_name!r}: non-finite {k} from the histology "
                                "descriptors")
        return out

    def _context(self, cells, boxes: np.ndarray) -> Optional[np.ndarray]:
        """(n, 64 * len(context)) descriptors of the windows of ``self.context`` sides centred
        on the (n, 4) working-pixel ``boxes``; standardised like the rows' own; None if none."""
        if not self.context:
            return None
        n = len(boxes)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = [side / self.downsample / 2 for side in self.context]
        windows = np.concatenate([np.concatenate([centre - h, centre + h], 1) for h in half])
        sums, area = cells.box_sums(windows)         # one call: the integral images once
        d = descriptors_from_sums(sums, area, float(self.downsample))
        blocks = [d[k * n:(k + 1) * n] for k in range(len(self.context))]
        if self.mode == "section":
            blocks = [standardize(b, b[:, None])[0] for b in blocks]
        return np.concatenate(blocks, 1)
