"""The dataset contract: a dataset directory is `DIR/metadata.jsonl` plus the images it names.

Owns the format every stage hands datasets over in: `ManifestRow` (one kept image), `write_manifest`,
`read_manifest`, the image file names prepare writes (`image_name`), the train/val split rule and the
one list of image suffixes facesmith reads. `prepare` writes manifests, `train.dataset` and
`evaluate.faceset` read them, `tests/factory.py` makes them; none of them parses the file on its own.

Format (README, "Preparing a dataset"): one JSON object per line, UTF-8. `file_name` (relative to DIR, or
absolute) is the only required key; `text` is the caption. Prepare also writes `attributes` (CelebA names
0/1, `age`, `Male`, `ethnicity`; an absent key means unknown), `source`, `source_file`, `split`, `width`,
`height`, `caption_from`, and where known `predicted_attributes`, `identity`, `repeats`, `box`,
`landmarks`, `score`, `sharpness`, `upscale`, `outside` and `phash`. Keys this module does not know are
kept as they are, so a Hugging Face `imagefolder` manifest with columns of its own reads and writes back.

The split rule: prepare puts an image in `val` when a hash of (seed, identity) falls under `val_fraction`
(`assign_split`), so one person never spans both splits and reruns agree. A row without `split` is a
training row: a hand-written manifest is a list of images to train on, and silently holding a tenth of it
out would surprise the person who wrote it. Stages that need held-out faces say so when a dataset has none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facesmith.errors import FacesmithError

MANIFEST = "metadata.jsonl"
SPLITS = ("train", "val")
# Everything Pillow decodes that photo collections come in; prepare, evaluate and `attributes predict`
# all list folders with it, so a file one stage reads is never skipped by another.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class ManifestRow:
    """One image of a dataset directory; `to_json` gives the line `write_manifest` stores."""

    file_name: str
    text: str = ""
    attributes: dict = field(default_factory=dict)
    source: str = ""
    source_file: str = ""
    split: str = "train"
    width: int = 0  # 0: unknown, read from the image when needed
    height: int = 0
    caption_from: str = ""  # source, attributes, predicted or generic
    # Written only when known (None), or when not the default (repeats).
    predicted_attributes: dict | None = None
    identity: str | None = None
    repeats: int = 1
    box: list | None = None
    landmarks: list | None = None
    score: float | None = None
    sharpness: float | None = None
    upscale: float | None = None
    outside: float | None = None
    phash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other tools, kept as they are

    def to_json(self) -> dict[str, Any]:
        """The row as stored, in this key order; optional keys only when set."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        row = {k: values.pop(k) for k in _CORE}
        row.update((k, v) for k, v in values.items() if v is not None and not (k == "repeats" and v == 1))
        return {**row, **self.extra}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ManifestRow:
        """A stored row; a missing `split` is the training split (see the module docstring)."""
        known = {k: v for k, v in values.items() if k in _FIELDS}
        known["attributes"] = dict(known.get("attributes") or {})
        known["text"] = str(known.get("text") or "")
        known["split"] = known.get("split") or "train"
        for key in ("width", "height"):
            known[key] = int(known.get(key) or 0)
        return cls(**known, extra={k: v for k, v in values.items() if k not in _FIELDS})


_FIELDS = {f.name for f in dataclasses.fields(ManifestRow)} - {"extra"}
_CORE = (
    "file_name",
    "text",
    "attributes",
    "source",
    "source_file",
    "split",
    "width",
    "height",
    "caption_from",
)


def image_name(index: int, fmt: str) -> str:
    """Where prepare stores image `index` in format `fmt` (png, jpg, webp), relative to the dataset."""
    return f"images/{index:06d}.{fmt}"


def assign_split(key: str, seed: int, val_fraction: float) -> str:
    """'val' for a fixed `val_fraction` of keys (an identity, or a file where it is unknown), by sha256 of
    `seed:key`, else 'train': the same key always lands in the same split."""
    # surrogatepass: a file name that isn't valid UTF-8 reaches us with surrogate escapes (PEP 383).
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).hexdigest()
    draw = int(digest[:8], 16) / 0xFFFFFFFF
    return "val" if draw < val_fraction else "train"


def write_manifest(directory: str | Path, rows: list[ManifestRow]) -> Path:
    """Write `DIR/metadata.jsonl` (one row per line, non-ASCII kept); return its path.

    A file name that isn't valid UTF-8 comes as a str with lone surrogates (PEP 383); those are written
    as JSON `\\udcXX` escapes, so the file stays UTF-8 and `read_manifest` gives the same name back."""
    path = Path(directory) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(_LONE_SURROGATE.sub(_escape, json.dumps(row.to_json(), ensure_ascii=False)) + "\n")
    return path


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def read_manifest(directory: str | Path, split: str | None = None) -> list[ManifestRow]:
    """The rows of `DIR/metadata.jsonl` in file order, those of `split` only when given.

    A missing file or a line that is not a JSON object with a `file_name` is a FacesmithError naming the
    line. Whether the images exist is the reader's business (training checks at once, evaluation on use).
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FacesmithError(
            f"dataset {directory} has no {MANIFEST}: make one with `facesmith prepare` or write one "
            'JSON object per image ({"file_name": "images/x.png", "text": "caption"})'
        )
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
            if not isinstance(values.get("file_name"), str):
                raise TypeError("file_name is not a string")
            row = ManifestRow.from_json(values)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
            raise FacesmithError(f"{path}:{number} is not a JSON object with a file_name: {error}") from None
        if split is None or row.split == split:
            rows.append(row)
    return rows
