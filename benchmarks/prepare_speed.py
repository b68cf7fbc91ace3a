"""Images per second of `facesmith prepare`, for already-aligned input (--aligned) and for photos that need
detection and alignment, and the detector's face rate.

    python benchmarks/prepare_speed.py [SHARED_DATA_DIR] [--count 500] [--workers 2] [--size 128]

Copies nothing: it prepares the first COUNT images of each shared source into a temporary folder. Without
the shared data it says so and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from facesmith.data.config import PrepareConfig
from facesmith.data.prepare import run_prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("FACESMITH_SHARED", str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("shared", nargs="?", default=str(Path(default) / "data"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    shared = Path(args.shared)
    if not (shared / "celeba").is_dir():
        raise SystemExit(f"no shared data at {shared}: pass its path or set FACESMITH_SHARED")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("celeba", "utkface"):
            # A folder of links to the first COUNT images keeps each source's format and labels.
            src = Path(tmp) / name
            images = sorted((shared / name / "images").iterdir())[: args.count]
            (src / "images").mkdir(parents=True)
            for path in images:
                (src / "images" / path.name).symlink_to(path)
            for table in ("attributes.csv",):
                if name == "celeba":
                    shutil.copy(shared / name / table, src / table)
            for aligned in (True, False):
                out = Path(tmp) / f"{name}-{aligned}"
                config = PrepareConfig(
                    sources=[str(src)],
                    out_dir=str(out),
                    size=args.size,
                    aligned=aligned,
                    workers=args.workers,
                )
                start = time.perf_counter()
                run_prepare(config)
                wall = time.perf_counter() - start
                report = json.loads((out / "report.json").read_text())
                rejected = report["rejected"]
                mode = "aligned  " if aligned else "detection"
                line = f"{name:8s} {mode} {len(images)} images, {args.workers} workers: {len(images) / wall:6.1f} img/s"
                line += f", kept {report['kept']}, rejected {rejected}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
