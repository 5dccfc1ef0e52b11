"""Shared fixtures. Real-data tests skip with a clear message when ../shared is absent."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HER2ST = (ROOT / ".." / "shared" / "data" / "her2st").resolve()


@pytest.fixture
def her2st_root() -> Path:
    if not (HER2ST / "ST-cnts").is_dir():
        pytest.skip(f"real HER2ST data not found at {HER2ST} (shared data folder absent)")
    return HER2ST
