"""Dataset sources: which format a folder is in, and its images with their labels.

Owns: format detection and reading CelebA, UTKFace, Kohya, HF imagefolder and plain folders into
``SourceItem`` rows (path, attributes, caption, identity, repeats), plus the table-level problems
(attribute rows without a file, files without a row, undecodable caption files), which go to the report.
Decoding images, detection and captions happen in ``prepare``.

Formats (``FORMATS``):
- ``celeba``: images (in ``img_align_celeba/``, ``images/`` or the folder itself) plus
  ``list_attr_celeba.txt`` in its original layout (a count line, a header of 40 names, rows of -1/1), or a CSV
  with a file column (``file``, ``image_id`` or ``file_name``) and 0/1 or -1/1 attribute columns.
  ``identity_CelebA.txt``, when present, gives identities for the train/val split.
- ``utkface``: labels in file names, ``age_gender_race_date.jpg`` (gender 0 male / 1 female, race 0-4).
- ``kohya``: each image with a ``.txt`` caption of the same stem; ``N_name`` sub-folders repeat N times.
- ``imagefolder``: HF datasets' ``metadata.jsonl`` or ``metadata.csv`` with ``file_name`` plus ``text`` and/or
  attribute columns (CelebA names, ``age``, ``Male``/``gender``, ``ethnicity``).
- ``folder``: any other folder of photos, unlabeled.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from facesmith.attributes.schema import CELEBA_ATTRIBUTES, ETHNICITIES, celeba_attributes, utkface_attributes
from facesmith.data.manifest import IMAGE_SUFFIXES, MANIFEST
from facesmith.errors import FacesmithError

FORMATS = ("celeba", "utkface", "kohya", "imagefolder", "folder")
UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_")
KOHYA_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
CELEBA_TABLES = ("list_attr_celeba.txt", "list_attr_celeba.csv", "attributes.csv")


@dataclass
class SourceItem:
    """One image a source offers, with what the source knows about it."""

    path: Path
    source: str
    attributes: dict = field(default_factory=dict)
    caption: str | None = None
    identity: str | None = None
    repeats: int = 1
    problem: str | None = None  # a reason to reject it before decoding (e.g. no attribute row)


@dataclass
class Source:
    """A source folder, its format, its items in a fixed (sorted) order, and table-level notes."""

    root: Path
    format: str
    items: list[SourceItem]
    notes: list[str] = field(default_factory=list)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by suffix, sorted, skipping hidden files and our own outputs."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in pattern
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def detect_format(root: Path) -> str:
    """The format of ``root``, checked in the order imagefolder, celeba, kohya, utkface, folder."""
    if (root / MANIFEST).is_file() or (root / "metadata.csv").is_file():
        return "imagefolder"
    if _celeba_table(root) is not None:
        return "celeba"
    if any(d.is_dir() and KOHYA_REPEAT_DIR.match(d.name) for d in root.iterdir()):
        return "kohya"
    images = list_images(root)
    if images and sum(p.with_suffix(".txt").is_file() for p in images) * 2 >= len(images):
        return "kohya"
    if images and sum(bool(UTKFACE_NAME.match(p.name)) for p in images) * 10 >= len(images) * 9:
        return "utkface"
    return "folder"


def read_source(path: str | Path, format: str | None = None) -> Source:
    """The items of one source folder, in the given or detected format."""
    root = Path(path)
    if not root.is_dir():
        raise FacesmithError(f"source {root} is not a folder: give a folder of images")
    if format in (None, "", "auto"):
        format = detect_format(root)
    if format not in FORMATS:
        raise FacesmithError(f"--format {format} is unknown: use one of auto, {', '.join(FORMATS)}")
    return {
        "celeba": _read_celeba,
        "utkface": _read_utkface,
        "kohya": _read_kohya,
        "imagefolder": _read_imagefolder,
        "folder": _read_folder,
    }[format](root)


# ----------------------------------------------------------------------------------------------------------


def _celeba_table(root: Path) -> Path | None:
    for name in CELEBA_TABLES:
        for folder in (root, root / "Anno"):
            table = folder / name
            if table.is_file() and (name != "attributes.csv" or _csv_has_celeba_columns(table)):
                return table
    return None


def _csv_has_celeba_columns(table: Path) -> bool:
    with open(table, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return sum(name in CELEBA_ATTRIBUTES for name in header) >= 10


def read_celeba_table(table: Path) -> dict[str, dict]:
    """File name -> attribute dict, from ``list_attr_celeba.txt`` (original) or a CSV."""
    text = _read_text(table)
    rows: dict[str, dict] = {}
    if table.suffix == ".txt":
        lines = [line.split() for line in text.splitlines() if line.strip()]
        # Original layout: count line, header line, rows of name + 40 values; tolerate a missing count line.
        if len(lines[0]) == 1 and lines[0][0].isdigit():
            lines = lines[1:]
        header = lines[0]
        if header[0] in ("file", "image_id", "file_name"):
            header = header[1:]
        for parts in lines[1:]:
            if len(parts) != len(header) + 1:
                raise FacesmithError(
                    f"{table}: row for {parts[0]} has {len(parts) - 1} values, expected {len(header)}"
                )
            values = dict(zip(header, parts[1:], strict=True))
            rows[parts[0]] = _labels(table, parts[0], celeba_attributes, values)
        return rows
    reader = csv.DictReader(text.splitlines())
    key = next((k for k in ("file", "image_id", "file_name") if k in (reader.fieldnames or [])), None)
    if key is None:
        raise FacesmithError(f"{table} has no file column: name it file, image_id or file_name")
    for row in reader:
        rows[row[key]] = _labels(table, row[key], celeba_attributes, row)
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FacesmithError(f"{path} is not UTF-8 text: save it as UTF-8") from None


def _labels(table: Path, name: str, parse, row: dict) -> dict:
    try:
        return parse(row)
    except (TypeError, ValueError) as error:
        raise FacesmithError(
            f"{table}: the row for {name} has a value that is not a number ({error})"
        ) from None


def _read_celeba(root: Path) -> Source:
    table = _celeba_table(root)
    if table is None:
        raise FacesmithError(f"{root} has no CelebA attribute table ({', '.join(CELEBA_TABLES)})")
    rows = read_celeba_table(table)
    folder = next((d for d in (root / "img_align_celeba", root / "images") if d.is_dir()), root)
    identities = {}
    for candidate in (root / "identity_CelebA.txt", root / "Anno" / "identity_CelebA.txt"):
        if candidate.is_file():
            for line in candidate.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    identities[parts[0]] = parts[1]
    items = []
    seen = set()
    for path in list_images(folder):
        name = path.relative_to(folder).as_posix()
        seen.add(name)
        attrs = rows.get(name)
        items.append(
            SourceItem(
                path,
                "celeba",
                attributes=attrs or {},
                identity=identities.get(name),
                problem=None if attrs is not None else "missing from the attribute table",
            )
        )
    notes = []
    orphans = len(set(rows) - seen)
    if orphans:
        notes.append(f"{table.name}: {orphans} attribute rows name files that do not exist")
    return Source(root, "celeba", items, notes)


def _read_utkface(root: Path) -> Source:
    items = []
    for path in list_images(root):
        match = UTKFACE_NAME.match(path.name)
        if match is None:
            items.append(SourceItem(path, "utkface", problem="file name has no age_gender_race_ labels"))
            continue
        age, gender, race = (int(g) for g in match.groups())
        items.append(SourceItem(path, "utkface", attributes=utkface_attributes(age, gender, race)))
    return Source(root, "utkface", items)


def read_caption_file(path: Path) -> tuple[str | None, str | None]:
    """(caption, problem): the caption text, or why it can't be used (not UTF-8)."""
    try:
        return path.read_bytes().decode("utf-8-sig").strip(), None
    except UnicodeDecodeError:
        return None, "caption file is not UTF-8"


