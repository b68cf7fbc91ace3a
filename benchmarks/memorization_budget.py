"""Does the memorization audit hold new faces to its 1 % false-flag budget? Old rule against new, on CelebA.

    OMP_NUM_THREADS=2 python benchmarks/memorization_budget.py [SHARED_DATA_DIR] [--trials 30]
        [--cache /tmp/memorization-budget.npz]

A seeded pool of 1600 shared CelebA faces, 500 light-edit copies of pool faces (`light_edit`'s random
edits: the calibration copies) and 100 test copies per forced edit (crop, zoom out, each with and without
a downscale) get their feature (MobileNetV2 at 224 px, evaluate's), pixel and identity vectors once
(`--cache` keeps them: ~9 minutes, most of it dlib). Each trial then splits the pool at random into a
reference (200 or 500 faces), 500 new faces and the faces left over ("outside": 900 or 600), takes 64
calibration copies of reference faces, and calibrates by each rule:

- `joint on reference` (the rule before): `joint_thresholds` on the reference faces' nearest *other*
  reference face, the budget used in full;
- `split on reference`: `split_thresholds` on those distances (evaluate's fallback when fewer than 100
  training faces lie outside the reference, as with `audit = "all"` on a small set);
- `split on outside` (evaluate's rule): `split_thresholds` on the outside faces' nearest reference face.

Printed per rule: the mean share of new faces flagged over the trials, its 90th percentile, the share of
trials above 1 %, and the share of test copies caught per edit (identity flags only where MTCNN found a
face, as in evaluate). No timing: the shares do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.data.faces import detect_faces, main_face
from facesmith.evaluate import identity, memorization
from facesmith.evaluate.features import extract_features

POOL, CALIBRATION, TEST = 1600, 500, 100
EDITS = {"crop": ("crop", False), "zoom out": ("zoom", False), "crop + downscale": ("crop", True),
         "zoom out + downscale": ("zoom", True)}  # fmt: skip
DISTANCES = {"feature": memorization.cosine_distances, "pixel": memorization.rms_distances,
             "identity": identity.euclidean_distances}  # fmt: skip


def vectors(folder: Path, cache: Path | None) -> dict:
    if cache is not None and cache.is_file():
        with np.load(cache) as npz:
            return {k: npz[k] for k in npz.files}
    files = sorted(folder.iterdir())
    faces = [Image.open(files[i]).convert("RGB") for i in random.Random(0).sample(range(len(files)), POOL)]
    rng = random.Random(5)
    sources = {"calibration": rng.sample(range(POOL), CALIBRATION)}
    images = faces + [memorization.light_edit(faces[i], rng) for i in sources["calibration"]]
    for edit, (geometry, down) in EDITS.items():
        sources[edit] = rng.sample(range(POOL), TEST)
        images += [memorization.light_edit(faces[i], rng, geometry, down) for i in sources[edit]]
    boxes = [main_face(detect_faces(im), im.size) for im in images]
    ids, found = identity.identity_vectors(images, boxes)
    out = {"feature": extract_features(images, size=224), "pixel": memorization.pixel_vectors(images),
           "identity": ids, "found": found, **{f"source {k}": np.array(v) for k, v in sources.items()}}  # fmt: skip
    if cache is not None:
        np.savez(cache, **out)
    return out


def trial(data: dict, seed: int, size: int, spaces: list[str], rules) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(POOL)
    ref, new, outside = order[:size], order[size : size + 500], order[size + 500 :]
    found = data["found"].astype(bool)

    def nearest(space: str, rows: np.ndarray) -> np.ndarray:
        return memorization.nearest(DISTANCES[space], data[space][rows], data[space][ref])

    in_ref = np.isin(np.arange(POOL), ref)
    calibration = [POOL + i for i, s in enumerate(data["source calibration"]) if in_ref[s]][:64]
    copies = [nearest(s, np.array(calibration)) for s in spaces]
    reference = [memorization.nearest_other(DISTANCES[s], data[s][ref], np.arange(size)) for s in spaces]
    beyond = [nearest(s, outside) for s in spaces]
    new_d = [nearest(s, new) for s in spaces]
    out = {}
    for name, rule in rules.items():
        thresholds = rule(copies, reference, beyond, seed)

        def flags(distances, rows, thresholds=thresholds):
            hits = [d <= t for d, t in zip(distances, thresholds, strict=True)]
            if "identity" in spaces:
                hits[spaces.index("identity")] &= found[rows]
            return np.any(hits, axis=0)

        row = {"new": float(flags(new_d, new).mean())}
        offset = POOL + CALIBRATION
        for k, edit in enumerate(EDITS):
            rows = np.array(
                [offset + k * TEST + i for i, s in enumerate(data[f"source {edit}"]) if in_ref[s]]
            )
            row[edit] = float(flags([nearest(s, rows) for s in spaces], rows).mean())
        out[name] = row
    return out


RULES = {
    "joint on reference (before)": lambda c, r, o, seed: memorization.joint_thresholds(c, r),
    "split on reference": lambda c, r, o, seed: memorization.split_thresholds(c, r, seed=seed)[0],
    "split on outside (evaluate)": lambda c, r, o, seed: memorization.split_thresholds(c, o, seed=seed)[0],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("FACESMITH_SHARED", str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("shared", nargs="?", default=str(Path(default) / "data"))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(args.shared) / "celeba" / "images"
    if not folder.is_dir():
        raise SystemExit(f"no shared CelebA at {folder}: pass the shared data path or set FACESMITH_SHARED")
    if not identity.available():
        raise SystemExit(identity.NOT_INSTALLED)
    data = vectors(folder, args.cache)
    print("| reference | spaces | rule | new faces flagged (mean) | 90th pct. | trials > 1 % | "
          + " | ".join(EDITS) + " |")  # fmt: skip
    print("| --- " * (6 + len(EDITS)) + "|")
    for size, spaces in ((200, ["feature", "pixel"]), (200, ["feature", "pixel", "identity"]),
                         (500, ["feature", "pixel"]), (500, ["feature", "pixel", "identity"])):  # fmt: skip
        runs = [trial(data, seed, size, spaces, RULES) for seed in range(args.trials)]
        for name in RULES:
            new = np.array([r[name]["new"] for r in runs])
            caught = " | ".join(f"{np.mean([r[name][e] for r in runs]):.2f}" for e in EDITS)
            print(f"| {size} | {' + '.join(spaces)} | {name} | {new.mean():.4f} | {np.quantile(new, 0.9):.4f} "
                  f"| {(new > 0.01).mean():.2f} | {caught} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
