"""The `facesmith prepare` stage: face photos in, an aligned, captioned dataset directory out.

Owns: the run (sources -> per-image work in the process pool of ``pool`` -> in-order decisions -> files), resuming,
captions per image, the train/val split and the manifest. Reading sources is ``sources``, detection
``faces``, cropping ``align``, quality measures ``quality``, the report ``report``.

Output: the dataset directory of ``manifest`` (``DIR/images/NNNNNN.png`` and ``DIR/metadata.jsonl``, one
``ManifestRow`` per kept image), plus ``DIR/prepare.toml``, ``DIR/report.md``, ``DIR/report.json`` and
``DIR/contact_sheet.png``.

Determinism: items are numbered in source order (sources in the order given, files sorted); each image's
work depends only on its file and the config; duplicates are decided in that order in the main process;
captions use a random generator seeded by (seed, index); the split hashes the identity
(``manifest.assign_split``). So a rerun, a run
with another worker count, and a resumed run all give the same dataset. Resuming: every decision is
appended to ``DIR/progress.jsonl`` as it is made; a rerun with the same settings skips what is there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facesmith.data.config import PrepareConfig
from facesmith.data.manifest import IMAGE_SUFFIXES, ManifestRow, assign_split, image_name, write_manifest
from facesmith.data.pool import exclusive, run_in_order
from facesmith.data.sources import SourceItem, read_source
from facesmith.errors import FacesmithError
from facesmith.progress import Progress

PROGRESS_FILE = "progress.jsonl"
# A Kohya concept folder smaller than this is never split: a held-out image or two of a 7-image subject
# is a large share of what the run can learn from, and says little as validation (issue [train-2]).
MIN_SPLIT_CONCEPT = 20
# Faces are searched in a copy of at most this many pixels (faces.detect_faces): MTCNN needs ~100 bytes
# per pixel, and a face too small to find at this size is far too small to keep at any --size.
DETECT_PIXELS = 4_000_000
# A JPEG decoded small keeps at least twice the pixels its crop needs, then is resized with Lanczos:
# Pillow's thumbnail(reducing_gap=2.0), so the reduced decode costs no visible quality.
REDUCING_GAP = 2


@dataclass
class Task:
    index: int
    item: SourceItem
    out_path: Path
    config: PrepareConfig


# ----------------------------------------------------------------------------------------------------------
# Per-image work: runs in worker processes; returns a JSON-able record, writes the image if kept so far.


def process_image(task: Task) -> dict:
    """Decode, find and align the face, measure quality, write the crop. Never raises for bad input.

    The file is read once: the sha256 is of the bytes that are decoded (a file rewritten meanwhile can't
    pair one version's hash with another's pixels). Large JPEGs are decoded small (``decode_photo``'s
    ``reduce``): for detection to about DETECT_PIXELS, for the crop at the smallest scale that still
    gives the face REDUCING_GAP x ``size`` pixels. Coordinates, ``upscale`` and ``outside`` are in the
    full photo's pixels."""
    from facesmith.data.align import align_face, center_crop, face_quad, outside_fraction, quad_side
    from facesmith.data.faces import detect_faces, main_face, scale_face
    from facesmith.data.quality import BadImage, dct_reduction, decode_photo, open_photo, phash, sharpness

    item, config = task.item, task.config
    record: dict = {"index": task.index, "source_file": str(item.path)}
    if item.problem:
        return {**record, "rejected": item.problem}
    try:
        data = item.path.read_bytes()
        record["sha256"] = hashlib.sha256(data).hexdigest()
        image, full = decode_photo(data, config.max_pixels, reduce=_first_reduction(data, config))
    except BadImage as error:
        return {**record, "rejected": str(error)}
    except OSError as error:
        return {**record, "rejected": f"unreadable ({error.strerror or error})"}

    record["original_size"] = list(full)
    if config.aligned:
        side = min(full)
        record["upscale"] = round(config.size / side, 3)
        if config.size / side > config.max_upscale:
            return {**record, "rejected": "too small"}
        crop = center_crop(image, config.size)
    else:
        sx, sy = full[0] / image.width, full[1] / image.height
        found = detect_faces(image, max_pixels=DETECT_PIXELS)
        face = main_face([scale_face(f, sx, sy) for f in found], full)
        if face is None:
            return {**record, "rejected": "no face"}
        record["box"] = [round(v, 1) for v in face.box]
        record["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in face.landmarks]
        record["score"] = round(face.score, 4)
        if face.score < config.min_score:
            return {**record, "rejected": "face score below min_score"}
        quad = face_quad(face.landmarks, config.margin)
        record["upscale"] = round(config.size / quad_side(quad), 3)
        record["outside"] = round(outside_fraction(quad, *full), 3)
        if record["upscale"] > config.max_upscale:
            return {**record, "rejected": "too small"}
        if record["outside"] > config.max_outside:
            return {
                **record,
                "rejected": "crop mostly outside the photo (tight pre-cropped sets: use --aligned)",
            }
        needed = dct_reduction(quad_side(quad), config.size * REDUCING_GAP)
        if needed < round(sx):  # the detection decode is too small for this face: decode it larger
            image = open_photo(data, config.max_pixels, reduce=needed)
            sx, sy = full[0] / image.width, full[1] / image.height
        crop = align_face(image, [(x / sx, y / sy) for x, y in face.landmarks], config.size, config.margin)

    record["sharpness"] = round(sharpness(crop), 2)
    if record["sharpness"] < config.min_sharpness:
        return {**record, "rejected": "blurry"}
    record["phash"] = f"{phash(crop):016x}"
    task.out_path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if config.image_format in ("jpg", "webp") else {}
    crop.save(task.out_path, **options)
    return record


def _first_reduction(data: bytes, config: PrepareConfig) -> int:
    """How much smaller than the photo to decode it first: for --aligned, what the centre crop needs;
    for detection, down to about DETECT_PIXELS (process_image decodes larger if the face needs it)."""
    from facesmith.data.quality import dct_reduction, header_size

    size = header_size(data)
    if size is None:  # not an image: decode_photo says why
        return 1
    if config.aligned:
        return dct_reduction(min(size), config.size * REDUCING_GAP)
    return dct_reduction((size[0] * size[1]) ** 0.5, DETECT_PIXELS**0.5)


# ----------------------------------------------------------------------------------------------------------
# The stage.


def run_prepare(config: PrepareConfig, progress: Progress | None = None) -> Path:
    """Build the dataset directory ``config.out_dir`` (see the module docstring); return its path.

    ``progress`` hears ("preparing", images decided, images in the sources) after each decision."""
    config.validate()
    start = time.perf_counter()
    out = Path(config.out_dir)
    _claim_out_dir(out, config)
    with exclusive(out):
        return _build(config, out, start, progress)


def _build(config: PrepareConfig, out: Path, start: float, progress: Progress | None) -> Path:
    sources = [read_source(path, config.format) for path in config.sources]
    items = [item for source in sources for item in source.items]
    total = len(items)

    done = _read_progress(out / PROGRESS_FILE, items)
    tasks = [
        Task(i, item, out / image_name(i, config.image_format), config)
        for i, item in enumerate(items)
        if i not in done
    ]
    seen_sha: set[str] = set()
    kept_hashes: list[int] = []
    for record in sorted(done.values(), key=lambda r: r["index"]):
        if "rejected" not in record:
            seen_sha.add(record["sha256"])
            kept_hashes.append(int(record["phash"], 16))
    hashes = np.array(kept_hashes, dtype=np.uint64)

    with open(out / PROGRESS_FILE, "a", encoding="utf-8") as log:
        count = len(done)
        if progress:
            progress("preparing", count, total)
        for task, record in zip(tasks, run_in_order(process_image, tasks, config.workers), strict=True):
            record = _decide_duplicate(record, task, seen_sha, hashes, config.max_hash_distance)
            if "rejected" not in record:
                hashes = np.append(hashes, np.uint64(int(record["phash"], 16)))
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[task.index] = record
            count += 1
            if progress:
                progress("preparing", count, total)

    unlabeled = [
        i for i in range(total) if "rejected" not in done[i] and not (items[i].caption or items[i].attributes)
    ]
    predicted, notes = predict_attributes(out, [done[i] for i in unlabeled], config)
    kept = [i for i in range(total) if "rejected" not in done[i]]
    concepts = Counter(items[i].path.parent for i in kept if items[i].source == "kohya")
    whole = {folder for folder, count in concepts.items() if count < MIN_SPLIT_CONCEPT}
    rows = [_manifest_row(items[i], done[i], config, predicted.get(i), whole) for i in kept]
    if whole and config.val_fraction > 0:
        notes.append(
            f"{len(whole)} Kohya concept folder(s) under {MIN_SPLIT_CONCEPT} images kept whole for training "
            f"(no val images): {', '.join(sorted(f.name for f in whole))}"
        )
    write_manifest(out, rows)
    from facesmith.data.report import write_report

    summary = write_report(
        out, config, sources, items, done, rows, wall_s=time.perf_counter() - start, notes=notes
    )
    if not rows:  # an empty dataset is a failed run (non-zero exit), with what to change
        if not total:
            raise FacesmithError(
                f"found no images in {', '.join(config.sources)}: give folders of {'/'.join(IMAGE_SUFFIXES)} files"
            )
        why = summary["advice"] or ", ".join(f"{n} {reason}" for reason, n in summary["rejected"].items())
        raise FacesmithError(f"kept 0 of {total} images ({why}); see {out / 'report.md'}")
    return out


def _decide_duplicate(
    record: dict, task: Task, seen_sha: set[str], hashes: np.ndarray, max_distance: int
) -> dict:
    """Reject a kept image whose bytes (always) or pHash (within max_distance bits, when >= 0) match an
    image kept before it in source order; the first one stays. Its crop file is removed."""
    from facesmith.data.quality import hamming

    if "rejected" in record:
        return record
    if record["sha256"] in seen_sha:
        reason = "exact duplicate"
    elif (
        max_distance >= 0 and len(hashes) and hamming(int(record["phash"], 16), hashes).min() <= max_distance
    ):
        reason = "near duplicate"
    else:
        seen_sha.add(record["sha256"])
        return record
    task.out_path.unlink(missing_ok=True)
    return {**record, "rejected": reason}


def predict_attributes(
    out: Path, records: list[dict], config: PrepareConfig
) -> tuple[dict[int, dict], list[str]]:
    """Attributes of unlabeled kept faces from the attribute classifier of ``facesmith.attributes`` (the
    shipped one, or ``config.attribute_classifier``), batch by batch from the written crops; and notes for
    the report. Without a classifier the faces keep the generic caption and the note says why."""
    if not records or not config.auto_caption:
        return {}, []
    from PIL import Image

    from facesmith.attributes.classifier import AttributeClassifier, caption_attributes

    try:
        classifier = (
            AttributeClassifier.load(config.attribute_classifier)
            if config.attribute_classifier
            else AttributeClassifier.load()
        )
    except FacesmithError as error:
        return {}, [f"{len(records)} unlabeled faces keep the generic caption: {error}"]
    predicted: dict[int, dict] = {}
    for start in range(0, len(records), 256):
        chunk = records[start : start + 256]
        images = []
        for record in chunk:
            with Image.open(out / image_name(record["index"], config.image_format)) as image:
                images.append(image.convert("RGB"))
        for record, attrs in zip(chunk, classifier.predict(images), strict=True):
            predicted[record["index"]] = caption_attributes(attrs)
    note = (
        f"{len(records)} unlabeled faces are captioned from attributes predicted by the attribute classifier; "
        "the predictions are in `predicted_attributes`, and `attributes` stays empty because they are not labels"
    )
    return predicted, [note]


def _manifest_row(
    item: SourceItem,
    record: dict,
    config: PrepareConfig,
    predicted: dict | None = None,
    whole: set[Path] | frozenset = frozenset(),
) -> ManifestRow:
    from facesmith.data.captions import caption_from_attributes, caption_from_template

    index = record["index"]
    rng = random.Random(f"{config.seed}:{index}")
    labels = item.attributes or predicted or {}
    if item.caption:
        text, origin = item.caption, "source"
    elif labels:
        origin = "attributes" if item.attributes else "predicted"
        if config.templates:
            text = caption_from_template(rng.choice(config.templates), labels, rng)
        else:
            text = caption_from_attributes(labels, rng)
    else:
        text, origin = config.generic_caption, "generic"
    key = f"{item.source}:{item.identity}" if item.identity else str(item.path)
    measured = ("box", "landmarks", "score", "sharpness", "upscale", "outside", "phash")
    return ManifestRow(
        file_name=image_name(index, config.image_format),
        text=text,
        attributes=item.attributes,
        source=item.source,
        source_file=str(item.path),
        split="train" if item.path.parent in whole else assign_split(key, config.seed, config.val_fraction),
        width=config.size,
        height=config.size,
        caption_from=origin,
        predicted_attributes=predicted if predicted and not item.attributes else None,
        identity=item.identity or None,
        repeats=item.repeats,
        **{k: record[k] for k in measured if k in record},
    )


def _claim_out_dir(out: Path, config: PrepareConfig) -> None:
    """Create the output folder, or resume one made with the same settings; refuse anything else."""
    toml = out / "prepare.toml"
    if out.exists() and not out.is_dir():
        raise FacesmithError(f"output {out} is a file: give a folder for the dataset")
    for folder in (*config.sources, config.out_dir):
        try:
            folder.encode("utf-8")
        except UnicodeEncodeError:  # prepare.toml (UTF-8 TOML) could not record it
            raise FacesmithError(
                f"folder {folder!r} has a name that is not valid UTF-8: rename it (file names inside may be)"
            ) from None
    target = out.resolve()
    for source in config.sources:
        root = Path(source).resolve()
        # An output inside a source is listed as input on the next run (its crops, its contact sheet),
        # which changes the sources and wipes the progress; a source inside the output is the same loop.
        if target == root or root in target.parents or target in root.parents:
            raise FacesmithError(
                f"output {out} and source {source} overlap: give an output folder outside every source"
            )
    if toml.is_file():
        previous = PrepareConfig.load(toml)
        if _comparable(previous) != _comparable(config):
            raise FacesmithError(
                f"output {out} holds a dataset made with other settings: use a new folder, or the same "
                f"settings (--config {toml}) to resume it"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise FacesmithError(
            f"output {out} is not empty and holds no prepare.toml: give a new or empty folder"
        )
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        config.save(toml)
    except OSError as error:
        raise FacesmithError(f"cannot write the output {out}: {error.strerror or error}") from None


def _comparable(config: PrepareConfig) -> dict:
    values = asdict(config)
    values.pop("workers")  # the worker count does not change the dataset
    values["sources"] = [str(Path(s).resolve()) for s in values["sources"]]
    values["out_dir"] = str(Path(values["out_dir"]).resolve())
    return values


def _read_progress(path: Path, items: list[SourceItem]) -> dict[int, dict]:
    """The decisions of an earlier run that still hold. A line cut by an interruption, and everything
    after it, is dropped from the file; if the sources' files changed, all progress and crops are."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not line.endswith(b"\n"):
            break
        done[record["index"]] = record
        good += len(line)
    if any(i >= len(items) or record.get("source_file") != str(items[i].path) for i, record in done.items()):
        done, good = {}, 0
        for crop in (path.parent / "images").iterdir():
            crop.unlink()
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done
