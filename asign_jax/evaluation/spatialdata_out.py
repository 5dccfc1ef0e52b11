"""``volume.zarr``: the block as SpatialData (scverse; napari-spatialdata, spatialdata-plot).

Elements (``<S>`` = a section name):

* images ``<S>_he``: the section's H&E, multiscale (``IMAGE_SCALES`` halvings), read from a low
  pyramid level (long side at most ``image_long_side`` px, so level 0 is never held whole);
* shapes ``<S>_spots``: every spot of the section (measured and virtual) as a circle of the
  lattice's spot diameter, centred on ``obsm['spatial']`` (the section's working px), index =
  ``instance_id`` (0..n-1 in the section's spot order);
* table ``table``: the AnnData of ``volume.h5ad`` (same X, layers, obs, obsm) plus obs
  ``region`` (the spots element) and ``instance_id``, annotating the shapes.

Coordinate systems: ``<S>`` (one per section: the section's working px; the image carries the
scale from its thumbnail px) and ``block`` (shared: the registration affine section px ->
reference px, and z as a translation along a third axis when the transform library takes one;
``attrs["z"]`` always holds z per section, ``attrs["z_unit"]`` its unit).

``spatialdata`` is optional: `write_volume_zarr` returns None (one logged line) without it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax.data.slide import WorkingImage, open_slide

logger = logging.getLogger(__name__)

IMAGE_SCALES = (2, 2)
IMAGE_LONG_SIDE = 4096


def available() -> bool:
    try:
        import spatialdata  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - missing, or broken optional stack
        return False


def section_thumbnail(image_path, image_scale: float, long_side: int):
    """(h, w, 3) uint8 image from a low level and the working px per thumbnail px."""
    w = WorkingImage(open_slide(image_path), image_scale)
    try:
        rgb, hw, to_small = w.read_small(long_side)
    finally:
        w.slide.close()
    return rgb, hw[1] / rgb.shape[1], hw[0] / rgb.shape[0]


def write_volume_zarr(path, adata, sections: Sequence, affines: Optional[np.ndarray],
                      z: Sequence[float], spot_diameter_px: dict, *, z_unit: str = "layer",
                      image_long_side: int = IMAGE_LONG_SIDE) -> Optional[Path]:
    """Writes ``path`` (module docstring); returns it, or None without spatialdata.

    Args:
      path: the ``volume.zarr`` folder (replaced when present).
      adata: the volume AnnData (obs ``layer``, obsm ``spatial``), as written to volume.h5ad.
      sections: prepared sections in layer order (``name``, ``image_path``, ``image_scale``).
      affines: (L, 3, 3) section px -> reference px (None = identity).
      z: (L,) z per layer; spot_diameter_px: {section: diameter in its working px}.
    """
    if not available():
        logger.warning("spatialdata is not installed: %s skipped (pip install -r "
                       "requirements-scverse.txt)", path)
        return None
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Affine, Identity, Scale, Sequence as TSeq

    path = Path(path)
    layer = np.asarray(adata.obs["layer"]).astype(int)
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    n_layers = len(sections)
    affines = (np.tile(np.eye(3), (n_layers, 1, 1)) if affines is None
               else np.asarray(affines, np.float64))
    images, shapes, regions = {}, {}, np.empty(adata.n_obs, dtype=object)
    instance = np.zeros(adata.n_obs, np.int64)
    for l, s in enumerate(sections):
        name = str(s.name)
        block = Affine(affines[l], input_axes=("x", "y"), output_axes=("x", "y"))
        rows = np.flatnonzero(layer == l)
        radius = 0.5 * float(spot_diameter_px[name])
        shape_key = f"{name}_spots"
        shapes[shape_key] = ShapesModel.parse(
            xy[rows], geometry=0, radius=np.full(len(rows), radius),
            index=pd.Index(np.arange(len(rows))),
            transformations={name: Identity(), "block": block})
        regions[rows] = shape_key
        instance[rows] = np.arange(len(rows))
        if s.image_path:
            rgb, sx, sy = section_thumbnail(s.image_path, float(getattr(s, "image_scale", 1.0)),
                                            image_long_side)
            to_section = Scale([sx, sy], axes=("x", "y"))
            images[f"{name}_he"] = Image2DModel.parse(
                np.ascontiguousarray(rgb.transpose(2, 0, 1)), dims=("c", "y", "x"),
                scale_factors=list(IMAGE_SCALES), c_coords=["r", "g", "b"],
                transformations={name: to_section, "block": TSeq([to_section, block])})
    table = adata.copy()
    table.uns.pop("spatial", None)
    for col in table.obs.columns:       # anndata 0.12 cannot write pandas 3's Arrow strings
        v = table.obs[col]
        if isinstance(v.dtype, pd.CategoricalDtype) and v.cat.categories.dtype != object:
            table.obs[col] = v.cat.set_categories(pd.Index(list(v.cat.categories), dtype=object))
        elif pd.api.types.is_string_dtype(v.dtype) and v.dtype != object:
            table.obs[col] = v.astype(object)
    table.obs["region"] = pd.Categorical(regions.astype(str),
                                         categories=pd.Index(list(shapes), dtype=object))
    table.obs["instance_id"] = instance
    table = TableModel.parse(table, region=list(shapes), region_key="region",
                             instance_key="instance_id")
    sdata = SpatialData(images=images, shapes=shapes, tables={"table": table})
    sdata.attrs["z"] = {str(s.name): float(v) for s, v in zip(sections, z)}
    sdata.attrs["z_unit"] = str(z_unit)
    if path.exists():
        shutil.rmtree(path)
    sdata.write(path)
    logger.info("wrote %s (%d images, %d spot elements, table %d x %d)", path, len(images),
                len(shapes), adata.n_obs, adata.n_vars)
    return path
