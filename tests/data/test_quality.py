"""Decoding any file a user has into upright 8-bit RGB, or a reason; sharpness and perceptual hashes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from facesmith.data.quality import BadImage, hamming, open_photo, phash, sharpness
from factory import photo, save_photo


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / "x.tiff"
    if mode == "I;16":
        pixels = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)
        Image.fromarray(pixels, mode="I;16").save(path)
    else:
        photo(1, mode=mode).save(path)
    image = open_photo(path)
    assert image.mode == "RGB" and image.size == (48, 48)
    if mode == "I;16":  # rescaled from 16 bits, not clipped to white
        assert 0 < np.asarray(image).mean() < 255 and np.asarray(image).max() > 200


def test_alpha_goes_to_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_photo(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    image = photo(1, size=(60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert open_photo(tmp_path / "phone.jpg").size == (30, 60)


def test_bad_files_give_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a picture")
    buffer = io.BytesIO()
    photo(1, size=(64, 64)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:400])
    Image.new("L", (2000, 2000)).save(tmp_path / "bomb.png")
    cases = {"empty.jpg": "empty file", "notes.jpg": "not an image", "cut.jpg": "corrupt or truncated"}
    for name, reason in cases.items():
        with pytest.raises(BadImage, match=reason):
            open_photo(tmp_path / name)
    with pytest.raises(BadImage, match="decompression bomb"):
        open_photo(tmp_path / "bomb.png", max_pixels=1_000_000)


def test_blur_lowers_sharpness():
    image = photo(3, size=(128, 128))
    assert sharpness(image.filter(ImageFilter.GaussianBlur(4))) < sharpness(image) / 10


def test_phash_matches_near_copies_and_separates_others(tmp_path):
    image = photo(5, size=(96, 96))
    save_photo(tmp_path / "copy.jpg", 5, size=(96, 96), quality=70)
    copy = Image.open(tmp_path / "copy.jpg")
    others = np.array([phash(photo(s, size=(96, 96))) for s in range(10, 20)], dtype=np.uint64)
    assert hamming(phash(image), np.array([phash(copy)], dtype=np.uint64))[0] <= 4
    assert hamming(phash(image.resize((64, 64))), np.array([phash(image)], dtype=np.uint64))[0] <= 4
    assert hamming(phash(image), others).min() > 10


def test_the_pixel_limit_is_ours_and_large_jpegs_decode_small(tmp_path):
    import warnings

    from facesmith.data.quality import MAX_PIXELS, decode_photo

    # 90.25 Mpx: over Pillow's 89.5-Mpx bomb warning, under the documented 100-Mpx limit.
    path = tmp_path / "huge.jpg"
    Image.new("L", (9500, 9500), 128).save(path, quality=50)
    assert 89_478_485 < 9500 * 9500 < MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, full = decode_photo(path, reduce=8)  # at 1/8 by the JPEG decoder: 1188 px, not 9500
    assert image.size == (1188, 1188) and image.mode == "RGB" and full == (9500, 9500)
    with pytest.raises(BadImage, match="too many pixels"):
        open_photo(path, max_pixels=90_000_000)
    # reduce asks, never forces: a PNG comes at full size; at most 1/8 for a JPEG, rotation is applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(1, size=(400, 200)).save(tmp_path / "turned.jpg", exif=exif)
    photo(1, size=(400, 200)).save(tmp_path / "flat.png")
    assert decode_photo(tmp_path / "turned.jpg", reduce=3) == (
        open_photo(tmp_path / "turned.jpg", reduce=2),
        (200, 400),
    )
    assert open_photo(tmp_path / "turned.jpg", reduce=3).size == (100, 200)
    assert open_photo(tmp_path / "flat.png", reduce=4).size == (400, 200)
    assert open_photo(tmp_path / "turned.jpg", reduce=100).size == (25, 50)
