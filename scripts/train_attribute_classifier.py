"""Fine-tune the shipped attribute classifier end to end on the shared CelebA and UTKFace faces.

The recipe behind `src/facesmith/weights/attributes/` (issue 13): MobileNetV2 from its ImageNet weights
and the attribute heads trained together (`facesmith.attributes.finetune`) on augmented faces, for a
wall-time budget a shared 2-core CPU can afford; then held-out TPR/TNR and balanced accuracy per attribute,
for the new classifier and, on the same faces, for the classifier it replaces.

Faces: CelebA cropped to the 80-px face square of `pack_default_data.py` (`CELEBA_BOX`), UTKFace's aligned
chips whole, both resized to `--size`. Held out: the 10 % of file names `evaluate.faceset.hashed_split`
picks, the same faces the frozen-feature heads were scored on. The decoded faces are cached in `--work`
(git-ignored scratch, never committed: they are non-commercial research data), with the checkpoint, so
an interrupted run resumes.

    nice -n 10 python scripts/train_attribute_classifier.py --shared /work/shared --minutes 50 \
        --work /tmp/attr-ft --out src/facesmith/weights/attributes
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesmith.attributes.classifier import SHIPPED, AttributeClassifier, score
from facesmith.attributes.finetune import fine_tune, network_probabilities, save_network
from facesmith.attributes.schema import celeba_attributes, utkface_attributes
from facesmith.evaluate.faceset import hashed_split

CELEBA_BOX = (4, 18, 84, 98)  # as scripts/pack_default_data.py
TARGETS = {
    **dict.fromkeys(
        ["Male", "Eyeglasses", "Smiling", "Black_Hair", "Blond_Hair", "Gray_Hair", "Wearing_Hat",
         "No_Beard", "Bald"], 0.90),
    "age_group": 0.80,
    "ethnicity": 0.80,
}  # fmt: skip


def read_shared(shared: Path) -> tuple[list[Path], list[tuple | None], list[dict]]:
    celeba, utk = shared / "data" / "celeba", shared / "data" / "utkface"
    paths, boxes, attrs = [], [], []
    for row in csv.DictReader((celeba / "attributes.csv").read_text().splitlines()):
        paths.append(celeba / "images" / row["file"])
        boxes.append(CELEBA_BOX)
        attrs.append(celeba_attributes(row))
    for row in csv.DictReader((utk / "labels.csv").read_text().splitlines()):
        paths.append(utk / "images" / row["file"])
        boxes.append(None)
        attrs.append(utkface_attributes(int(row["age"]), int(row["gender"]), int(row["race"])))
    return paths, boxes, attrs


def decode(paths: list[Path], boxes: list, size: int) -> np.ndarray:
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, (path, box) in enumerate(zip(paths, boxes, strict=True)):
        with Image.open(path) as image:
            image = image.convert("RGB")
            out[i] = np.asarray((image.crop(box) if box else image).resize((size, size), Image.LANCZOS))
    return out


def cached_faces(paths, boxes, size: int, work: Path) -> np.ndarray:
    cache = work / f"faces-{size}.npy"
    if cache.is_file():
        faces = np.load(cache)
        if len(faces) == len(paths):
            return faces
    faces = decode(paths, boxes, size)
    np.save(cache, faces)
    return faces


def table(new: dict, old: dict | None) -> str:
    lines = ["| attribute | target | TPR | TNR | balanced acc. | previous balanced acc. | positives / faces |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in new.items():
        before = old.get(name, {}).get("balanced_accuracy") if old else None
        tpr, tnr = entry.get("tpr"), entry.get("tnr")
        size = f"{entry.get('positives', '-')} / {entry['count']}"
        lines.append(
            f"| {name} | {TARGETS.get(name, '')} | {'' if tpr is None else tpr} | {'' if tnr is None else tnr} "
            f"| {entry['balanced_accuracy']} | {'' if before is None else before} | {size} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/attr-ft"))
    parser.add_argument("--out", type=Path, default=Path("attribute-classifier"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=50.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frozen", type=int, default=14, help="leading MobileNetV2 modules kept frozen")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    paths, boxes, attrs = read_shared(args.shared)
    faces = cached_faces(paths, boxes, args.size, args.work)
    held = np.array([hashed_split(p.name) == "val" for p in paths])
    print(f"{len(faces)} faces, {held.sum()} held out; decoded in {time.time() - started:.0f} s", flush=True)
    last = [0.0]

    def report(stage, done, total, **fields):
        if time.time() - last[0] > 60:
            last[0] = time.time()
            print(f"{stage} {done:.0f}/{total:.0f} s {fields}", flush=True)

    network, run = fine_tune(
        faces, attrs, np.flatnonzero(~held), minutes=args.minutes, epochs=args.epochs, batch=args.batch,
        seed=args.seed, frozen=args.frozen, checkpoint=args.work / "checkpoint.pt", progress=report,
    )  # fmt: skip
    held_attrs = [a for a, h in zip(attrs, held, strict=True) if h]
    scores = score(network_probabilities(network, faces[held]), held_attrs)

    # The classifier this replaces, on the same held-out faces at its own 128 px.
    previous = None
    if (SHIPPED / "attributes.json").is_file() and not json.loads(
        (SHIPPED / "attributes.json").read_text()
    ).get("fine_tuned"):
        old = AttributeClassifier.load(SHIPPED)
        old_faces = decode([p for p, h in zip(paths, held, strict=True) if h],
                           [b for b, h in zip(boxes, held, strict=True) if h], old.size)  # fmt: skip
        images = [Image.fromarray(f) for f in old_faces]
        previous = score(old.probabilities(images), held_attrs)
        (args.work / "previous_scores.json").write_text(json.dumps(previous, indent=1))

    info = {
        "size": args.size,
        "fine_tuned": True,
        "backbone": f"MobileNetV2, ImageNet start (facesmith/weights/mobilenet_v2); modules {args.frozen}-18 fine-tuned with the heads",
        "trained_on": ["shared CelebA (10k, 40 attributes)", "shared UTKFace (20k, age/gender/race)"],
        "recipe": f"scripts/train_attribute_classifier.py {' '.join(f'--{k} {v}' for k, v in vars(args).items() if k not in ('shared', 'work', 'out'))}",
        "faces": {"train": int((~held).sum()), "held_out": int(held.sum())},
        "training": run,
        "held_out": scores,
    }
    save_network(network, info, args.out)
    (args.out / "held_out.md").write_text(table(scores, previous) + "\n")
    print(table(scores, previous), flush=True)
    print(f"total {time.time() - started:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
