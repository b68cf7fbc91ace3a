"""Tiny photos and dataset helpers for the data tests, built in code."""

from __future__ import annotations

from pathlib import Path

# Noise is sharp and every seed has its own perceptual hash, so these photos pass the quality gates in
# --aligned mode (which needs no face); face detection is tested on the shared data.


def photo(seed: int, size: tuple[int, int] = (48, 48), mode: str = "RGB"):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.NEAREST)
    fine = rng.integers(-40, 40, (size[1], size[0], 3))
    image = Image.fromarray(np.uint8(np.clip(np.asarray(image, dtype=int) + fine, 0, 255)))
    return image if mode == "RGB" else image.convert(mode)


def save_photo(path: Path, seed: int, size: tuple[int, int] = (48, 48), **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed, size).save(path, **options)
    return path


def aligned_config(sources, out, **overrides):
    """A PrepareConfig for fast tests: --aligned, 32 px, one worker."""
    from facesmith.data.config import PrepareConfig

    values = {"sources": [str(s) for s in sources], "out_dir": str(out), "aligned": True, "size": 32}
    values["workers"] = 1
    return PrepareConfig(**{**values, **overrides})


def read_manifest(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def read_report(out: Path) -> dict:
    import json

    return json.loads((out / "report.json").read_text())
