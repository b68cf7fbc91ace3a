"""Reading a dataset folder, aspect-ratio buckets and the seeded batch order."""

from __future__ import annotations

import json
import random

import pytest

import factory
from facesmith.data.captions import caption_from_attributes
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.dataset import (
    BatchStream,
    assign_buckets,
    epoch_batches,
    load_pixels,
    make_buckets,
    read_dataset,
    training_caption,
)


def test_reads_train_rows_only_and_refuses_missing_images(faces, tmp_path):
    images = read_dataset(faces)
    assert len(images) == 4 and images[0].size == (40, 40) and images[0].attributes["Smiling"] == 1
    assert len(read_dataset(faces, split="val")) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.jsonl").write_text(json.dumps({"file_name": "images/gone.png", "text": "x"}) + "\n")
    with pytest.raises(FacesmithError, match="gone.png does not exist"):
        read_dataset(broken)
    with pytest.raises(FacesmithError, match="no metadata.jsonl"):
        read_dataset(tmp_path)


def test_buckets_follow_kohya_area_and_step():
    buckets = make_buckets(512, 64, 256, 1024)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)


def test_images_go_to_the_nearest_aspect_ratio(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "d", count=3, size=[(100, 50), (50, 100), (60, 60)])
    assigned = assign_buckets(read_dataset(data), [(64, 32), (32, 64), (48, 48)])
    assert assigned == {(64, 32): [0], (32, 64): [1], (48, 48): [2]}


def test_batch_order_is_seeded_per_epoch_and_every_batch_is_full():
    assigned = {(64, 64): list(range(5)), (64, 32): [5, 6]}
    first = epoch_batches(assigned, 2, seed=1, epoch=0, flip=True)
    assert first == epoch_batches(assigned, 2, seed=1, epoch=0, flip=True)
    assert first != epoch_batches(assigned, 2, seed=1, epoch=1, flip=True)
    assert all(len(batch) == 2 for batch in first)
    assert {i.index for batch in first for i in batch} == set(range(7))
    for batch in first:  # one bucket per batch
        assert len({i.index in assigned[(64, 32)] for i in batch}) == 1
    assert any(i.flip for batch in first for i in batch)


def test_the_stream_rolls_over_epochs_gives_each_process_its_slice_and_seeks_back():
    assigned = {(64, 64): list(range(5)), (64, 32): [5, 6]}
    streams = [BatchStream(assigned, batch_size=1, rank=r, processes=2, seed=1, flip=False) for r in (0, 1)]
    epoch0 = epoch_batches(assigned, 2, seed=1, epoch=0, flip=False)
    assert streams[0].batches_per_epoch == len(epoch0) == 4
    taken = [[next(stream) for _ in range(6)] for stream in streams]
    for rank in (0, 1):
        assert taken[rank][:4] == [batch[rank : rank + 1] for batch in epoch0]
    epoch1 = epoch_batches(assigned, 2, seed=1, epoch=1, flip=False)
    assert taken[0][4:] == [batch[:1] for batch in epoch1[:2]]
    assert (streams[0].epoch, streams[0].position) == (1, 2)
    assert streams[0].take_seen() == [b[0].index for b in taken[0]] and streams[0].seen == []
    again = BatchStream(assigned, batch_size=1, rank=0, processes=2, seed=1, flip=False)
    again.seek(1, 2)  # what a resume does: the order continues where the checkpoint stopped
    assert next(again) == next(streams[0])


def test_training_captions_follow_the_settings_and_the_generator(faces):
    image = read_dataset(faces)[0]
    assert training_caption(image, TrainConfig(), random.Random(0)) == image.text
    assert training_caption(image, TrainConfig(caption_dropout=1.0), random.Random(0)) == ""
    shuffled = TrainConfig(caption_shuffle=True, keep_tokens=1)
    draws = [training_caption(image, shuffled, random.Random(seed)) for seed in range(20)]
    assert all(d.startswith("a photo of a person, ") for d in draws) and len(set(draws)) > 1
    assert draws == [training_caption(image, shuffled, random.Random(seed)) for seed in range(20)]
    fresh = training_caption(image, TrainConfig(caption_from_attributes=True), random.Random(0))
    assert fresh != image.text and fresh == caption_from_attributes(image.attributes, random.Random(0))