def _read_kohya(root: Path) -> Source:
    items = []
    for path in list_images(root):
        repeats = 1
        for parent in path.relative_to(root).parents:
            match = KOHYA_REPEAT_DIR.match(parent.name)
            if match:
                repeats = int(match.group(1))
                break
        caption_file = path.with_suffix(".txt")
        caption, problem = read_caption_file(caption_file) if caption_file.is_file() else (None, None)
        items.append(SourceItem(path, "kohya", caption=caption or None, repeats=repeats, problem=problem))
    return Source(root, "kohya", items)


def _attributes_from_row(row: dict) -> dict:
    """CelebA-named columns, ``age``, ``gender``/``Male`` and ``ethnicity`` of a metadata row."""
    attrs = {}
    nested = row.get("attributes")
    if isinstance(nested, dict):
        row = {**row, **nested}
    for key in CELEBA_ATTRIBUTES:
        value = row.get(key)
        if value not in (None, ""):
            attrs[key] = int(float(value) > 0)
    if row.get("age") not in (None, ""):
        attrs["age"] = int(float(row["age"]))
    gender = str(row.get("gender", "")).strip().lower()
    if gender in ("male", "man", "m"):
        attrs["Male"] = 1
    elif gender in ("female", "woman", "f"):
        attrs["Male"] = 0
    if row.get("ethnicity") in ETHNICITIES:
        attrs["ethnicity"] = row["ethnicity"]
    return attrs


def _read_imagefolder(root: Path) -> Source:
    notes = []
    # HF's imagefolder metadata, read leniently (a bad line is a note, not a stop): it is an input, not
    # the manifest prepare writes (data.manifest), and may hold columns of its own.
    if (root / MANIFEST).is_file():
        rows = []
        for n, line in enumerate(_read_text(root / MANIFEST).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    notes.append(f"metadata.jsonl line {n} is not JSON and was skipped")
    else:
        rows = list(csv.DictReader(_read_text(root / "metadata.csv").splitlines()))
    by_name = {}
    for row in rows:
        if isinstance(row, dict) and row.get("file_name"):
            by_name[Path(row["file_name"]).as_posix()] = row
    items = []
    seen = set()
    for path in list_images(root):
        name = path.relative_to(root).as_posix()
        seen.add(name)
        row = by_name.get(name)
        if row is None:
            items.append(SourceItem(path, "imagefolder", problem="missing from the metadata file"))
            continue
        text = row.get("text") or row.get("caption")
        attrs = _labels(root / "metadata", name, _attributes_from_row, row)
        items.append(SourceItem(path, "imagefolder", attributes=attrs, caption=text or None))
    orphans = len(set(by_name) - seen)
    if orphans:
        notes.append(f"metadata: {orphans} rows name files that do not exist")
    return Source(root, "imagefolder", items, notes)


def _read_folder(root: Path) -> Source:
    return Source(root, "folder", [SourceItem(path, "folder") for path in list_images(root)])
