"""Fixtures for training tests: tiny face datasets in the `facesmith prepare` format, made by the factory."""

from __future__ import annotations

from pathlib import Path

import pytest

import factory


@pytest.fixture
def make_dataset():
    """`factory.colour_field_dataset` as a fixture: (directory, count=4, size=(40, 40), captions=None)."""
    return factory.colour_field_dataset


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    return factory.colour_field_dataset(tmp_path_factory.mktemp("data") / "faces")


@pytest.fixture(scope="session")
def prepared_celeba(tmp_path_factory) -> Path:
    """Four real CelebA faces through `facesmith prepare` (skipped where the shared data is absent)."""
    import shutil

    from facesmith.data.config import PrepareConfig
    from facesmith.data.prepare import run_prepare

    shared = factory.shared_data_dir()
    if shared is None or not (shared / "celeba" / "images").is_dir():
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    source = tmp_path_factory.mktemp("celeba")
    for path in sorted((shared / "celeba" / "images").glob("*.jpg"))[
        :4
    ]:  # copied into a temporary folder only
        shutil.copy(path, source / path.name)
    out = tmp_path_factory.mktemp("prepared") / "faces"
    config = PrepareConfig(sources=[str(source)], out_dir=str(out), size=64, aligned=True, workers=1)
    config.val_fraction, config.max_hash_distance = 0.0, -1
    return run_prepare(config)
