"""What the identity space adds to the memorization audit, on the shared CelebA faces.

    OMP_NUM_THREADS=1 python benchmarks/memorization_identity.py [SHARED_DATA_DIR] [--reference 500]
        [--copies 100] [--new 500] [--outside 600] [--calibration 64] [--feature-size 224]

A seeded sample of `--reference` CelebA faces is the training reference, as in `facesmith evaluate`.
Thresholds are calibrated the way evaluate calibrates them (`memorization.calibrate`: `--calibration`
light-edit copies, `--outside` further CelebA faces at their nearest reference face as the distinct
faces, split conformal at a 1 % budget), with and without the identity space; each space alone gets its own 1 % threshold (`separating_threshold`).
They are then tested on fresh copies of other reference faces, `--copies` per edit (crop only, zoom
out, downscale after a crop, zoom out and downscale; each with the rotation, colour, blur and JPEG of
`light_edit`), and on `--new` CelebA faces outside the reference (distinct new faces: their flagged
share is the false-flag rate a user sees). Also printed: how many distinct faces have a nearest other
face within dlib's same-person 0.6 (other photos of the same celebrity), and the descriptor's speed.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facesmith.data.faces import detect_faces, main_face
from facesmith.evaluate import identity, memorization
from facesmith.evaluate.features import extract_features

EDITS = {
    "crop only": ("crop", False),
    "zoom out": ("zoom", False),
    "downscale (after a crop)": ("crop", True),
    "zoom out + downscale": ("zoom", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("FACESMITH_SHARED", str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("shared", nargs="?", default=str(Path(default) / "data"))
    parser.add_argument("--reference", type=int, default=500)
    parser.add_argument("--copies", type=int, default=100, help="test copies per edit")
    parser.add_argument("--new", type=int, default=500, help="CelebA faces outside the reference")
    parser.add_argument("--outside", type=int, default=600, help="distinct faces for the calibration")
    parser.add_argument("--calibration", type=int, default=64, help="calibration copies (evaluate's 64)")
    parser.add_argument("--feature-size", type=int, default=224)
    args = parser.parse_args()
    folder = Path(args.shared) / "celeba" / "images"
    if not folder.is_dir():
        raise SystemExit(f"no shared CelebA at {folder}: pass the shared data path or set FACESMITH_SHARED")
    if not identity.available():
        raise SystemExit(identity.NOT_INSTALLED)
    files = sorted(folder.iterdir())
    pick = random.Random(0).sample(range(len(files)), args.reference + args.new + args.outside)
    faces = [Image.open(files[i]).convert("RGB") for i in pick]
    train, new = faces[: args.reference], faces[args.reference : args.reference + args.new]
    beyond = faces[args.reference + args.new :]

    def features(images):
        return extract_features(images, size=args.feature_size)

    identity.identity_vectors(train[:1])  # load the models outside the timing
    start = time.perf_counter()
    boxes = [main_face(detect_faces(im), im.size) for im in train]
    detect = time.perf_counter() - start
    start = time.perf_counter()
    train_id, found = identity.identity_vectors(train, boxes)
    describe = time.perf_counter() - start
    print(f"descriptor: {1000 * describe / len(train):.0f} ms a face (+ MTCNN {1000 * detect / len(train):.0f} ms), "
          f"MTCNN found the face in {found.mean():.3f} of {len(train)}; 1 thread")  # fmt: skip
    train_f, train_p = features(train), memorization.pixel_vectors(train)
    outside = {"feature": features(beyond), "pixel": memorization.pixel_vectors(beyond),
               "identity": identity.identity_vectors(beyond)[0]}  # fmt: skip
    two = memorization.calibrate(train, train_f, features, count=args.calibration, train_pixels=train_p,
                                 outside=outside)  # fmt: skip
    three = memorization.calibrate(train, train_f, features, count=args.calibration, train_pixels=train_p,
                                   identity=lambda ims: identity.identity_vectors(ims)[0],
                                   train_identity=train_id, outside=outside)  # fmt: skip

    # Each space alone at 1 %: thresholds from the same distinct faces calibrate uses.
    everyone = np.arange(len(train))
    far = {"feature": memorization.nearest_other(memorization.cosine_distances, train_f, everyone),
           "pixel": memorization.nearest_other(memorization.rms_distances, train_p, everyone),
           "identity": memorization.nearest_other(identity.euclidean_distances, train_id, everyone)}  # fmt: skip
    same = (far["identity"] < identity.SAME_PERSON).mean()
    print(f"distinct faces (nearest other of {len(train)}) within dlib's {identity.SAME_PERSON}: {same:.3f}; "
          f"identity distance of distinct faces: 1st percentile {np.percentile(far['identity'], 1):.3f}, "
          f"median {np.median(far['identity']):.3f}")  # fmt: skip
    rng = random.Random(1)
    copies = {s: {} for s in ("feature", "pixel", "identity")}
    for edit, (geometry, down) in EDITS.items():
        chosen = rng.sample(range(len(train)), min(args.copies, len(train)))
        edited = [memorization.light_edit(train[i], rng, geometry, down) for i in chosen]
        copies["feature"][edit] = np.diag(memorization.cosine_distances(features(edited), train_f[chosen]))
        copies["pixel"][edit] = np.diag(
            memorization.rms_distances(memorization.pixel_vectors(edited), train_p[chosen])
        )
        ids = identity.identity_vectors(edited)[0]
        copies["identity"][edit] = np.diag(identity.euclidean_distances(ids, train_id[chosen]))
    new_nearest = {
        "feature": memorization.cosine_distances(features(new), train_f).min(1),
        "pixel": memorization.rms_distances(memorization.pixel_vectors(new), train_p).min(1),
        "identity": identity.euclidean_distances(identity.identity_vectors(new)[0], train_id).min(1),
    }
    rules = {f"{s} alone": {s: memorization.separating_threshold(np.array([np.inf]), far[s])} for s in far}
    rules["feature + pixel (evaluate without identity)"] = {"feature": two.feature, "pixel": two.pixel}
    rules["feature + pixel + identity (joint)"] = {
        "feature": three.feature,
        "pixel": three.pixel,
        "identity": three.identity,
    }
    print(f"\n{len(train)} reference faces, {args.copies} test copies per edit, {len(new)} new faces; "
          f"calibrated on {args.calibration} copies")  # fmt: skip
    print("| rule | thresholds | " + " | ".join(EDITS) + " | new faces flagged |")
    print("| --- " * (len(EDITS) + 3) + "|")
    for name, limits in rules.items():
        cells = []
        for edit in EDITS:
            caught = np.any([copies[s][edit] <= t for s, t in limits.items()], axis=0)
            cells.append(f"{caught.mean():.2f}")
        flagged = np.any([new_nearest[s] <= t for s, t in limits.items()], axis=0).mean()
        shown = ", ".join(f"{s} {t:.4f}" for s, t in limits.items())
        print(f"| {name} | {shown} | " + " | ".join(cells) + f" | {flagged:.3f} |")
    for label, t in (("without identity", two), ("with identity", three)):
        per = "; ".join(f"{s} catches {v['copies_caught']:.2f}, flags {v['distinct_flagged']:.3f}"
                        for s, v in t.spaces.items())  # fmt: skip
        print(f"calibration {label}: caught {t.copies_caught:.2f}, flagged {t.distinct_flagged:.3f} ({per})")


if __name__ == "__main__":
    main()
