"""Prepared samples: the output of ``asign_jax.prepare`` and the input of every later stage.

Layout in a work directory::

    <workdir>/prepared/index.json               {"genes": [...], "normalization": ..., "samples": [...],
                                                 "left_out": {sample: {section: why}}}
    <workdir>/prepared/<sample_id>/sample.json   {"sample_id", "sections": [names], "genes": [...], ...}
    <workdir>/prepared/<sample_id>/<section>.npz one PreparedSection (arrays below)

Tiles: region (512 px) and global (1024 px) tiles lie on grids aligned at the image origin;
a tile is kept iff at least one spot centre falls in it. ``spot_region[i]`` is the exact index
(into this section's region arrays) of the region tile containing spot i's centre, likewise
``spot_global`` and ``region_global``. Labels of tiles are the normalised SUM of the raw counts
of the member spots.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax import atomic
from asign_jax.errors import DataError

_ARRAY_FIELDS = (
    "spot_ids", "array_xy", "pixel_xy", "spot_counts", "spot_labels",
    "region_origin", "region_counts", "region_labels", "spot_region",
    "global_origin", "global_counts", "global_labels", "spot_global", "region_global",
    "spot_feats", "spot_tokens", "region_feats", "region_tokens", "global_feats",
    "global_tokens",
    "image_shape",
)

LABEL_FIELDS = ("spot_counts", "spot_labels", "region_counts", "region_labels",
                "global_counts", "global_labels")


@dataclasses.dataclass
class PreparedSection:
    """One section after gene selection, normalisation, tiling and feature extraction.

    N spots, R region tiles, Q global tiles, G selected genes, D feature dim, T tokens per tile.

    Attributes:
      name: section id.
      layer: index of the section in its sample (0 = first).
      spot_ids: (N,) str.
      array_xy: (N, 2) float, array-grid (x, y).
      pixel_xy: (N, 2) float, full-resolution pixel (x=col, y=row).
      spot_counts: (N, G) float32 raw counts of the selected genes (None: image-only section).
      spot_labels: (N, G) float32 normalised expression (None: image-only section; so are
        the tiles' counts and labels).
      region_origin: (R, 2) int, top-left pixel (x, y) of each 512 tile.
      region_counts / region_labels: (R, G) summed raw counts / their normalisation.
      spot_region: (N,) int32 index of the spot's region tile.
      global_origin, global_counts, global_labels, spot_global: the same for 1024 tiles.
      region_global: (R,) int32 index of the global tile containing each region tile.
      spot_feats: (N, D) float32 pooled spot-patch features (None before feature extraction).
      spot_tokens: (N, T, D) float16 pooled grid of the spot patch's last feature map (read
        by the baselines, ``training.model_inputs``; None in data prepared before it existed).
      region_feats / global_feats: (R, D) / (Q, D) float32 pooled tile features.
      region_tokens / global_tokens: (R, T, D) / (Q, T, D) float16 pooled grid of the last
        feature map (T = grid*grid), keys/values for the model's cross-attention.
      image_shape: (2,) int (H, W) of the full-resolution image.
      image_path: the section's full-resolution image ("" if none).
      image_scale: level-0 image px per working px (1.0 = pixel_xy are the image's pixels).
    """

    name: str
    layer: int
    spot_ids: np.ndarray
    array_xy: np.ndarray
    pixel_xy: np.ndarray
    spot_counts: Optional[np.ndarray]
    spot_labels: Optional[np.ndarray]
    region_origin: np.ndarray
    region_counts: Optional[np.ndarray]
    region_labels: Optional[np.ndarray]
    spot_region: np.ndarray
    global_origin: np.ndarray
    global_counts: Optional[np.ndarray]
    global_labels: Optional[np.ndarray]
    spot_global: np.ndarray
    region_global: np.ndarray
    image_shape: np.ndarray
    spot_feats: Optional[np.ndarray] = None
    spot_tokens: Optional[np.ndarray] = None
    region_feats: Optional[np.ndarray] = None
    region_tokens: Optional[np.ndarray] = None
    global_feats: Optional[np.ndarray] = None
    global_tokens: Optional[np.ndarray] = None
    image_path: str = ""
    image_scale: float = 1.0

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    @property
    def labelled(self) -> bool:
        """False for an image-only section: its counts and labels (spot and tiles) are None."""
        return self.spot_labels is not None

    def region_centers(self, size: int) -> np.ndarray:
        """(R, 2) float pixel centres of the region tiles of side ``size``."""
        return self.region_origin.astype(np.float64) + size / 2.0

    def global_centers(self, size: int) -> np.ndarray:
        """(Q, 2) float pixel centres of the global tiles of side ``size``."""
        return self.global_origin.astype(np.float64) + size / 2.0

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in _ARRAY_FIELDS if getattr(self, k) is not None}
        arrays["spot_ids"] = np.asarray(self.spot_ids, dtype=str)
        meta = np.asarray(json.dumps({"name": self.name, "layer": int(self.layer),
                                       "image_path": str(self.image_path),
                                       "image_scale": float(self.image_scale)}))
        atomic.write_npz(path, _meta=meta, **arrays)

    @classmethod
    def load(cls, path: Path) -> "PreparedSection":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["_meta"]))
                arrays = {k: z[k] for k in _ARRAY_FIELDS if k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a readable prepared section ({e})") from e
        for k in LABEL_FIELDS:       # absent in an image-only section
            arrays.setdefault(k, None)
        return cls(name=meta["name"], layer=meta["layer"],
                   image_path=meta.get("image_path", ""),
                   image_scale=float(meta.get("image_scale", 1.0)), **arrays)


@dataclasses.dataclass
class PreparedSample:
    """A prepared sample: ordered sections sharing one gene list."""

    sample_id: str
    genes: np.ndarray
    sections: list[PreparedSection]
    normalization: str = "asign"

    @property
    def n_layers(self) -> int:
        return len(self.sections)

    def save(self, workdir: Path) -> Path:
        d = Path(workdir) / "prepared" / self.sample_id
        d.mkdir(parents=True, exist_ok=True)
        for s in self.sections:
            s.save(d / f"{s.name}.npz")
        meta = {"sample_id": self.sample_id, "sections": [s.name for s in self.sections],
                "genes": [str(g) for g in self.genes], "normalization": self.normalization}
        atomic.write_json(d / "sample.json", meta)
        return d

    @classmethod
    def load(cls, workdir: Path, sample_id: str) -> "PreparedSample":
        """The prepared sample, read from disk once per process and run folder: every later
        stage of a run (registration, graphs, model inputs, evaluation, the prediction
        writer) gets the same object while its files are unchanged (name, size, mtime), so a
        run reads its prepared data once. The arrays are read-only, so no caller can change
        what another reads; a rewritten sample (another config, ``--overwrite``) is read again."""
        d = Path(workdir) / "prepared" / sample_id
        meta_path = d / "sample.json"
        if not meta_path.exists():
            raise DataError(f"{meta_path}: prepared sample {sample_id!r} not found; "
                            "run `python -m asign_jax.prepare` first")
        key, stamp = str(d.resolve()), _stamp(d)
        hit = _READ.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        meta = json.loads(meta_path.read_text())
        sections = [PreparedSection.load(d / f"{n}.npz") for n in meta["sections"]]
        for sec in sections:
            for k in _ARRAY_FIELDS:
                v = getattr(sec, k)
                if isinstance(v, np.ndarray):
                    v.setflags(write=False)
        out = cls(sample_id=meta["sample_id"], genes=np.asarray(meta["genes"]),
                  sections=sections, normalization=meta.get("normalization", "asign"))
        root = str(Path(workdir).resolve())
        for k in [k for k in _READ if not k.startswith(root + "/")]:   # one run folder held
            del _READ[k]
        _READ[key] = (stamp, out)
        return out


# {resolved sample folder: (file stamp, PreparedSample)} of the run folder read last
_READ: dict = {}


def _stamp(d: Path) -> tuple:
    """(name, size, mtime_ns) of every file of a prepared sample folder."""
    return tuple(sorted((f.name, st.st_size, st.st_mtime_ns)
                        for f in d.iterdir() if f.is_file() for st in (f.stat(),)))


def list_prepared(workdir: Path) -> list[str]:
    """Sample ids prepared in ``workdir`` (from ``prepared/index.json``)."""
    index = Path(workdir) / "prepared" / "index.json"
    if not index.exists():
        raise DataError(f"{index}: no prepared data; run `python -m asign_jax.prepare` first")
    return list(json.loads(index.read_text())["samples"])


def read_left_out(workdir: Path) -> dict:
    """{sample: {section: why}} of the sections the reader left out (``index.json``)."""
    index = Path(workdir) / "prepared" / "index.json"
    return json.loads(index.read_text()).get("left_out", {}) if index.exists() else {}


def left_out_note(left_out: dict) -> str:
    """The note ``" (sections left out when reading: C3 (no image in ...))"``, or ``""``."""
    items = [f"{name} ({why})" for sample in left_out.values() for name, why in sample.items()]
    return f" (sections left out when reading: {'; '.join(items)})" if items else ""
