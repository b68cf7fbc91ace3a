"""Fixtures for training tests: tiny face datasets in the `facesmith prepare` format, made in code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_dataset(
    directory: Path, count: int = 4, size: tuple[int, int] = (40, 40), captions: list[str] | None = None
) -> Path:
    """DIR/metadata.jsonl + DIR/images/*.png: smooth random colour fields standing in for faces."""
    rng = np.random.default_rng(0)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        w, h = size if isinstance(size, tuple) else size[i]
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        name = f"images/{i:06d}.png"
        image.save(directory / name)
        text = captions[i % len(captions)] if captions else f"a photo of a person, face {i}, smiling"
        attributes = {"Male": i % 2, "Smiling": 1, "age": 20 + i}
        rows.append(
            {"file_name": name, "text": text, "attributes": attributes, "source": "folder",
             "source_file": name, "split": "train", "width": w, "height": h}
        )  # fmt: skip
    rows.append({**rows[0], "file_name": "images/000000.png", "split": "val"})
    (directory / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return directory


@pytest.fixture
def make_dataset():
    """`write_dataset` as a fixture: test modules never import a conftest by name (they shadow each other)."""
    return write_dataset


@pytest.fixture(scope="session")
def faces(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "faces")


@pytest.fixture(scope="session")
def prepared_celeba(tmp_path_factory) -> Path:
    """Four real CelebA faces through `facesmith prepare` (skipped where the shared data is absent)."""
    import os
    import shutil

    from facesmith.data.config import PrepareConfig
    from facesmith.data.prepare import run_prepare

    roots = [os.environ.get("FACESMITH_SHARED"), Path(__file__).resolve().parents[2].parent / "shared"]
    images = next(
        (Path(r) / "data/celeba/images" for r in roots if r and (Path(r) / "data/celeba/images").is_dir()),
        None,
    )
    if images is None:
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    source = tmp_path_factory.mktemp("celeba")
    for path in sorted(images.glob("*.jpg"))[:4]:  # copied into a temporary folder only, never the repo
        shutil.copy(path, source / path.name)
    out = tmp_path_factory.mktemp("prepared") / "faces"
    config = PrepareConfig(sources=[str(source)], out_dir=str(out), size=64, aligned=True, workers=1)
    config.val_fraction, config.max_hash_distance = 0.0, -1
    return run_prepare(config)
