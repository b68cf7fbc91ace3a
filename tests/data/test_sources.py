"""Source formats: each is recognised and read with its labels; table problems are reported."""

from __future__ import annotations

import json

import pytest

from facesmith.attributes.schema import CELEBA_ATTRIBUTES
from facesmith.data.sources import detect_format, read_celeba_table, read_source
from facesmith.errors import FacesmithError
from factory import save_photo


def celeba_txt(folder, names, values):
    """list_attr_celeba.txt as CUHK ships it: count line, header, rows of -1/1, CRLF."""
    lines = [str(202599), " ".join(CELEBA_ATTRIBUTES)]
    for name, value in zip(names, values, strict=True):
        lines.append(name + " " + " ".join(["1" if value else "-1"] * len(CELEBA_ATTRIBUTES)))
    (folder / "list_attr_celeba.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())


def test_celeba_original_txt_with_missing_and_orphan_rows(tmp_path):
    for i in (1, 2, 3):
        save_photo(tmp_path / "img_align_celeba" / f"00000{i}.jpg", i)
    celeba_txt(tmp_path, ["000001.jpg", "000002.jpg", "000009.jpg"], [True, False, True])
    assert detect_format(tmp_path) == "celeba"
    source = read_source(tmp_path)
    first, second, third = source.items
    assert first.attributes["Smiling"] == 1 and first.attributes["Male"] == 1 and len(first.attributes) == 40
    assert second.attributes["Smiling"] == 0 and second.problem is None
    assert third.problem == "missing from the attribute table"
    assert source.notes == ["list_attr_celeba.txt: 1 attribute rows name files that do not exist"]


def test_celeba_csv_of_zero_one(tmp_path):
    save_photo(tmp_path / "images" / "a.jpg", 1)
    header = "image_id," + ",".join(CELEBA_ATTRIBUTES)
    row = "a.jpg," + ",".join("1" if n == "Eyeglasses" else "0" for n in CELEBA_ATTRIBUTES)
    (tmp_path / "list_attr_celeba.csv").write_text(header + "\n" + row + "\n")
    (item,) = read_source(tmp_path).items
    assert item.attributes["Eyeglasses"] == 1 and item.attributes["Bald"] == 0
    assert read_celeba_table(tmp_path / "list_attr_celeba.csv")["a.jpg"]["Eyeglasses"] == 1


def test_utkface_labels_from_file_names(tmp_path):
    save_photo(tmp_path / "34_1_2_20170116174525125.jpg.chip.jpg", 1)
    save_photo(tmp_path / "8_0_1_20170109142408075.jpg", 2)
    assert detect_format(tmp_path) == "utkface"
    woman, boy = read_source(tmp_path).items
    assert woman.attributes == {"age": 34, "Male": 0, "ethnicity": "East Asian", "Young": 1}
    assert (
        boy.attributes["age"] == 8 and boy.attributes["Male"] == 1 and boy.attributes["ethnicity"] == "Black"
    )


def test_kohya_repeat_folders_and_captions(tmp_path):
    save_photo(tmp_path / "10_alice" / "x.png", 1)
    (tmp_path / "10_alice" / "x.txt").write_text("alice, smiling\n")
    save_photo(tmp_path / "3_bob" / "y.png", 2)
    (tmp_path / "3_bob" / "y.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert detect_format(tmp_path) == "kohya"
    alice, bob = read_source(tmp_path).items
    assert (alice.caption, alice.repeats) == ("alice, smiling", 10)
    assert bob.repeats == 3 and bob.problem == "caption file is not UTF-8"


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_imagefolder_metadata(tmp_path, kind):
    save_photo(tmp_path / "train" / "a.png", 1)
    save_photo(tmp_path / "train" / "b.png", 2)
    save_photo(tmp_path / "train" / "c.png", 3)
    if kind == "jsonl":
        rows = [
            {"file_name": "train/a.png", "text": "a woman"},
            {"file_name": "train/b.png", "Smiling": 1, "age": 70, "gender": "male"},
            {"file_name": "train/gone.png", "text": "x"},
        ]
        (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    else:
        (tmp_path / "metadata.csv").write_text(
            "file_name,text,Smiling,age,gender\ntrain/a.png,a woman,,,\ntrain/b.png,,1,70,male\ntrain/gone.png,x,,,\n"
        )
    assert detect_format(tmp_path) == "imagefolder"
    source = read_source(tmp_path)
    a, b, c = source.items
    assert a.caption == "a woman"
    assert b.caption is None and b.attributes == {"Smiling": 1, "age": 70, "Male": 1}
    assert c.problem == "missing from the metadata file"
    assert source.notes == ["metadata: 1 rows name files that do not exist"]


def test_plain_folder_and_format_override(tmp_path):
    save_photo(tmp_path / "holiday.jpg", 1)
    assert detect_format(tmp_path) == "folder"
    assert read_source(tmp_path).items[0].attributes == {}
    with pytest.raises(FacesmithError, match="--format pdf is unknown"):
        read_source(tmp_path, "pdf")
    with pytest.raises(FacesmithError, match="no CelebA attribute table"):
        read_source(tmp_path, "celeba")
    with pytest.raises(FacesmithError, match="is not a folder"):
        read_source(tmp_path / "missing")


def test_shared_sources_are_recognised(shared_data):
    assert detect_format(shared_data / "celeba") == "celeba"
    assert detect_format(shared_data / "utkface") == "utkface"


def test_unreadable_tables_are_user_errors(tmp_path):
    save_photo(tmp_path / "a.png", 1)
    (tmp_path / "metadata.csv").write_bytes("file_name,text\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(FacesmithError, match="not UTF-8"):
        read_source(tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,age\na.png,old\n")
    with pytest.raises(FacesmithError, match="row for a.png has a value that is not a number"):
        read_source(tmp_path)
