"""Precomputed embeddings (e.g. pathology foundation-model features) instead of ResNet-50.

Used when ``config.features.encoder == "embeddings"``; ``config.features.embeddings`` names
one file holding every section, either HDF5 (``.h5``/``.hdf5``) with one group per section
or ``.npz`` with ``"<section>/<name>"`` keys::

    <section>/spot_ids        (N,)  str     spot ids as in the ST data (e.g. "10x13")
    <section>/spot            (N, D)        pooled spot-patch embeddings
    <section>/spot_tokens     (N, T, D)     optional token grid of each spot patch
    <section>/region_origin   (R, 2) int    top-left (x, y) px of each region tile
    <section>/region          (R, D)        pooled region-tile embeddings
    <section>/region_tokens   (R, T, D)     optional token grid of each region tile
    <section>/global_origin   (Q, 2) int    likewise for the global tiles
    <section>/global          (Q, D)
    <section>/global_tokens   (Q, T, D)     optional

Spots are matched by id and tiles by origin; the file may hold more than is asked for.
Without tokens, the pooled vector is used as a single token (T = 1).
``save_embeddings`` writes this layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_SUFFIXES = (".h5", ".hdf5", ".npz")


def save_embeddings(path, sections: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Writes ``{section: {"spot_ids", "spot", "region_origin", "region", ...}}`` to ``path``."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"{path}: embeddings file must end in one of {_SUFFIXES}")
    if path.suffix == ".npz":
        arrays = {}
        for sec, d in sections.items():
            for k, v in d.items():
                v = np.asarray(v)
                arrays[f"{sec}/{k}"] = v.astype(str) if k == "spot_ids" else v
        np.savez(path, **arrays)
    else:
        import h5py
        with h5py.File(path, "w") as f:
            for sec, d in sections.items():
                g = f.create_group(str(sec))
                for k, v in d.items():
                    v = np.asarray(v)
                    if k == "spot_ids":
                        g.create_dataset(k, data=v.astype(str).astype(object),
                                         dtype=h5py.string_dtype())
                    else:
                        g.create_dataset(k, data=v)
    return path


class _Section:
    """Read access to one section of an embeddings file: ``get(name) -> array | None``."""

    def __init__(self, path: Path, section: str):
        self.path, self.section = path, section
        where = f"{path}: section {section!r}"
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    prefix = f"{section}/"
                    self.arrays = {k[len(prefix):]: z[k] for k in z.files
                                   if k.startswith(prefix)}
                    available = sorted({k.split("/")[0] for k in z.files})
            else:
                import h5py
                with h5py.File(path, "r") as f:
                    available = sorted(f.keys())
                    g = f.get(section)
                    self.arrays = ({k: g[k][()] for k in g.keys()}
                                   if isinstance(g, h5py.Group) else {})
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: cannot read embeddings file ({e})") from e
        if not self.arrays:
            raise DataError(f"{where} not found in the embeddings file (it holds "
                            f"{len(available)} sections: {available[:10]})")

    def get(self, name: str, required: bool = True) -> Optional[np.ndarray]:
        if name not in self.arrays:
            if required:
                raise DataError(f"{self.path}: section {self.section!r} has no "
                                f"'{self.section}/{name}'")
            return None
        return self.arrays[name]


def _match(path, section, what, wanted_keys, file_keys) -> np.ndarray:
    """Row index into the file for each wanted key; DataError naming the first missing."""
    index = {}
    for i, k in enumerate(file_keys):
        if k in index:
            raise DataError(f"{path}: section {section!r}: duplicate {what} {k!r} in the file")
        index[k] = i
    missing = [k for k in wanted_keys if k not in index]
    if missing:
        raise DataError(f"{path}: section {section!r}: {len(missing)} {what}s missing from "
                        f"the embeddings file, first {missing[:5]}")
    return np.asarray([index[k] for k in wanted_keys], dtype=np.int64)


class EmbeddingsReader:
    """Serves precomputed embeddings with ``FeatureExtractor.section_features``' interface."""

    def __init__(self, features_cfg):
        path = str(features_cfg.embeddings or "")
        if not path:
            raise ConfigError("features.encoder='embeddings' needs features.embeddings "
                              "(an .h5 or .npz file)")
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: embeddings file does not exist")
        if self.path.suffix not in _SUFFIXES:
            raise DataError(f"{self.path}: embeddings file must be .h5/.hdf5 or .npz")
        self._logged_single_token = False

    def section_features(self, section_name: str, image, spot_xy, region_origin,
                         global_origin, data_cfg=None, cache_dir=None, spot_ids=None) -> dict:
        """Looks up a section's embeddings; ``image``, ``spot_xy``, ``data_cfg`` and
        ``cache_dir`` are unused (kept for the common interface). ``spot_ids`` is required.

        Returns spot_feats (N, D) float32, spot_tokens (N, T, D) float16 (the pooled vector as
        one token when the file has no 'spot_tokens'), region_feats (R, D) float32,
        region_tokens (R, T, D) float16, global_feats, global_tokens likewise.
        """
        del image, data_cfg, cache_dir
        if spot_ids is None:
            raise ValueError("EmbeddingsReader.section_features needs spot_ids to match spots")
        spot_ids = [str(s) for s in np.asarray(spot_ids)]
        if spot_xy is not None and len(spot_xy) != len(spot_ids):
            raise ValueError(f"{len(spot_xy)} spot coordinates but {len(spot_ids)} spot ids")
        sec = _Section(self.path, str(section_name))
        where = f"{self.path}: section {section_name!r}"

        file_ids = [s.decode() if isinstance(s, bytes) else str(s)
                    for s in np.asarray(sec.get("spot_ids")).reshape(-1)]
        spot = self._matrix(sec, "spot", len(file_ids))
        rows = _match(self.path, section_name, "spot", spot_ids, file_ids)
        out = {"spot_feats": spot[rows]}
        out["spot_tokens"] = self._tokens(sec, "spot", spot)[rows]

        for level, origin in (("region", region_origin), ("global", global_origin)):
            origin = np.asarray(origin, np.int64).reshape(-1, 2)
            f_origin = np.asarray(sec.get(f"{level}_origin"))
            if f_origin.ndim != 2 or f_origin.shape[1] != 2:
                raise DataError(f"{where}: '{level}_origin' must be (R, 2), got "
                                f"{f_origin.shape}")
            f_origin = np.round(f_origin).astype(np.int64)
            feats = self._matrix(sec, level, len(f_origin))
            rows = _match(self.path, section_name, f"{level} tile origin",
                          [tuple(int(v) for v in o) for o in origin],
                          [tuple(int(v) for v in o) for o in f_origin])
            out[f"{level}_feats"] = feats[rows]
            out[f"{level}_tokens"] = self._tokens(sec, level, feats)[rows]

        for k, v in out.items():
            if not np.isfinite(v).all():
                raise DataError(f"{where}: non-finite values in {k}")
        dims = {k: v.shape[-1] for k, v in out.items()}
        if len(set(dims.values())) > 1:
            logger.info("%s: embedding dims differ between levels: %s", where, dims)
        return out

    def _tokens(self, sec: _Section, level: str, feats: np.ndarray) -> np.ndarray:
        """'<level>_tokens' (rows, T, D) float16, or the pooled ``feats`` as one token (T=1)."""
        toks = sec.get(f"{level}_tokens", required=False)
        if toks is None:
            if not self._logged_single_token:
                logger.info("%s: section %r: no %s_tokens; using the pooled vector as a single "
                            "token (T=1)", self.path, sec.section, level)
                self._logged_single_token = True
            return feats[:, None, :].astype(np.float16)
        toks = np.asarray(toks)
        if toks.ndim != 3 or toks.shape[0] != len(feats) or toks.shape[2] != feats.shape[1]:
            raise DataError(f"{self.path}: section {sec.section!r}: '{level}_tokens' must be "
                            f"({len(feats)}, T, {feats.shape[1]}), got {toks.shape}")
        return toks.astype(np.float16)

    def _matrix(self, sec: _Section, name: str, n_rows: int) -> np.ndarray:
        a = np.asarray(sec.get(name))
        if a.ndim != 2 or a.shape[0] != n_rows:
            raise DataError(f"{sec.path}: section {sec.section!r}: '{name}' must be "
                            f"({n_rows}, D), got {a.shape}")
        return a.astype(np.float32)
