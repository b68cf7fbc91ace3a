"""Fixtures for the data stage: where the shared (non-commercial, never committed) face photos are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path | None:
    """$FACESMITH_SHARED, else <repo>/../shared; None when neither holds data/."""
    candidates = [os.environ.get("FACESMITH_SHARED"), Path(__file__).resolve().parents[2].parent / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "data").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def shared_data() -> Path:
    root = shared_dir()
    if root is None:
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    return root / "data"
