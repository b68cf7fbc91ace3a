"""The dataset contract: rows survive a write and a read, a row without a split trains, bad lines are named."""

import json

import pytest

from facesmith.data.manifest import (
    IMAGE_SUFFIXES,
    ManifestRow,
    assign_split,
    image_name,
    read_manifest,
    write_manifest,
)
from facesmith.errors import FacesmithError


def test_rows_round_trip_in_prepare_key_order_and_keep_other_tools_keys(tmp_path):
    row = ManifestRow(
        image_name(7, "jpg"), "a photo of a woman", {"Smiling": 1}, "celeba", "/src/1.jpg", "val", 64, 64,
        "attributes", identity="12", repeats=3, score=0.99, phash="00ff", extra={"aesthetic": 5.5},
    )  # fmt: skip
    write_manifest(tmp_path, [row, ManifestRow("images/000008.png", "Zoë")])
    lines = (tmp_path / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert list(json.loads(lines[0])) == [
        "file_name", "text", "attributes", "source", "source_file", "split", "width", "height",
        "caption_from", "identity", "repeats", "score", "phash", "aesthetic",
    ]  # fmt: skip
    assert "Zoë" in lines[1] and "repeats" not in lines[1]  # UTF-8 kept; default repeats left out
    assert read_manifest(tmp_path) == [row, ManifestRow("images/000008.png", "Zoë")]
    assert [r.file_name for r in read_manifest(tmp_path, split="val")] == ["images/000007.jpg"]


def test_a_hand_written_row_without_a_split_is_a_training_row(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n\n')
    (row,) = read_manifest(tmp_path, split="train")
    assert row.split == "train" and row.attributes == {} and row.width == 0
    assert read_manifest(tmp_path, split="val") == []


@pytest.mark.parametrize("line", ["not json", '{"text": "no file"}', "[1, 2]", '{"file_name": 3}'])
def test_a_bad_line_is_a_user_error_that_names_it(tmp_path, line):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n' + line + "\n")
    with pytest.raises(FacesmithError, match=r"metadata.jsonl:2 is not a JSON object with a file_name"):
        read_manifest(tmp_path)
    with pytest.raises(FacesmithError, match="no metadata.jsonl"):
        read_manifest(tmp_path / "elsewhere")


def test_split_by_key_is_fixed_and_near_the_fraction():
    keys = [f"celeba:{i}" for i in range(2000)]
    splits = [assign_split(k, 0, 0.1) for k in keys]
    assert splits == [assign_split(k, 0, 0.1) for k in keys]
    assert 0.07 < splits.count("val") / len(keys) < 0.13
    assert splits != [assign_split(k, 1, 0.1) for k in keys]  # another seed, another split
    assert {assign_split(k, 0, 0.0) for k in keys} == {"train"}


def test_prepare_and_evaluate_read_the_same_image_files(tmp_path):
    from PIL import Image

    from facesmith.data.sources import read_source
    from facesmith.evaluate.faceset import read_faces

    for name in ("a.png", "b.tif", "c.gif", "d.jpeg", "notes.txt"):
        Image.new("RGB", (8, 8)).save(tmp_path / name) if name != "notes.txt" else (
            tmp_path / name
        ).write_text("")
    listed = ["a.png", "b.tif", "c.gif", "d.jpeg"]
    assert [item.path.name for item in read_source(tmp_path, "folder").items] == listed
    assert [face.name for face in read_faces(tmp_path)] == listed
    assert {".tif", ".gif"} <= set(IMAGE_SUFFIXES)
