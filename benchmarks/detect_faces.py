"""Face rate and speed of facesmith's MTCNN detector on the first COUNT images of each shared source.

    python benchmarks/detect_faces.py [SHARED_DATA_DIR] [--count 500]

Images are decoded before the clock starts; the time is detect_faces alone, on one core.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from PIL import Image

from facesmith.data.faces import detect_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("FACESMITH_SHARED", str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("shared", nargs="?", default=str(Path(default) / "data"))
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    shared = Path(args.shared)
    if not (shared / "celeba").is_dir():
        raise SystemExit(f"no shared data at {shared}: pass its path or set FACESMITH_SHARED")
    for name in ("celeba", "utkface"):
        images = []
        for path in sorted((shared / name / "images").iterdir())[: args.count]:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        detect_faces(images[0])  # load the weights outside the timing
        start = time.perf_counter()
        found = [detect_faces(image) for image in images]
        wall = time.perf_counter() - start
        one = sum(len(faces) >= 1 for faces in found)
        several = sum(len(faces) > 1 for faces in found)
        print(
            f"{name}: {len(images)} images of {images[0].size[0]}x{images[0].size[1]}, face found in {one} "
            f"({one / len(images):.1%}), more than one in {several}, {wall / len(images) * 1000:.1f} ms/image"
        )


if __name__ == "__main__":
    main()
