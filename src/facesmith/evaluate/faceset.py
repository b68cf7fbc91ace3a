"""Reading labelled real faces for evaluation and for the attribute classifier.

Owns one reader, `read_faces(path)`, over the three forms real faces come in:
- a dataset directory (read through `data.manifest`, whose split rule holds: a row without `split` is a
  training face);
- a packed `.npz` of 128-px WebP faces with attribute dicts (`scripts/pack_default_data.py`);
- a plain folder of images (no labels).
Each face keeps its attribute dict (absent key = unknown) and its split. Packs and image folders have no
manifest and so no split: a fixed 10 % of their file names, by sha1, is held out (`hashed_split`), so the
held-out faces never change between runs. That hash is not prepare's rule because the shipped attribute
classifier's held-out scores (README) were measured on exactly these pack faces. Decoding is lazy:
`RealFace.image()` opens the file when it is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facesmith.data.manifest import IMAGE_SUFFIXES, MANIFEST, read_manifest
from facesmith.errors import FacesmithError

HELD_OUT_SHARE = 0.1  # packs and image folders: this share of names, by hash, is held out


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
    if (path / MANIFEST).is_file():
        return [
            RealFace(row.file_name, row.attributes, row.split, path=path / row.file_name)
            for row in read_manifest(path)
        ]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return [RealFace(str(p.relative_to(path)), {}, hashed_split(p.name), path=p) for p in files]
    if not path.exists():
        raise FacesmithError(f"{path} does not exist: give a dataset folder from `facesmith prepare`")
    raise FacesmithError(
        f"{path} holds no faces: give a dataset folder (metadata.jsonl), a packed .npz or an image folder"
    )


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
