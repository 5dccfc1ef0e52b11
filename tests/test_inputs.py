"""Inputs checked by content and against each other (issue 22), on tiny in-memory data:
content fingerprints and their cache, gene losses at the intersection, spot pitches that say
an image is at another scale, one image listed twice, an unwritable run folder."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest

from asign_jax import entry, fingerprint
from asign_jax.data import validate
from asign_jax.data.section import Sample, Section
from asign_jax.errors import DataError


def section(name, genes, means, pitch=100.0, n=6, image=None):
    """A section of n x n spots on a square grid of ``pitch`` px, counts ~ ``means``."""
    k = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2).astype(float)
    counts = np.tile(np.asarray(means, np.float32), (len(k), 1))
    return Section(name=name, image_path=image, spot_ids=np.array([f"{a:g}x{b:g}" for a, b in k]),
                   array_xy=k, pixel_xy=50 + pitch * k, counts=counts,
                   genes=np.asarray(genes, dtype=str))


def test_fingerprint_cache_hashes_a_file_once_per_version(tmp_path, monkeypatch):
    f = tmp_path / "C2.tsv"
    f.write_text("a\tb\n1\t2\n")
    old = f.stat().st_mtime_ns - 10 * fingerprint.RACY_NS
    os.utime(f, ns=(old, old))
    cache = fingerprint.Cache(tmp_path / "cache.json")
    fp = cache.fingerprint(f)
    assert fp[:2] == [f.stat().st_size, old] and fp[2] == fingerprint.digest(f)
    cache.save()
    again = fingerprint.Cache(tmp_path / "cache.json")
    monkeypatch.setattr(fingerprint, "digest", lambda p: pytest.fail("hashed again"))
    assert again.fingerprint(f) == fp and again.unchanged(f, fp) == (True, fp)
    monkeypatch.undo()
    f.write_text("a\tb\n2\t1\n")                       # same size, other bytes
    os.utime(f, ns=(old, old + 1))
    same, now = again.unchanged(f, fp)
    assert not same and now[0] == fp[0] and now[2] != fp[2]
    f.write_text("a\tb\n1\t2\n")                       # just written: racy, not trusted by time
    assert again.fingerprint(f)[1] is None and again.fingerprint(f)[2] == fp[2]


def test_recording_collects_what_readers_open(tmp_path):
    f = tmp_path / "counts.tsv"
    f.write_text("\tg1\ns1\t3\n")
    with fingerprint.recording(fingerprint.Cache()) as rec:
        validate.read_count_table(f)
    assert list(rec.files) == [str(f.resolve())]
    validate.require_file(f, "x")                      # outside a recording: nothing kept
    assert len(rec.files) == 1


def test_large_gene_losses_are_a_warning(caplog):
    genes = [f"G{i}" for i in range(40)]
    means = np.arange(40, 0, -1)
    full = section("C2", genes, means)
    lacking = section("C3", genes[10:], means[10:])    # C3 lacks C2's 10 most expressed genes
    with caplog.at_level(logging.WARNING):
        out = validate.intersect_genes([Sample("C", [full, lacking])], n_ranked=20)
    assert len(out[0].sections[0].genes) == 30
    assert ("gene intersection: 10 of the 20 most expressed genes of section C2 (50 %, e.g. "
            "G0, G1, G2, G3, G4) are absent from C3") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):             # 1 of 20 (5 %): only logged at INFO
        validate.intersect_genes([Sample("C", [full, section("C3", genes[:39], means[:39])])],
                                 n_ranked=20)
    assert "gene intersection" not in caplog.text


def test_a_section_at_another_scale_is_a_warning():
    genes, means = ["a", "b"], [1, 2]
    c = [section(f"C{i}", genes, means, pitch=290.0) for i in (2, 3, 4)]
    assert validate.pitch_warnings([Sample("C", c)], "square") == []
    half = section("C5", genes, means, pitch=145.0, image="C5.jpg")
    w = validate.pitch_warnings([Sample("C", c + [half])], "square")
    assert len(w) == 1 and w[0].startswith("section C5: spot pitch 145 px in C5.jpg, 290 px "
                                           "(median) in the other sections (0.50x): its image "
                                           "is at another scale")
    w = validate.pitch_warnings([Sample("C", c)], "square", expected=145.0)
    assert len(w) == 3 and "data.spot_pitch_px=145 (the scale the pixel sizes assume; 2.00x)" \
        in w[0]


def test_one_image_listed_twice_is_refused(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"\xff\xd8\xff" + b"1" * 20 + b"\xff\xd9")
    b.write_bytes(a.read_bytes())
    with pytest.raises(DataError, match=rf"{a}: the image of section 'C3b' is also the image "
                                        r"of section 'C3'; one image listed twice"):
        validate.check_distinct_images([("C3", a), ("C3b", a)])
    cache = fingerprint.Cache()
    digests = {str(p.resolve()): cache.fingerprint(p) for p in (a, b)}
    with pytest.raises(DataError, match=rf"{b}: the image of section 'C4' has the same bytes "
                                        rf"as the image of section 'C3' \({a}\)"):
        validate.check_distinct_images([("C3", a), ("C4", b)], digests)
    validate.check_distinct_images([("C3", a), ("C4", None)], digests)


def test_an_unwritable_run_folder_is_one_line():
    e = PermissionError(errno.EACCES, "Permission denied", "/runs/c/prepared/manifest.json")
    line = entry.unwritable(e)
    assert line.startswith("/runs/c/prepared/manifest.json: cannot be written (Permission "
                           "denied); is the run folder (or --out) read-only?")
    assert entry.unwritable(OSError(errno.EROFS, "Read-only file system", "/x")) is not None
    assert entry.unwritable(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
