"""Loss masks: read from mask_dir or built from MTCNN faces, cropped like their image, flipped with it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import factory
from facesmith.errors import FacesmithError
from facesmith.train.dataset import BatchItem, FaceImage, TrainingWarning
from facesmith.train.masks import LossMasks


def _image(tmp_path, name: str, size=(64, 32)) -> FaceImage:
    path = factory.save_photo(tmp_path / "images" / name, seed=1, size=size)
    return FaceImage(path, "a face", {}, size)


def test_a_mask_is_bucket_cropped_area_downsampled_and_flipped_with_its_image(tmp_path):
    image = _image(tmp_path, "a.png", size=(64, 32))
    (tmp_path / "masks").mkdir()
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (16, 0, 24, 32))  # a white column 16-24 px from the left
    mask.save(tmp_path / "masks" / "a.png")
    # A 32x32 bucket: the 64x32 image is centre-cropped to x 16-48, so the column is its left quarter.
    masks = LossMasks(
        [image], {0: (32, 32)}, mask_dir=str(tmp_path / "masks"), scale=8, device=torch.device("cpu")
    )
    plain, flipped = masks([BatchItem(0, False), BatchItem(0, True)])
    assert plain.shape == (1, 4, 4)
    assert plain[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert flipped[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_a_mask_of_another_size_is_resized_with_a_warning_and_a_bad_one_is_one_line(tmp_path):
    image = _image(tmp_path, "a.jpg", size=(32, 32))
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.new("L", (8, 8), 255).save(folder / "a.png")  # named by stem, .png
    with pytest.warns(
        TrainingWarning, match="1 masks in .* are not the size of their images \\(e.g. a.png\\)"
    ):
        masks = LossMasks([image], {0: (32, 32)}, mask_dir=str(folder), scale=8, device=torch.device("cpu"))
    assert masks([BatchItem(0, False)]).min() == 1.0
    (folder / "a.png").write_bytes(b"not a png")
    with pytest.raises(FacesmithError, match=f"cannot read mask {folder / 'a.png'}") as got:
        LossMasks([image], {0: (32, 32)}, mask_dir=str(folder), scale=8, device=torch.device("cpu"))
    assert "\n" not in str(got.value)
    (folder / "a.png").unlink()
    with pytest.raises(FacesmithError, match="has no mask for a.jpg: add a.png"):
        LossMasks([image], {0: (32, 32)}, mask_dir=str(folder), scale=8, device=torch.device("cpu"))


def test_disk_cache_keeps_masks_and_notices_an_edited_mask(tmp_path):
    image = _image(tmp_path, "a.png", size=(32, 32))
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.new("L", (32, 32), 255).save(folder / "a.png")
    args = dict(mask_dir=str(folder), scale=8, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    first = LossMasks([image], {0: (32, 32)}, **args)([BatchItem(0, False)])
    assert len(list((tmp_path / "cache").glob("masks-*.safetensors"))) == 1
    Image.new("L", (32, 32), 0).save(folder / "a.png")
    again = LossMasks([image], {0: (32, 32)}, **args)([BatchItem(0, False)])
    assert first.min() == 1.0 and again.max() == 0.0


def test_face_masks_cover_the_face_mtcnn_finds_in_a_celeba_photo(tmp_path):
    shared = factory.shared_data_dir()
    if shared is None or not (shared / "celeba" / "images").is_dir():
        pytest.skip("shared face data not found (set FACESMITH_SHARED)")
    path = sorted((shared / "celeba" / "images").glob("*.jpg"))[0]
    with Image.open(path) as opened:
        size = opened.size
    masks = LossMasks([FaceImage(path, "a face", {}, size)], {0: (64, 64)}, mask_dir=None, scale=8,
                      device=torch.device("cpu"))  # fmt: skip
    mask = masks([BatchItem(0, False)])[0, 0]
    assert 0.15 < mask.mean() < 0.9  # the face, not the whole photo
    assert mask[3:5, 3:5].min() > 0.5 and mask[0, 0] < 0.5  # the middle counts, a corner does not
