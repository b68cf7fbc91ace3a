"""Reading labelled real faces for evaluation and for the attribute classifier.

Owns one reader, `read_faces(path)`, over the three forms real faces come in:
- a dataset directory written by `facesmith prepare` (`metadata.jsonl` with file_name, attributes, split);
- a packed `.npz` of 128-px WebP faces with attribute dicts (`scripts/pack_default_data.py`);
- a plain folder of images (no labels).
Each face keeps its attribute dict (absent key = unknown) and its split. Sources without a split get a
fixed one from a hash of the file name, so the held-out faces never change between runs. Decoding is
lazy: `RealFace.image()` opens the file when it is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facesmith.errors import FacesmithError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HELD_OUT_SHARE = 0.1  # sources without a split: this share of names, by hash, is held out


@dataclass
class RealFace:
    name: str
    attributes: dict = field(default_factory=dict)
    split: str = "train"  # "train" or "val" (held out)
    path: Path | None = None
    blob: bytes | None = None

    def image(self) -> Image.Image:
        try:
            source = io.BytesIO(self.blob) if self.blob is not None else self.path
            with Image.open(source) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise FacesmithError(f"cannot read face image {self.path or self.name}: {error}") from None


def hashed_split(name: str, share: float = HELD_OUT_SHARE) -> str:
    """'val' for a fixed `share` of names (by sha1), else 'train'."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < share else "train"


def read_faces(path: str | Path) -> list[RealFace]:
    """All faces under `path` (dataset dir, .npz pack or image folder), in a stable order."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        return _read_pack(path)
    if (path / "metadata.jsonl").is_file():
        return _read_dataset(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return [RealFace(str(p.relative_to(path)), {}, hashed_split(p.name), path=p) for p in files]
    if not path.exists():
        raise FacesmithError(f"{path} does not exist: give a dataset folder from `facesmith prepare`")
    raise FacesmithError(
        f"{path} holds no faces: give a dataset folder (metadata.jsonl), a packed .npz or an image folder"
    )


def _read_dataset(root: Path) -> list[RealFace]:
    faces = []
    for number, line in enumerate((root / "metadata.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FacesmithError(
                f"{root / 'metadata.jsonl'} line {number} is not a JSON object with file_name"
            ) from None
        split = row.get("split") or hashed_split(name)
        faces.append(RealFace(name, dict(row.get("attributes") or {}), split, path=root / name))
    return faces


def _read_pack(path: Path) -> list[RealFace]:
    import numpy as np

    with np.load(path) as pack:
        data, offsets = pack["data"], pack["offsets"]
        attributes = json.loads(pack["attrs"].tobytes())
        names = [str(n) for n in pack["files"]]
    return [
        RealFace(
            f"{path.stem}/{name}",
            attrs,
            hashed_split(name),
            blob=data[offsets[i] : offsets[i + 1]].tobytes(),
        )
        for i, (name, attrs) in enumerate(zip(names, attributes, strict=True))
    ]
