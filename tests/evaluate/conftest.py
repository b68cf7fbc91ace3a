"""Evaluation fixtures: a synthetic labelled dataset and a tiny attribute classifier, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import factory


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory) -> Path:
    return factory.synthetic_face_dataset(tmp_path_factory.mktemp("faces") / "dataset", count=48)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, face_dataset) -> Path:
    return factory.tiny_attribute_classifier(
        tmp_path_factory.mktemp("classifier") / "attributes", face_dataset
    )
