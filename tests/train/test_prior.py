"""Prior preservation's class images: Kohya reg folders, prepare folders, bad folders, the batch order."""

from __future__ import annotations

import pytest

import factory
from facesmith.errors import FacesmithError
from facesmith.train.prior import PriorBatches, read_class_images


def test_a_kohya_reg_folder_captions_by_its_class_and_repeats(tmp_path):
    for k in range(2):
        factory.save_photo(tmp_path / "reg" / "4_young_woman" / f"{k}.png", seed=k)
    (tmp_path / "reg" / "4_young_woman" / "1.txt").write_text("a photo of a woman, smiling")
    images = read_class_images(tmp_path / "reg", class_prompt=None)
    assert [(i.text, i.repeats, i.size) for i in images] == [
        ("young woman", 4, (48, 48)),
        ("a photo of a woman, smiling", 4, (48, 48)),
    ]


def test_a_plain_folder_takes_class_prompt_and_a_prepare_folder_its_manifest(tmp_path):
    factory.save_photo(tmp_path / "plain" / "a.png", seed=0)
    assert [i.text for i in read_class_images(tmp_path / "plain", "a photo of a person")] == [
        "a photo of a person"
    ]
    with pytest.raises(FacesmithError, match="a.png has no caption: set class_prompt"):
        read_class_images(tmp_path / "plain", None)
    prepared = factory.colour_field_dataset(tmp_path / "prepared", count=3)
    assert len(read_class_images(prepared, None)) == 3  # its train rows


def test_empty_and_unreadable_reg_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacesmithError, match="has no images: give a folder of class images") as got:
        read_class_images(tmp_path / "empty", "a person")
    assert "\n" not in str(got.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"no image")
    with pytest.raises(FacesmithError, match="cannot read class image .*x.png"):
        read_class_images(tmp_path / "bad", "a person")


def test_class_batches_are_a_pure_function_of_k_and_cover_every_image_each_epoch():
    assigned = {(64, 64): [0, 1, 2, 3, 4, 5]}
    one = PriorBatches(assigned, batch_size=2, rank=0, processes=1, seed=3, flip=True)
    two = PriorBatches(assigned, batch_size=2, rank=0, processes=1, seed=3, flip=True)
    assert [one.batch(k) for k in (5, 0, 7)] == [two.batch(k) for k in (5, 0, 7)]  # any order, same batches
    epoch = sorted(item.index for k in range(3) for item in one.batch(k))
    assert epoch == [0, 1, 2, 3, 4, 5]
    assert [one.batch(k) for k in range(3)] != [one.batch(k) for k in range(3, 6)]  # a new order each epoch
