"""The tfds export of prepared + registered samples, read back without TensorFlow (and, through
``tfds.data_source``, without asign_jax)."""

import json
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from asign_jax.errors import DataError  # noqa: E402
from asign_jax.preprocess.prepared import PreparedSample, PreparedSection  # noqa: E402
from asign_jax.registration.result import RegisteredSample  # noqa: E402
from asign_jax.registration.tfds import AsignPrepared, build, data_source  # noqa: E402

G, D, T = 3, 4, 2


def random_section(rng, name, layer, n, r, q):
    f32 = np.float32
    return PreparedSection(
        name=name, layer=layer, spot_ids=np.array([f"{name}_{i}x{i}" for i in range(n)]),
        array_xy=rng.integers(0, 30, (n, 2)).astype(float),
        pixel_xy=rng.uniform(0, 2000, (n, 2)),
        spot_counts=rng.poisson(3, (n, G)).astype(f32),
        spot_labels=rng.normal(size=(n, G)).astype(f32),
        region_origin=rng.integers(0, 4, (r, 2)) * 512,
        region_counts=rng.poisson(9, (r, G)).astype(f32),
        region_labels=rng.normal(size=(r, G)).astype(f32),
        spot_region=rng.integers(0, r, n).astype(np.int32),
        global_origin=rng.integers(0, 2, (q, 2)) * 1024,
        global_counts=rng.poisson(20, (q, G)).astype(f32),
        global_labels=rng.normal(size=(q, G)).astype(f32),
        spot_global=rng.integers(0, q, n).astype(np.int32),
        region_global=rng.integers(0, q, r).astype(np.int32),
        image_shape=np.array([2000, 2100]),
        spot_feats=rng.normal(size=(n, D)).astype(f32),
        region_feats=rng.normal(size=(r, D)).astype(f32),
        region_tokens=rng.normal(size=(r, T, D)).astype(np.float16),
        global_feats=rng.normal(size=(q, D)).astype(f32),
        global_tokens=rng.normal(size=(q, T, D)).astype(np.float16),
        image_path=f"/img/{name}.png")


def write_workdir(wd, seed=0):
    rng = np.random.default_rng(seed)
    genes = np.array(["g0", "g1", "g2"])
    samples = [
        PreparedSample("C", genes, [random_section(rng, "C2", 0, 7, 3, 2),
                                    random_section(rng, "C3", 1, 5, 2, 1)]),
        PreparedSample("B", genes, [random_section(rng, "B4", 0, 4, 2, 1)]),
    ]
    for s in samples:
        s.save(wd)
        secs = s.sections
        shift = [sec.pixel_xy + 10.0 * sec.layer for sec in secs]   # "registered" = shifted
        RegisteredSample(s.sample_id, len(secs) // 2, [x.name for x in secs],
                         np.tile(np.eye(3), (len(secs), 1, 1)), shift,
                         [x.region_centers(512) for x in secs],
                         [x.global_centers(1024) for x in secs]).save(wd)
    (wd / "prepared" / "index.json").write_text(json.dumps(
        {"samples": ["C", "B"], "genes": genes.tolist(), "normalization": "asign"}))
    return samples


def assert_example_equal(ex, sample_id, sec):
    assert ex["sample_id"].decode() == sample_id
    assert ex["section"].decode() == sec.name
    assert int(ex["layer"]) == sec.layer
    assert [x.decode() for x in ex["spot_ids"]] == sec.spot_ids.tolist()
    for k in ("array_xy", "pixel_xy", "spot_counts", "spot_labels", "spot_feats", "spot_region",
              "spot_global", "region_origin", "region_counts", "region_labels", "region_feats",
              "region_tokens", "region_global", "global_origin", "global_counts",
              "global_labels", "global_feats", "global_tokens", "image_shape"):
        want = getattr(sec, k)
        assert ex[k].dtype == want.dtype, k
        np.testing.assert_array_equal(ex[k], want, err_msg=k)
    np.testing.assert_array_equal(ex["registered_spot_xy"], sec.pixel_xy + 10.0 * sec.layer)
    np.testing.assert_array_equal(ex["registered_global_xy"], sec.global_centers(1024))


def test_build_and_read_back_without_tf(tmp_path):
    wd = tmp_path / "wd"
    samples = write_workdir(wd)
    builder = build(wd)
    assert str(builder.data_dir).startswith(str(wd / "tfds" / "asign_prepared"))
    src = builder.as_data_source()
    assert sorted(src) == ["B", "C"]
    assert len(src["C"]) == 2 and len(src["B"]) == 1
    for sample in samples:
        for i, sec in enumerate(sample.sections):    # layer order is kept (no shuffling)
            assert_example_equal(src[sample.sample_id][i], sample.sample_id, sec)
    both = data_source(wd)                             # "C+B" in index order
    assert [both[i]["section"].decode() for i in range(len(both))] == ["C2", "C3", "B4"]
    # the builder never imported TensorFlow
    assert "tensorflow" not in sys.modules
    # a user loads the export by name, in a process that never imports asign_jax
    name = f"{builder.name}/{builder.builder_config.name}:{builder.version}"
    code = ("import sys, tensorflow_datasets as tfds; "
            f"src = tfds.data_source({name!r}, data_dir={str(wd / 'tfds')!r}); "
            "ex = src['C'][1]; print(ex['section'].decode(), ex['spot_labels'].sum()); "
            "assert 'asign_jax' not in sys.modules and 'tensorflow' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    sec = samples[0].sections[1]
    got = out.stdout.split()
    assert got[0] == "C3" and float(got[1]) == pytest.approx(float(sec.spot_labels.sum()), rel=1e-5)


def test_fingerprint_changes_with_prepared_data(tmp_path):
    wd = tmp_path / "wd"
    write_workdir(wd, seed=0)
    first = AsignPrepared(workdir=wd).data_dir
    assert AsignPrepared(workdir=wd).data_dir == first      # unchanged -> reused
    new = write_workdir(wd, seed=1)
    b = build(wd)
    assert b.data_dir != first
    np.testing.assert_array_equal(b.as_data_source(split="B")[0]["spot_labels"],
                                  new[1].sections[0].spot_labels)


def test_missing_prepared_data(tmp_path):
    with pytest.raises(DataError, match="prepare"):
        AsignPrepared(workdir=tmp_path)
