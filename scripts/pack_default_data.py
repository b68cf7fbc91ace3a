"""Pack the shared CelebA + UTKFace faces small enough to travel to a GPU machine.

The GPU machine receives at most 64 MiB per call, so the ~30k faces go as
128-px WebP (quality 78, about 1.6-2 KB each) in one ``.npz`` per source,
with each face's attribute dict beside it. Both sources are already aligned
sets, so this follows ``facesmith prepare --aligned``: a fixed crop per
source (``data.align.aligned_box``, the one definition) and a Lanczos resize, no detection. The crops put the eyes at about
0.45 of the height with an eye distance near a quarter of the width.

The packed files hold real people's photos under non-commercial research
terms: they go to ``.pack/`` (git-ignored) and are never committed.

    python scripts/pack_default_data.py --shared ../shared --out .pack
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.attributes.schema import celeba_attributes, utkface_attributes
from facesmith.data.align import aligned_box

SIZE = 128


def _encode(args: tuple[str, int]) -> bytes:
    path, quality = args
    image = Image.open(path).convert("RGB")
    # The crop of `facesmith prepare --aligned`, defined once in data/align.py.
    image = image.resize((SIZE, SIZE), Image.LANCZOS, box=aligned_box(*image.size))
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def pack(name: str, paths: list[str], attrs: list[dict], out: Path, quality: int) -> None:
    with ProcessPoolExecutor() as pool:
        blobs = list(pool.map(_encode, [(p, quality) for p in paths], chunksize=64))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez_compressed(
        out / f"{name}.npz",
        data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=offsets,
        attrs=np.frombuffer(json.dumps(attrs).encode(), dtype=np.uint8),
        files=np.array([Path(p).name for p in paths]),
    )
    print(f"{name}: {len(blobs)} faces, {offsets[-1] / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path(".pack"))
    parser.add_argument("--quality", type=int, default=78)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    celeba = args.shared / "data" / "celeba"
    rows = list(csv.DictReader((celeba / "attributes.csv").read_text().splitlines()))
    pack(
        "celeba",
        [str(celeba / "images" / r["file"]) for r in rows],
        [celeba_attributes(r) for r in rows],
        args.out,
        args.quality,
    )
    utk = args.shared / "data" / "utkface"
    rows = list(csv.DictReader((utk / "labels.csv").read_text().splitlines()))
    pack(
        "utkface",
        [str(utk / "images" / r["file"]) for r in rows],
        [utkface_attributes(int(r["age"]), int(r["gender"]), int(r["race"])) for r in rows],
        args.out,
        args.quality,
    )


if __name__ == "__main__":
    main()
