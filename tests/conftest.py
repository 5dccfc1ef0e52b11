"""Shared test helpers and fixtures.

* ``load_config(name)``: ``configs/<name>.py``'s ``get_config()`` (a fresh copy per call), the
  one way the tests load a shipped config; ``load_module(path)`` imports a file by path;
* ``experiments/`` is put on ``sys.path`` here, once, so tests import its scripts by name
  (``import bench_scale``) as the scripts import their sibling ``visium_block``;
* fixtures: ``test_config`` (``configs/test.py``), ``her2st_root`` (the real data, or a skip
  with a clear message when ../shared is absent).

XLA's persistent compilation cache is on for the test session (``JAX_COMPILATION_CACHE_DIR``,
set here before jax is imported, so subprocesses and both xdist workers share it): many tests
compile the same tiny models and steps, and a cache hit skips only XLA's compilation (tracing,
and so every "compiles once" check, is unchanged). A directory the caller set is kept.

Slow tests (whole pipelines, subprocesses) carry ``@pytest.mark.slow``: ``pytest -m "not
slow"`` is the fast subset; ``.ci/run`` runs everything.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"asign-jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

ROOT = Path(__file__).resolve().parents[1]
HER2ST = (ROOT / ".." / "shared" / "data" / "her2st").resolve()
EXPERIMENTS = ROOT / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))


def load_module(path: Path, name: str = ""):
    """The module of the Python file ``path`` (a config or an experiments script)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_config(name: str):
    """``configs/<name>.py``'s config (``name`` may also be a path to a config file)."""
    path = Path(name) if name.endswith(".py") else ROOT / "configs" / f"{name}.py"
    return load_module(path, f"config_{path.stem}").get_config()


@pytest.fixture
def test_config():
    """The tiny CPU config ``configs/test.py`` (a fresh copy)."""
    return load_config("test")


@pytest.fixture
def her2st_root() -> Path:
    if not (HER2ST / "ST-cnts").is_dir():
        pytest.skip(f"real HER2ST data not found at {HER2ST} (shared data folder absent)")
    return HER2ST
