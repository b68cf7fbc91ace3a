"""Image quality for datasets: safe decoding, sharpness, and perceptual hashes for duplicates.

Owns: ``open_photo`` / ``decode_photo`` (decode any file a user points us at into an upright 8-bit RGB
image, large JPEGs at a reduced size, or say why not),
``sharpness`` (variance of the Laplacian) and ``phash`` / ``hamming``. What thresholds a dataset applies
is ``PrepareConfig``'s business; the decisions are made in ``prepare``.

- Sharpness: Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a comparative study",
  ICPR 2000 (variance of the Laplacian), measured on the face (the central half of the crop) at 64 px, so one
  threshold serves every target size.
- Perceptual hash: the DCT hash of Zauner, "Implementation and Benchmarking of Perceptual Image Hash
  Functions" (2010), as pHash/imagehash compute it: 32x32 grayscale, 2-D DCT-II, the 8x8 lowest
  frequencies, bit = coefficient above their median. 64 bits; near duplicates differ in a few bits.
  Written here in numpy (a DCT matrix product) rather than taking imagehash, which pulls scipy and
  PyWavelets for one 10-line function.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger images are refused as decompression bombs. Pillow's own guard (89.5 Mpx warns, 179 Mpx raises)
# is left to raise only: below 179 Mpx this limit is the one that applies.
MAX_PIXELS = 100_000_000
DCT_SCALES = (8, 4, 2, 1)  # libjpeg decodes at 1/8, 1/4, 1/2 or full size


class BadImage(Exception):
    """A file that can't become a training image; the message is the report's reason."""


def open_photo(source: bytes | str | Path, max_pixels: int = MAX_PIXELS, reduce: int = 1) -> Image.Image:
    """The file (its bytes, or its path) as an upright 8-bit RGB image: EXIF rotation applied, alpha
    composited on white, palette/CMYK/grayscale/16-bit converted. Raises BadImage with a short reason.
    ``reduce``: see ``decode_photo``."""
    return decode_photo(source, max_pixels, reduce)[0]


def decode_photo(
    source: bytes | str | Path, max_pixels: int = MAX_PIXELS, reduce: int = 1
) -> tuple[Image.Image, tuple[int, int]]:
    """``open_photo``'s image, and the upright photo's full width and height.

    ``reduce`` > 1 asks for about 1/reduce of the size where decoding gives it for free: a JPEG is
    decoded by libjpeg's DCT scaling (Pillow's ``draft``) at the largest of 1/8, 1/4, 1/2 that is not
    smaller than 1/reduce, so a huge photo never exists at full size; other formats come at full size."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides, below
        try:
            image = Image.open(io.BytesIO(data))
            full = image.size
            if image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels ({image.width}x{image.height}, decompression bomb guard)")
            if reduce > 1 and image.format == "JPEG":
                image.draft(None, (max(image.width // reduce, 1), max(image.height // reduce, 1)))
            image.load()
        except Image.DecompressionBombError:
            raise BadImage("too many pixels (decompression bomb guard)") from None
        except UnidentifiedImageError:
            raise BadImage("not an image") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise BadImage(f"corrupt or truncated ({error})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the picture; keep it unrotated
        quarter_turn = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        image = ImageOps.exif_transpose(image)
        if quarter_turn:
            full = (full[1], full[0])
    return to_rgb8(image), full


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as stored (before EXIF rotation), from the header only; None if unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Exception:  # not an image, or a bomb: decode_photo says which
            return None


def dct_reduction(available: float, needed: float) -> int:
    """The largest JPEG DCT scale divisor (8, 4, 2, 1) that keeps ``available`` pixels >= ``needed``."""
    return next(k for k in DCT_SCALES if available / k >= needed or k == 1)


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; 16/32-bit grayscale is rescaled, transparency goes to white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray(np.uint8(np.clip(pixels / top * 255.0 + 0.5, 0, 255)))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode != "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def sharpness(image: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian over the central half of the image (where a crop has the
    face; an aligned crop's border may be blurred padding), as 64x64 grayscale. Higher = sharper.

    64 px: "heavy blur" means no detail even at thumbnail size, and the value then depends little on the
    crop's size (x1.4 between 128 and 512 px crops of the same photo)."""
    w, h = image.size
    face = image.crop((w // 4, h // 4, w - w // 4, h - h // 4))
    gray = np.asarray(face.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4 * gray[1:-1, 1:-1]
    return float(lap.var())


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (see the module docstring)."""
    gray = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ gray @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, hashes: np.ndarray) -> np.ndarray:
    """Bit differences between hash ``a`` and each of ``hashes`` (uint64 array)."""
    diff = np.bitwise_xor(np.asarray(hashes, dtype=np.uint64), np.uint64(a))
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(diff)
    return np.unpackbits(diff.view(np.uint8)).reshape(-1, 64).sum(axis=1)
