"""Train the shipped attribute classifier on the shared CelebA and UTKFace faces: heads, then end to end.

The recipe behind `src/facesmith/weights/attributes/` (issue 13), in the linear-probe-then-fine-tune order
of Kumar et al. 2022: first heads fitted on the frozen ImageNet MobileNetV2 (`classifier.fit_heads`, what
`facesmith attributes train` does; or `--init`, a folder it wrote), then backbone and heads trained
together (`facesmith.attributes.finetune`) on augmented faces for a wall-time budget a shared 2-core CPU
can afford, with the backbone's BatchNorm statistics frozen; then held-out TPR/TNR and balanced accuracy
per attribute for the fine-tuned classifier and, on the same faces, for the frozen-feature heads it
started from.

Faces: `facesmith prepare --aligned`'s crop (`data.align.aligned_box`: CelebA's face square, UTKFace's
chips whole) with a Lanczos resize to `--size`. Held out: the 10 % of file names
`evaluate.faceset.hashed_split` picks, the faces the frozen-feature heads were scored on. The decoded
faces are cached in `--work` (scratch outside the repository, never committed: they are non-commercial
research data), with the checkpoint, so an interrupted run resumes with the same command.

    OMP_NUM_THREADS=2 python scripts/train_attribute_classifier.py --shared /work/shared \
        --work /tmp/attr-ft128b --init /tmp/attr-frozen-heads --minutes 95 --threads 2 --out /tmp/attr-ft128b/out
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesmith.attributes.backbone import feature_maps
from facesmith.attributes.classifier import AttributeClassifier, AttributeNetwork, fit_heads, score
from facesmith.attributes.finetune import fine_tune, network_probabilities, save_network
from facesmith.attributes.schema import celeba_attributes, utkface_attributes
from facesmith.config import write_toml
from facesmith.data.align import aligned_box
from facesmith.evaluate.faceset import hashed_split

TARGETS = {
    **dict.fromkeys(
        ["Male", "Eyeglasses", "Smiling", "Black_Hair", "Blond_Hair", "Gray_Hair", "Wearing_Hat",
         "No_Beard", "Bald"], 0.90),
    "age_group": 0.80,
    "ethnicity": 0.80,
}  # fmt: skip


def read_shared(shared: Path) -> tuple[list[Path], list[dict]]:
    celeba, utk = shared / "data" / "celeba", shared / "data" / "utkface"
    paths, attrs = [], []
    for row in csv.DictReader((celeba / "attributes.csv").read_text().splitlines()):
        paths.append(celeba / "images" / row["file"])
        attrs.append(celeba_attributes(row))
    for row in csv.DictReader((utk / "labels.csv").read_text().splitlines()):
        paths.append(utk / "images" / row["file"])
        attrs.append(utkface_attributes(int(row["age"]), int(row["gender"]), int(row["race"])))
    return paths, attrs


def decode(paths: list[Path], size: int) -> np.ndarray:
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            out[i] = np.asarray(image.resize((size, size), Image.LANCZOS, box=aligned_box(*image.size)))
    return out


def cached_faces(paths: list[Path], size: int, work: Path) -> np.ndarray:
    cache = work / f"faces-{size}.npy"
    if cache.is_file():
        faces = np.load(cache)
        if len(faces) == len(paths):
            return faces
    faces = decode(paths, size)
    np.save(cache, faces)
    return faces


def frozen_heads(faces: np.ndarray, attrs: list[dict], train: np.ndarray, args) -> AttributeNetwork:
    """The linear-probe stage: `--init`'s heads, or heads fitted here as `facesmith attributes train`
    fits them (its defaults: 10 epochs, batch 256, lr 1e-3, weight decay 1e-4)."""
    if args.init:
        return AttributeNetwork.from_heads(AttributeClassifier.load(args.init).heads, args.size)
    maps = feature_maps(lambda i: Image.fromarray(faces[i]), len(faces), size=args.size)
    heads = fit_heads(
        maps, attrs, np.flatnonzero(train), epochs=10, batch=256, lr=1e-3, weight_decay=1e-4, seed=args.seed
    )
    return AttributeNetwork.from_heads(heads, args.size)


def table(new: dict, old: dict | None) -> str:
    lines = ["| attribute | target | TPR | TNR | balanced acc. | frozen-feature heads | accuracy | positives / faces |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in new.items():
        before = old.get(name, {}).get("balanced_accuracy") if old else None
        tpr, tnr = entry.get("tpr"), entry.get("tnr")
        size = f"{entry.get('positives', '-')} / {entry['count']}"
        lines.append(
            f"| {name} | {TARGETS.get(name, '')} | {'' if tpr is None else tpr} | {'' if tnr is None else tnr} "
            f"| {entry['balanced_accuracy']} | {'' if before is None else before} | {entry['accuracy']} "
            f"| {size} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/attr-ft128"))
    parser.add_argument("--out", type=Path, default=Path("attribute-classifier"))
    parser.add_argument(
        "--init", type=Path, default=None, help="frozen-feature heads from `attributes train`"
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=95.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4, help="heads")
    parser.add_argument("--backbone-lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frozen", type=int, default=4, help="leading MobileNetV2 modules kept frozen")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    paths, attrs = read_shared(args.shared)
    faces = cached_faces(paths, args.size, args.work)
    held = np.array([hashed_split(p.name) == "val" for p in paths])
    print(f"{len(faces)} faces, {held.sum()} held out; decoded in {time.time() - started:.0f} s", flush=True)
    network = frozen_heads(faces, attrs, ~held, args)
    held_attrs = [a for a, h in zip(attrs, held, strict=True) if h]
    previous = score(network_probabilities(network, faces[held]), held_attrs)
    last = [0.0]

    def report(stage, done, total, **fields):
        if time.time() - last[0] > 60:
            last[0] = time.time()
            print(f"{stage} {done:.0f}/{total:.0f} s {fields}", flush=True)

    network, run = fine_tune(
        faces, attrs, np.flatnonzero(~held), minutes=args.minutes, epochs=args.epochs, batch=args.batch,
        lr=args.lr, backbone_lr=args.backbone_lr, seed=args.seed, frozen=args.frozen,
        checkpoint=args.work / "checkpoint.pt", network=network, progress=report,
    )  # fmt: skip
    scores = score(network_probabilities(network, faces[held]), held_attrs)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if v is not None}
    info = {
        "size": args.size,
        "fine_tuned": True,
        "backbone": (
            f"MobileNetV2 from ImageNet (facesmith/weights/mobilenet_v2); modules {args.frozen}-18 trained "
            "with the heads, BatchNorm statistics frozen"
        ),
        "trained_on": ["shared CelebA (10k, 40 attributes)", "shared UTKFace (20k, age/gender/race)"],
        "recipe": "scripts/train_attribute_classifier.py with attributes-train.toml",
        "faces": {"train": int((~held).sum()), "held_out": int(held.sum())},
        "training": run,
        "held_out": scores,
        "held_out_frozen_heads": previous,
    }
    save_network(network, info, args.out)
    write_toml(settings, args.out / "attributes-train.toml")
    (args.out / "held_out.md").write_text(table(scores, previous) + "\n")
    print(table(scores, previous), flush=True)
    print(f"total {time.time() - started:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
