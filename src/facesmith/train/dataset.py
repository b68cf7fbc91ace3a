"""The training set: reading a dataset folder, aspect-ratio buckets, and the seeded order of batches.

A dataset folder is the contract `facesmith prepare` writes: `DIR/metadata.jsonl` with one JSON object per
image (`file_name`, `text`, `attributes`, `split`, `width`, `height`, ...), images under `DIR/images/`.
Only `split == "train"` rows (or rows without a split) are trained on, each `repeats` times per epoch
(Kohya's `N_name` folders); `held_out_note` says what the `val` rows keep out.

Buckets follow Kohya's `BucketManager.make_buckets`: every width/height pair in steps of `bucket_step`
within [min_side, max_side] whose area is at most resolution^2, each image going to the bucket nearest
its aspect ratio; it is resized to cover the bucket and centre-cropped. Without bucketing every image
is a resolution x resolution square.

The batch order is a pure function of (seed, epoch), so a resumed run only needs the epoch and the batch
index to continue exactly where it stopped. Each batch is a *global* batch (per-process size x number of
processes) from one bucket; process r trains on its r-th slice. `BatchStream` walks that order epoch after
epoch for one process, and `training_caption` draws the caption a step sees (Kohya's caption ops, from
`facesmith.data.caption_ops`). Latents are `cache.py`'s business.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from facesmith.data.caption_ops import process_caption
from facesmith.data.captions import caption_from_attributes
from facesmith.data.manifest import MANIFEST, read_manifest
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


@dataclass(frozen=True)
class FaceImage:
    path: Path
    text: str
    attributes: dict = field(default_factory=dict, hash=False, compare=False)
    size: tuple[int, int] = (0, 0)  # width, height as stored
    repeats: int = 1  # Kohya's N of an `N_name` folder: times the image is seen per epoch


@dataclass(frozen=True)
class BatchItem:
    index: int  # into the dataset's image list
    flip: bool


def read_dataset(directory: str | Path, split: str = "train") -> list[FaceImage]:
    """The images of `split` listed in the dataset's manifest (`data.manifest`), checked to exist;
    FacesmithError otherwise."""
    directory = Path(directory)
    images = []
    for row in read_manifest(directory, split=split):
        path = directory / row.file_name
        if not path.is_file():
            raise FacesmithError(f"{directory / MANIFEST}: image {path} does not exist")
        size = (row.width, row.height)
        if not all(size):
            try:
                with Image.open(path) as image:
                    size = image.size
            except (OSError, UnidentifiedImageError) as err:
                raise FacesmithError(f"{directory / MANIFEST}: cannot read image {path}: {err}") from None
        if not isinstance(row.repeats, int) or row.repeats < 1:
            raise FacesmithError(
                f"{directory / MANIFEST}: {row.file_name} has repeats {row.repeats!r}: write a whole number >= 1"
            )
        images.append(FaceImage(path, row.text, row.attributes, size, row.repeats))
    if not images:
        raise FacesmithError(f"dataset {directory} has no {split} images in {MANIFEST}")
    return images


class TrainingWarning(UserWarning):
    """Something about a training run a person should know and may want to change; the run goes on."""


MIN_CONCEPT_FOR_VAL = 20  # below this a concept folder needs every image (issue 16 bug 2: 1 of 7 held out)


def held_out_note(directory: str | Path) -> str | None:
    """What the dataset's `val` rows keep out of training, in one line, or None when nothing is held out.

    Named per Kohya concept folder (`10_alice`: rows with `repeats`) when a folder of fewer than
    MIN_CONCEPT_FOR_VAL images lost some to validation: a small concept cannot spare them.
    """
    rows = read_manifest(directory)
    held = [row for row in rows if row.split == "val"]
    if not held:
        return None
    concepts: dict[str, list] = {}
    for row in rows:
        if row.repeats != 1 or row.source == "kohya":
            concepts.setdefault(Path(row.source_file).parent.name, []).append(row)
    small = [
        f"{name} ({sum(r.split == 'val' for r in members)} of {len(members)})"
        for name, members in sorted(concepts.items())
        if len(members) < MIN_CONCEPT_FOR_VAL and any(r.split == "val" for r in members)
    ]
    note = (
        f"dataset {directory}: {len(held)} of {len(rows)} images are held out (split val) and not trained on"
    )
    if small:
        note += (
            f"; small concept folders lose images they need: {', '.join(small)}; prepare again with "
            "val_fraction 0, or set those rows' split to train"
        )
    return note


def repeat_images(
    assigned: dict[tuple[int, int], list[int]], images: list[FaceImage]
) -> dict[tuple[int, int], list[int]]:
    """Each image index `repeats` times in its bucket: an epoch is the sum of images x repeats, as in
    Kohya's `DreamBoothDataset` (`num_repeats` of an `N_name` folder)."""
    return {
        bucket: [i for i in indices for _ in range(images[i].repeats)] for bucket, indices in assigned.items()
    }


