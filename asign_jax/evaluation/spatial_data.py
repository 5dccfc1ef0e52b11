"""AnnData in the scverse spatial convention, shared by every writer of per-spot results.

* ``obs_names``: ``"<section>_<original spot id>"`` (unique across sections); ``obs`` has
  ``section`` (categorical, the library id), ``layer`` and ``spot_id`` (the original id);
* ``obsm["spatial"]``: (N, 2) spot centre (x = column, y = row) in full-resolution pixels of
  the spot's OWN section image; ``obsm["spatial_3d"]``: (N, 3) registered (x, y) in the
  reference section's pixels and z;
* ``uns["spatial"][<section>]``: ``{"images": {"hires", "lowres"}, "scalefactors":
  {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"}, "metadata"}``,
  the layout of Space Ranger / ``scanpy.read_visium`` that ``sc.pl.spatial`` and
  ``squidpy.pl.spatial_scatter`` read (``library_key="section"`` for several sections).

Images are uint8 RGB; Space Ranger's sizes: hires long side 2000 px, lowres 600 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from asign_jax.data.slide import WorkingImage, is_plain, open_slide
from asign_jax.registration.preprocess import read_small_rgb

HIRES_LONG_SIDE = 2000
LOWRES_LONG_SIDE = 600


def thumbnail(image_path, long_side: int, image_scale: float = 1.0) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 downscaled image (long side ``long_side``) and its scale factor
    (thumbnail px per full-resolution (working) px); slides are read from a low level."""
    if not is_plain(image_path) or float(image_scale) != 1.0:
        w = WorkingImage(open_slide(image_path), float(image_scale))
        rgb, full_hw, _ = w.read_small(int(long_side))
        w.slide.close()
        return rgb, rgb.shape[1] / float(full_hw[1])
    rgb, full_hw, _ = read_small_rgb(Path(image_path), int(long_side))
    return rgb, rgb.shape[1] / float(full_hw[1])


def spatial_library(image_path, spot_diameter_px: float, *, hires: bool = True,
                    image_scale: float = 1.0) -> dict:
    """One library of ``uns["spatial"]`` for a section image (``hires=False``: lowres only)."""
    images, scalefactors = {}, {"spot_diameter_fullres": float(spot_diameter_px)}
    sizes = {"lowres": LOWRES_LONG_SIDE}
    if hires:
        sizes["hires"] = HIRES_LONG_SIDE
    for key, side in sizes.items():
        images[key], scalefactors[f"tissue_{key}_scalef"] = thumbnail(image_path, side,
                                                                      image_scale)
    return {"images": images, "scalefactors": scalefactors,
            "metadata": {"source_image_path": str(image_path)}}


def obs_names(sections: np.ndarray, spot_ids: np.ndarray) -> list[str]:
    """``"<section>_<spot id>"`` per spot."""
    return [f"{s}_{i}" for s, i in zip(np.asarray(sections).tolist(),
                                         np.asarray(spot_ids).tolist())]


def str_column(values, index):
    """A string obs column h5ad can write: categorical (object categories) when values repeat,
    else object dtype (anndata 0.12 cannot write pandas 3's default Arrow strings, and turns
    repeating strings into categoricals on write)."""
    import pandas as pd

    v = np.asarray(values).astype(str).astype(object)
    uniq = pd.unique(v)
    if len(uniq) < len(v):
        return pd.Series(pd.Categorical(v, categories=pd.Index(sorted(uniq), dtype=object)),
                         index=index)
    return pd.Series(v, index=index, dtype=object)


def make_adata(x: np.ndarray, genes: Sequence[str], section_names: Sequence[str],
               layer: np.ndarray, spot_ids: np.ndarray, pixel_xy: np.ndarray,
               xyz: np.ndarray, columns: Optional[Mapping[str, np.ndarray]] = None,
               layers: Optional[Mapping[str, np.ndarray]] = None):
    """The AnnData of the module docstring (no images yet: see ``spatial_library``).

    Args:
      x: (N, G) values; genes: (G,); section_names: (L,) names of the layers.
      layer: (N,) int layer of each spot; spot_ids: (N,) original spot ids.
      pixel_xy: (N, 2) spot centres in their own section's pixels; xyz: (N, 3) registered.
      columns: extra obs columns (N,); layers: extra (N, G) layers.
    """
    import anndata as ad
    import pandas as pd

    layer = np.asarray(layer).astype(int)
    names = np.asarray(list(section_names), dtype=object)[layer]
    # object-dtype strings: anndata 0.12 cannot write pandas 3's default Arrow strings
    index = pd.Index(obs_names(names, spot_ids), dtype=object)
    obs = pd.DataFrame({"section": pd.Categorical.from_codes(
                            layer, categories=pd.Index(list(section_names), dtype=object)),
                        "layer": layer}, index=index)
    for k, v in {"spot_id": np.asarray(spot_ids).astype(str), **(columns or {})}.items():
        obs[k] = str_column(v, index) if np.asarray(v).dtype.kind in "USO" else np.asarray(v)
    adata = ad.AnnData(X=np.asarray(x, np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index([str(g) for g in genes], dtype=object)))
    adata.obsm["spatial"] = np.asarray(pixel_xy, np.float64)
    adata.obsm["spatial_3d"] = np.asarray(xyz, np.float64)
    for k, v in (layers or {}).items():
        adata.layers[k] = np.asarray(v, np.float32)
    return adata