def test_pixels_cover_and_centre_crop(faces):
    image = read_dataset(faces)[0]
    x = load_pixels(image.path, (32, 16))
    assert x.shape == (3, 16, 32) and x.min() >= -1 and x.max() <= 1


def _kohya_dataset(directory, repeats: list[int], val: set[int] = frozenset()):
    import dataclasses

    from facesmith.data.manifest import read_manifest, write_manifest

    factory.colour_field_dataset(directory, count=len(repeats))
    rows = [r for r in read_manifest(directory) if r.split == "train"]
    rows = [
        dataclasses.replace(
            r,
            source="kohya",
            source_file=f"/photos/{n}_alice/{i}.jpg",
            repeats=n,
            split="val" if i in val else "train",
        )  # fmt: skip
        for i, (r, n) in enumerate(zip(rows, repeats, strict=True))
    ]
    write_manifest(directory, rows)
    return directory


def test_kohya_repeats_make_an_epoch_the_sum_of_images_times_repeats(tmp_path):
    """Issue 16 bug 2: `10_alice` trained each image once per epoch."""
    from facesmith.train.dataset import bucketed_images

    images = read_dataset(_kohya_dataset(tmp_path / "d", [3, 3, 1]))
    assert [image.repeats for image in images] == [3, 3, 1]
    for bucketing in (False, True):
        config = TrainConfig(bucketing=bucketing, min_bucket_side=32, max_bucket_side=64, bucket_step=8)
        assigned = bucketed_images(images, config, 40)
        assert sorted(i for indices in assigned.values() for i in indices) == [0, 0, 0, 1, 1, 1, 2]
    stream = BatchStream(assigned, batch_size=1, rank=0, processes=1, seed=0, flip=False)
    assert stream.batches_per_epoch == 7
    assert sorted(next(stream)[0].index for _ in range(7)) == [0, 0, 0, 1, 1, 1, 2]


def test_held_out_images_are_reported_and_small_concepts_named(tmp_path):
    from facesmith.train.dataset import held_out_note

    small = _kohya_dataset(tmp_path / "small", [10] * 4, val={2})
    note = held_out_note(small)
    assert note.startswith(f"dataset {small}: 1 of 4 images are held out (split val)")
    assert "small concept folders lose images they need: 10_alice (1 of 4)" in note
    assert "val_fraction 0" in note and "\n" not in note
    assert held_out_note(_kohya_dataset(tmp_path / "none", [10] * 4)) is None
    assert "concept" not in held_out_note(
        factory.colour_field_dataset(tmp_path / "plain")
    )  # no Kohya folders


def test_a_bad_repeats_value_is_one_line(tmp_path):
    directory = _kohya_dataset(tmp_path / "d", [0, 1])
    with pytest.raises(FacesmithError, match="has repeats 0: write a whole number >= 1"):
        read_dataset(directory)


def test_bucket_limits_scale_with_the_resolution(tmp_path):
    """Issue 16 bug 6: at 128 px the fixed 256-px minimum put every image in the square bucket."""
    from facesmith.train.dataset import bucket_limits, bucketed_images

    assert bucket_limits(TrainConfig(), 512) == (64, 256, 1024)  # Kohya's defaults
    assert bucket_limits(TrainConfig(), 128) == (32, 64, 256)
    assert bucket_limits(TrainConfig(bucket_step=16, min_bucket_side=48), 128) == (16, 48, 256)
    data = factory.colour_field_dataset(tmp_path / "d", count=2, size=[(96, 160), (160, 96)])
    images = read_dataset(data)
    assigned = bucketed_images(images, TrainConfig(bucketing=True), 128)
    assert sorted(assigned) == [(96, 160), (160, 96)]
    with pytest.warns(UserWarning, match="leave only the square bucket: lower min_bucket_side"):
        assert list(bucketed_images(images, TrainConfig(bucketing=True, min_bucket_side=256), 128)) == [
            (128, 128)
        ]
