"""Content fingerprints of input files: ``[size, mtime_ns, "blake2b:<hex>"]``.

A stage manifest (``asign_jax.runfolder``) records the fingerprint of every input file the
stage read, so that a file edited in place (rows permuted, a coordinate shifted, genes
dropped) is noticed even when its size stays the same. Hashing is paid once per file
version: a `Cache` (``<run folder>/cache/fingerprints.json``) maps a resolved path to its
last fingerprint and trusts it while the file's (size, mtime_ns) are unchanged, so an
unchanged 100 MB slide costs one ``stat`` on the next run. A file modified less than
``RACY_NS`` before it was hashed is not trusted by its time stamp (a second edit within the
clock's granularity would keep it): its entry is kept with ``mtime_ns = None`` and it is
hashed again next time, as git does for "racily clean" files.

Readers call `note(path)` on every file they open (``data.validate.require_file`` and
``data.image.read_rgb`` do, so every reader built on them is covered); a stage collects
those paths with ``with recording(cache) as rec: ...`` and hands ``rec.files`` to
``RunFolder.finish``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from asign_jax import atomic

logger = logging.getLogger(__name__)

CHUNK = 1 << 22
RACY_NS = 2_000_000_000
"""A file modified less than this before it was hashed is hashed again on the next check."""


def digest(path) -> str:
    """``"blake2b:<32 hex>"`` of the file's bytes (blake2b, 16-byte digest)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return "blake2b:" + h.hexdigest()


def short(fp) -> str:
    """A fingerprint for a message: ``"1234 bytes, blake2b 1a2b3c4d"``."""
    d = fp[2].split(":", 1)[-1][:8] if len(fp) > 2 and fp[2] else "?"
    return f"{fp[0]} bytes, blake2b {d}"


class Cache:
    """{resolved path: [size, mtime_ns, digest]} kept in a small JSON file (``path=None``:
    in memory only). A cache that cannot be read or written is simply not used."""

    def __init__(self, path: Optional[Path] = None):
        self.path = None if path is None else Path(path)
        self.entries: dict = {}
        self.dirty = False
        self.hashed = 0                # files hashed by this cache (for logging / tests)
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def fingerprint(self, path) -> list:
        """``[size, mtime_ns or None (racy), digest]`` of ``path`` now; hashes only when the
        cached (size, mtime_ns) differ."""
        key = str(Path(path).resolve())
        st = os.stat(key)
        old = self.entries.get(key)
        if old and old[1] is not None and [old[0], old[1]] == [st.st_size, st.st_mtime_ns]:
            return [st.st_size, st.st_mtime_ns, old[2]]
        for _ in range(3):
            d = digest(key)
            st2 = os.stat(key)
            if (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                break
            st = st2                              # written while hashed: hash again
        self.hashed += 1
        racy = time.time_ns() - st.st_mtime_ns < RACY_NS
        fp = [st.st_size, None if racy else st.st_mtime_ns, d]
        self.entries[key] = fp
        self.dirty = True
        return fp

    def unchanged(self, path, recorded) -> tuple[bool, list]:
        """(whether ``path`` still has the ``recorded`` fingerprint, its fingerprint now).

        A stat equal to the recorded one (not racy) is trusted without reading the file."""
        st = os.stat(path)
        if recorded[1] is not None and [st.st_size, st.st_mtime_ns] == list(recorded[:2]):
            return True, list(recorded)
        if st.st_size != recorded[0]:
            return False, [st.st_size, st.st_mtime_ns, None]
        now = self.fingerprint(path)
        return now[2] == recorded[2], now

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:

            atomic.write_text(self.path, json.dumps(self.entries, indent=0))
            self.dirty = False
        except OSError as e:                      # a read-only run folder: no cache, no error
            logger.debug("fingerprint cache %s not written: %s", self.path, e)


class Recorder:
    """The files read while it is active: {resolved path: fingerprint at read time}."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.files: dict = {}

    def add(self, path) -> None:
        p = Path(path)
        if not p.is_file():
            return
        key = str(p.resolve())
        if key not in self.files:
            self.files[key] = self.cache.fingerprint(key)


_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("asign_fingerprint_recorders",
                                                              default=())


def note(path) -> None:
    """Records that ``path`` is being read, in every active `recording` (no-op otherwise)."""
    for r in _ACTIVE.get():
        r.add(path)


@contextlib.contextmanager
def recording(cache: Cache) -> Iterator[Recorder]:
    """Collects the files `note`d inside the block (nested recordings see them too)."""
    rec = Recorder(cache)
    token = _ACTIVE.set(_ACTIVE.get() + (rec,))
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)
        cache.save()
