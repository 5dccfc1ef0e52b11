"""A ``tensorflow_datasets`` builder over the prepared, registered samples of a run folder.

This is the ``python -m asign_jax.export --format tfds`` output: a standard, random-access
dataset other tools read without asign_jax (``tfds.data_source(name, data_dir=...)``; the
export prints the name). One example per section (images are not stored, their features
are); one split per sample, named by the sample id, so ``split="A+B"`` reads several
samples, in layer order (shuffling is disabled). ``registered_*_xy`` are the registration
stage's coordinates in the sample's reference section (identity for a single section or
``registration.enabled=False``).

What it needs (TensorFlow is NOT installed): only ``tensorflow-datasets`` and
``array_record``. The builder writes ``file_format="array_record"`` and is read with
``builder.as_data_source()`` (random access, numpy out); ``as_dataset()`` needs TensorFlow and
cannot read array_record, so it is not used. Only ``Tensor``/``Scalar``/``Text`` features are
used, as they encode numpy without TF (``tfds.features.Image`` cannot encode an array without
TF). Strings come back as ``bytes`` (``spot_ids``: object array of bytes). Three tfds 4.9.10
traps are worked around: a builder defined in a package fails in ``download_and_prepare``
because the default ``code_path`` touches ``importlib_resources`` (not installed), so the
class overrides ``code_path``; a float64 ``Tensor`` with the default encoding is stored
as float32, so the coordinates use ``Encoding.BYTES`` (exact); and a registered builder class
would shadow the files in ``tfds.data_source("asign_prepared/...")`` (it needs ``workdir``),
so the class is left out of tfds' registry and readers get tfds' read-only builder from the
files. The builder config name is a content hash of the prepared and registration files, so
re-running ``prepare`` gives a fresh dataset instead of a stale one:
``<workdir>/tfds/asign_prepared/<hash>/1.0.0`` (or under ``data_dir``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from asign_jax.errors import DataError
from asign_jax.preprocess.prepared import PreparedSection, list_prepared
from asign_jax.registration.result import RegisteredSample

logger = logging.getLogger(__name__)

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


def _fingerprint(workdir: Path) -> str:
    """Content hash (blake2b, 12 hex chars) of index.json, every prepared sample file and
    every registration result."""
    d = Path(workdir) / "prepared"
    h = hashlib.blake2b((d / "index.json").read_bytes(), digest_size=16)
    files = sorted(d.glob("*/*")) + sorted((Path(workdir) / "registration").glob("*/registered.npz"))
    for p in files:
        if p.name.endswith((".tmp", ".tmp.npz")):
            continue
        h.update(str(p.relative_to(workdir)).encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return "p" + h.hexdigest()[:12]


def _sections(workdir: Path, sample_id: str) -> list[str]:
    meta = Path(workdir) / "prepared" / sample_id / "sample.json"
    if not meta.exists():
        raise DataError(f"{meta}: prepared sample {sample_id!r} not found")
    return list(json.loads(meta.read_text())["sections"])


def _section_path(workdir: Path, sample_id: str, name: str) -> Path:
    return Path(workdir) / "prepared" / sample_id / f"{name}.npz"


class AsignPrepared(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Prepared ASIGN sections (builder name ``asign_prepared``); one split per sample."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One example per prepared section."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """This file. tfds' default probes ``importlib_resources`` (not installed) and fails."""
        return epath.Path(__file__)

    def __init__(self, *, workdir, **kwargs):
        self._workdir = Path(workdir)
        self._samples = list_prepared(self._workdir)
        bad = [s for s in self._samples if not _SPLIT_RE.match(s)]
        if bad:
            raise DataError(f"{self._workdir / 'prepared' / 'index.json'}: sample ids {bad} "
                            "cannot be tfds split names (letters, digits, _ only)")
        if not self._samples:
            raise DataError(f"{self._workdir}: index.json lists no samples")
        first = self._samples[0]
        probe = PreparedSection.load(_section_path(self._workdir, first,
                                                   _sections(self._workdir, first)[0]))
        if probe.spot_feats is None or probe.region_tokens is None:
            raise DataError(f"{self._workdir}: prepared section {probe.name!r} has no features; "
                            "re-run `python -m asign_jax.prepare`")
        self._dims = dict(G=probe.spot_labels.shape[1], D=probe.spot_feats.shape[1],
                          T=probe.region_tokens.shape[1])
        kwargs.setdefault("data_dir", str(self._workdir / "tfds"))
        kwargs.setdefault("file_format", "array_record")
        kwargs.setdefault("config", tfds.core.BuilderConfig(
            name=_fingerprint(self._workdir), description=f"prepared data of {self._workdir}"))
        super().__init__(**kwargs)

    @property
    def sample_ids(self) -> list[str]:
        """The split names, in ``index.json`` order."""
        return list(self._samples)

    def _info(self) -> tfds.core.DatasetInfo:
        g, d, t = self._dims["G"], self._dims["D"], self._dims["T"]
        T = tfds.features.Tensor
        f32, f64, i32, i64 = np.float32, np.float64, np.int32, np.int64
        raw = tfds.features.Encoding.BYTES
        features = {
            "sample_id": tfds.features.Text(),
            "section": tfds.features.Text(),
            "layer": tfds.features.Scalar(dtype=i32),
            "image_shape": T(shape=(2,), dtype=i64),
            "spot_ids": T(shape=(None,), dtype=np.str_),
            # float64 as raw bytes: the default proto encoding goes through float32
            "array_xy": T(shape=(None, 2), dtype=f64, encoding=raw),
            "pixel_xy": T(shape=(None, 2), dtype=f64, encoding=raw),
            "spot_counts": T(shape=(None, g), dtype=f32),
            "spot_labels": T(shape=(None, g), dtype=f32),
            "spot_feats": T(shape=(None, d), dtype=f32),
            "spot_region": T(shape=(None,), dtype=i32),
            "spot_global": T(shape=(None,), dtype=i32),
            "region_origin": T(shape=(None, 2), dtype=i64),
            "region_counts": T(shape=(None, g), dtype=f32),
            "region_labels": T(shape=(None, g), dtype=f32),
            "region_feats": T(shape=(None, d), dtype=f32),
            "region_tokens": T(shape=(None, t, d), dtype=np.float16),
            "region_global": T(shape=(None,), dtype=i32),
            "global_origin": T(shape=(None, 2), dtype=i64),
            "global_counts": T(shape=(None, g), dtype=f32),
            "global_labels": T(shape=(None, g), dtype=f32),
            "global_feats": T(shape=(None, d), dtype=f32),
            "global_tokens": T(shape=(None, t, d), dtype=np.float16),
            "registered_spot_xy": T(shape=(None, 2), dtype=f64, encoding=raw),
            "registered_region_xy": T(shape=(None, 2), dtype=f64, encoding=raw),
            "registered_global_xy": T(shape=(None, 2), dtype=f64, encoding=raw),
        }
        return tfds.core.DatasetInfo(
            builder=self, description="ASIGN prepared sections (asign_jax.prepare output).",
            features=tfds.features.FeaturesDict(features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in self._samples}

    def _generate_examples(self, sample_id):
        keys = [k for k in self.info.features.keys()
                if k not in ("sample_id", "section", "layer") and not k.startswith("registered")]
        reg = RegisteredSample.load(self._workdir, sample_id)
        names = _sections(self._workdir, sample_id)
        if list(reg.section_names) != names:
            raise DataError(f"{self._workdir / 'registration' / sample_id}: registered sections "
                            f"{list(reg.section_names)} are not the prepared ones {names}")
        for i, name in enumerate(names):
            path = _section_path(self._workdir, sample_id, name)
            s = PreparedSection.load(path)
            ex = {"sample_id": sample_id, "section": s.name, "layer": int(s.layer),
                  "registered_spot_xy": reg.spot_xy[i], "registered_region_xy": reg.region_xy[i],
                  "registered_global_xy": reg.global_xy[i]}
            for k in keys:
                v = getattr(s, k)
                if v is None:
                    raise DataError(f"{path}: field {k!r} missing; re-run prepare")
                ex[k] = v
            ex["spot_ids"] = np.asarray([str(x) for x in s.spot_ids], dtype=object)
            yield f"{sample_id}/{name}", ex


def build(workdir, data_dir: Optional[str] = None) -> AsignPrepared:
    """Builds the dataset (reused while the prepared files are unchanged); returns the builder."""
    kwargs = {} if data_dir is None else {"data_dir": str(data_dir)}
    builder = AsignPrepared(workdir=workdir, **kwargs)
    logger.info("tfds dataset at %s", builder.data_dir)
    builder.download_and_prepare()
    return builder


def data_source(workdir, split: Optional[str] = None, data_dir: Optional[str] = None):
    """Random-access reader (no TensorFlow). ``split``: a sample id, ``"A+B"``, or None = all."""
    builder = build(workdir, data_dir)
    if split is None:
        split = "+".join(builder.sample_ids)
    return builder.as_data_source(split=split)