def bucket_limits(config: TrainConfig, resolution: int) -> tuple[int, int, int]:
    """(step, min side, max side) of the buckets: the settings given, else Kohya's 64 / 256 / 1024 at 512 px
    scaled with the resolution (issue 16 bug 6: at 128 px a fixed 256-px minimum left only the square)."""
    step = config.bucket_step or (64 if resolution >= 512 else 32)
    low = config.min_bucket_side or max(step, resolution // 2 // step * step)
    high = config.max_bucket_side or resolution * 2
    return step, low, high


def make_buckets(resolution: int, step: int, min_side: int, max_side: int) -> list[tuple[int, int]]:
    """(width, height) buckets of area <= resolution^2, sides multiples of `step` (Kohya's make_buckets)."""
    max_area = resolution * resolution
    min_side = max(step, min_side - min_side % step)
    buckets = {(resolution, resolution)}
    width = min_side
    while width <= max_side:
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def assign_buckets(
    images: list[FaceImage], buckets: list[tuple[int, int]]
) -> dict[tuple[int, int], list[int]]:
    """Each image to the bucket with the nearest aspect ratio; {bucket: image indices}."""
    ratios = np.array([w / h for w, h in buckets])
    assigned: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        width, height = image.size
        bucket = buckets[int(np.abs(ratios - width / height).argmin())]
        assigned.setdefault(bucket, []).append(index)
    return assigned


def epoch_batches(
    assigned: dict[tuple[int, int], list[int]], global_batch: int, seed: int, epoch: int, flip: bool
) -> list[list[BatchItem]]:
    """The global batches of one epoch, in order; the same (seed, epoch) gives the same list.

    A bucket's last short batch is filled up with images from the start of its shuffled list, so every
    process gets a full, equally shaped slice.
    """
    rng = random.Random(f"facesmith-batches-{seed}-{epoch}")
    batches = []
    for bucket in sorted(assigned):
        indices = list(assigned[bucket])
        rng.shuffle(indices)
        for start in range(0, len(indices), global_batch):
            chunk = indices[start : start + global_batch]
            chunk += [indices[i % len(indices)] for i in range(global_batch - len(chunk))]
            batches.append([BatchItem(i, flip and rng.random() < 0.5) for i in chunk])
    rng.shuffle(batches)
    return batches


class BatchStream:
    """One process's micro-batches, epoch after epoch, in the seeded order of `epoch_batches`.

    `epoch` and `position` (the next global batch of the epoch) are all a checkpoint needs to continue
    the order exactly; `seen` collects the images this process trained on since the last `take_seen`.
    """

    def __init__(
        self,
        assigned: dict[tuple[int, int], list[int]],
        *,
        batch_size: int,
        rank: int,
        processes: int,
        seed: int,
        flip: bool,
    ) -> None:
        self.assigned, self.batch_size, self.rank = assigned, batch_size, rank
        self.global_batch, self.seed, self.flip = batch_size * processes, seed, flip
        self.seen: list[int] = []
        self.seek(0, 0)

    def seek(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position
        self.batches = epoch_batches(self.assigned, self.global_batch, self.seed, epoch, self.flip)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)  # the same every epoch: it depends only on the bucket sizes

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> list[BatchItem]:
        if self.position >= len(self.batches):
            self.seek(self.epoch + 1, 0)
        batch = self.batches[self.position]
        self.position += 1
        mine = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self.seen.extend(item.index for item in mine)
        return mine

    def take_seen(self) -> list[int]:
        seen, self.seen = self.seen, []
        return seen


def training_caption(image: FaceImage, config: TrainConfig, rng: random.Random) -> str:
    """The caption one training step sees for `image`: its own text, or a fresh caption from its
    attributes with `caption_from_attributes`, then Kohya's dropout, tag dropout and shuffle."""
    text = image.text
    if config.caption_from_attributes and image.attributes:
        text = caption_from_attributes(image.attributes, rng)
    return process_caption(
        text,
        rng,
        dropout_rate=config.caption_dropout,
        tag_dropout_rate=config.caption_tag_dropout,
        shuffle=config.caption_shuffle,
        keep_tokens=config.keep_tokens,
    )


def cover_geometry(source: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """((resized w, h), left, top): the cover resize of a `source` (w, h) image and the offset of its
    centre crop to `size` (w, h)."""
    width, height = size
    scale = max(width / source[0], height / source[1])
    resized = (max(width, round(source[0] * scale)), max(height, round(source[1] * scale)))
    return resized, (resized[0] - width) // 2, (resized[1] - height) // 2


def cover_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` resized to cover `size` (w, h) and centre-cropped to it: how a training image meets its
    bucket, and so how its loss mask does too (`masks.py`)."""
    resized, left, top = cover_geometry(image.size, size)
    image = image.resize(resized, Image.LANCZOS)
    return image.crop((left, top, left + size[0], top + size[1]))


def crop_conditioning(source: tuple[int, int], size: tuple[int, int], flip: bool) -> tuple[int, ...]:
    """SDXL's micro-conditioning of one training image: (original h, w, crop top, left, target h, w).

    As diffusers' `train_text_to_image_sdxl.py`: the original size is the image's before the resize,
    the crop's top-left corner is in the resized image, and the target is the bucket. A mirrored image's
    crop starts where the mirror of its right edge is (the flip comes after the crop here)."""
    resized, left, top = cover_geometry(source, size)
    if flip:
        left = resized[0] - size[0] - left
    return (source[1], source[0], top, left, size[1], size[0])


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Image -> float32 [3, H, W] in [-1, 1], resized to cover `size` (w, h) and centre-cropped."""
    with Image.open(path) as image:
        array = np.asarray(cover_crop(image.convert("RGB"), size), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def bucketed_images(images, config: TrainConfig, resolution: int) -> dict[tuple[int, int], list[int]]:
    """{(width, height): image indices}: aspect-ratio buckets, or one resolution x resolution square."""
    import warnings

    if not config.bucketing:
        return repeat_images({(resolution, resolution): list(range(len(images)))}, images)
    step, low, high = bucket_limits(config, resolution)
    buckets = make_buckets(resolution, step, low, high)
    if len(buckets) == 1:
        warnings.warn(
            f"bucketing is on but the bucket limits (step {step}, sides {low}-{high} px at {resolution} px) "
            "leave only the square bucket: lower min_bucket_side or bucket_step",
            TrainingWarning,
            stacklevel=2,
        )
    return repeat_images(assign_buckets(images, buckets), images)
