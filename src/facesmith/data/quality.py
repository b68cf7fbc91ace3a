"""Image quality for datasets: safe decoding, sharpness, and perceptual hashes for duplicates.

Owns: ``open_photo`` (decode any file a user points us at into an upright 8-bit RGB image, or say why not),
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

# Larger images are refused as decompression bombs (Pillow's default limit is ~89 Mpx and only warns).
MAX_PIXELS = 100_000_000


class BadImage(Exception):
    """A file that can't become a training image; the message is the report's reason."""


def open_photo(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The file as an upright 8-bit RGB image: EXIF rotation applied, alpha composited on white,
    palette/CMYK/grayscale/16-bit converted. Raises BadImage with a short reason."""
    data = Path(path).read_bytes()
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels ({image.width}x{image.height}, decompression bomb guard)")
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage("too many pixels (decompression bomb guard)") from None
        except UnidentifiedImageError:
            raise BadImage("not an image") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise BadImage(f"corrupt or truncated ({error})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the picture; keep it unrotated
        image = ImageOps.exif_transpose(image)
    return to_rgb8(image)


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
