"""Issue 16's blond LoRA experiment: can a CPU LoRA of the default model make a neutral prompt blond?

Stages, each written under `--work` (in /tmp, never in the repository) and skipped when its output is there:
1. data: a seeded choice of `--faces` (420) CelebA faces with Blond_Hair = 1 from the shared set, prepared
   by `facesmith prepare --aligned --size 128` (the default model's crop, `data.align.aligned_box`) with
   its 5 % val split. With `--caption neutral` (default) every caption is the neutral prompt itself, so
   the LoRA learns "blond" under the words it is asked with; `--caption attributes` keeps the
   attribute captions (which say "blond hair"), as `prepare` writes them.
2. before: the neutral prompt at the seeds 0..`--seeds`-1 from the default model.
3. train: a LoRA of the default model (`run_train`) with the validation loss every `--validate-every`
   steps (and a LoRA export at each), prior preservation from `--class-images` images the base model
   makes from the neutral prompt (`prior_loss_weight` `--prior-weight`; 0 turns it off). Masked loss
   "face" is not used: its ellipse runs brow to chin (`facesmith.masks`) and leaves the hair out.
4. after: the same seeds with the best-validation-step LoRA and with the last step's.
5. score: blond rate (the shipped attribute classifier's Blond_Hair) and face rate (exactly one MTCNN
   face with five points, as `facesmith evaluate` counts it), each with a Wilson 95 % interval, and the
   paired difference after - before with a 95 % paired bootstrap over seeds (the same seeds resampled
   on both sides); the near-copies of training faces among them (the memorization audit of
   `facesmith evaluate`); then a before | best | last grid of the generated faces (`--grid`).

Run as measured (about 25 minutes of wall time on one thread of the shared 2-core machine; benchmarks/NOTES.md):
`OMP_NUM_THREADS=1 nice -n 5 python benchmarks/blond_lora.py --threads 1 --steps 600 --validate-every 100
--class-images 16 --prior-weight 0.25 --lr 2e-3 --rank 32 --batch 4 --also-steps 200,300 --grid docs/blond-lora-grid.png`
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

NEUTRAL = "a photo of a person"  # captions.py's subject when gender is unknown, opening "a photo of"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"


def choose_faces(shared: Path, count: int, seed: int) -> list[dict]:
    with open(shared / "attributes.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Blond_Hair"] == "1"]
    return sorted(random.Random(seed).sample(rows, count), key=lambda r: r["file"])


def make_dataset(args, work: Path) -> Path:
    from facesmith.data.config import PrepareConfig
    from facesmith.data.manifest import read_manifest, write_manifest
    from facesmith.data.prepare import run_prepare

    dataset = work / "dataset"
    if (dataset / "metadata.jsonl").exists():
        return dataset
    source = work / "source"
    (source / "images").mkdir(parents=True, exist_ok=True)
    rows = choose_faces(Path(args.shared), args.faces, args.seed)
    for row in rows:
        link = source / "images" / row["file"]
        if not link.exists():
            link.symlink_to(Path(args.shared) / "images" / row["file"])
    with open(source / "attributes.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run_prepare(PrepareConfig(sources=[str(source)], out_dir=str(dataset), size=128, aligned=True, workers=1))
    if args.caption == "neutral":
        manifest = read_manifest(dataset)
        for row in manifest:
            row.text = NEUTRAL
        write_manifest(dataset, manifest)
    return dataset


def generate(lora: Path | None, seeds: int, steps: int, out: Path) -> list[Image.Image]:
    import facesmith

    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"seed{s:03d}.png" for s in range(seeds)]
    if not all(f.exists() for f in files):
        generator = facesmith.load(loras=[str(lora)] if lora else [])
        for seed, file in enumerate(files):
            if not file.exists():
                generator.generate(NEUTRAL, seed=seed, steps=steps)[0].save(file)
    return [Image.open(f).convert("RGB") for f in files]


def train(args, dataset: Path, work: Path) -> Path:
    from facesmith.train.config import TrainConfig
    from facesmith.train.trainer import run_train

    out = work / "run"
    if (out / "validation.json").exists() and (out / "run.safetensors").exists():
        return out
    prior = args.prior_weight > 0 and args.class_images > 0
    config = TrainConfig(
        dataset=str(dataset), output_dir=str(out), mode="lora", lora_rank=args.rank,
        lora_alpha=float(args.rank), learning_rate=args.lr, max_steps=args.steps,
        batch_size=args.batch, validate_every=args.validate_every, save_every=args.validate_every,
        keep_checkpoints=1, class_prompt=NEUTRAL if prior else None,
        num_class_images=args.class_images if prior else 0, prior_loss_weight=args.prior_weight,
        flip=True, cpu=True, seed=args.seed, tensorboard=False, sample_at_first=False, log_every=10,
    )  # fmt: skip
    started = time.time()
    stages = []

    def progress(stage: str, done: int, total: int | None, **fields: float) -> None:
        # the plain `train: step N` lines come from the trainer itself; this adds when each phase began
        if not stages or stages[-1] != stage:
            stages.append(stage)
            print(f"[{time.time() - started:7.1f} s] {stage}", flush=True)

    run_train(config, progress)
    (out / "wall.json").write_text(json.dumps({"train_seconds": round(time.time() - started)}))
    return out


def rates(images, classifier) -> tuple[np.ndarray, np.ndarray]:
    from facesmith.data.faces import detect_faces

    faces = []
    for image in images:
        found = detect_faces(image)
        faces.append(len(found) == 1 and len(found[0].landmarks) == 5)
    blond = [p["Blond_Hair"] == 1 for p in classifier.predict(images)]
    return np.array(blond, dtype=float), np.array(faces, dtype=float)


def near_copies(dataset: Path, sets: dict[str, list[Image.Image]]) -> dict[str, list[int]]:
    """The seeds of each set whose images are near-copies of a training face (`facesmith evaluate`'s
    memorization audit, its thresholds calibrated on these faces); the grid greys them out, so that it
    shows no real person."""
    from facesmith.data.manifest import read_manifest
    from facesmith.evaluate.features import extract_features
    from facesmith.evaluate.memorization import audit, calibrate, pixel_vectors

    train = [Image.open(dataset / row.file_name).convert("RGB") for row in read_manifest(dataset)]
    train_features, train_pixels = extract_features(train), pixel_vectors(train)
    thresholds = calibrate(train, train_features, extract_features, train_pixels=train_pixels)
    return {
        name: np.flatnonzero(
            audit(images, extract_features(images), train_pixels, train_features, thresholds).copies
        ).tolist()
        for name, images in sets.items()
    }


def paired(before: np.ndarray, after: np.ndarray, rounds: int = 10_000, seed: int = 0) -> dict:
    """after - before, with the 95 % percentile interval of the mean difference over seeds resampled
    together (a paired bootstrap, Efron & Tibshirani 1993 ch. 13), and Wilson intervals of each rate."""
    from facesmith.evaluate.uncertainty import wilson

    rng = np.random.default_rng(seed)
    diff = after - before
    picks = rng.integers(0, len(diff), (rounds, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    n = len(diff)
    return {
        "before": round(float(before.mean()), 3),
        "before_interval": [round(v, 3) for v in wilson(int(before.sum()), n)],
        "after": round(float(after.mean()), 3),
        "after_interval": [round(v, 3) for v in wilson(int(after.sum()), n)],
        "difference": round(float(diff.mean()), 3),
        "difference_interval": [round(float(low), 3), round(float(high), 3)],
        "gained": int(((before == 0) & (after == 1)).sum()),
        "lost": int(((before == 1) & (after == 0)).sum()),
    }


def write_grid(columns: dict[str, list[Image.Image]], path: Path, per_row: int = 8, side: int = 48) -> None:
    """Blocks side by side (before | best | --also-steps | last), each `per_row` faces wide, a gap between blocks."""
    count = len(next(iter(columns.values())))
    rows = -(-count // per_row)
    gap = side // 4
    grid = Image.new("RGB", (len(columns) * (per_row * side + gap) - gap, rows * side), "white")
    for block, images in enumerate(columns.values()):
        for i, image in enumerate(images):
            x = block * (per_row * side + gap) + (i % per_row) * side
            grid.paste(image.resize((side, side), Image.LANCZOS), (x, (i // per_row) * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/blond_lora")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--faces", type=int, default=420)
    parser.add_argument("--caption", choices=("neutral", "attributes"), default="neutral")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--gen-steps", type=int, default=25)
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--class-images", type=int, default=16)
    parser.add_argument("--prior-weight", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default=None, help="write the before | best | last grid here")
    parser.add_argument("--also-steps", default="", help="more exported steps to score, e.g. 200,300")
    parser.add_argument("--only", choices=("data", "before", "train"), default=None, help="stop after it")
    args = parser.parse_args()
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' scheduler-config notice

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.time()
    dataset = make_dataset(args, work)
    timings["data"] = round(time.time() - started)
    if args.only == "data":
        return
    started = time.time()
    before = generate(None, args.seeds, args.gen_steps, work / "before")
    timings["before"] = round(time.time() - started)
    if args.only == "before":
        return
    run = train(args, dataset, work)
    timings.update(json.loads((run / "wall.json").read_text()))
    if args.only == "train":
        return
    validation = json.loads((run / "validation.json").read_text())
    best_step = int(validation["best_step"])
    last = run / "run.safetensors"
    best = last if best_step >= args.steps else run / f"run-step{best_step:08d}.safetensors"
    started = time.time()
    after = {"best": generate(best, args.seeds, args.gen_steps, work / f"after-step{best_step}")}
    for step in [int(s) for s in args.also_steps.split(",") if s]:  # in step order, for the grid
        lora = run / f"run-step{step:08d}.safetensors"
        after[f"step {step}"] = generate(lora, args.seeds, args.gen_steps, work / f"after-step{step}")
    after["last"] = (
        after["best"] if best == last else generate(last, args.seeds, args.gen_steps, work / "after-last")
    )
    timings["after"] = round(time.time() - started)

    from facesmith.attributes.classifier import AttributeClassifier
    from facesmith.data.manifest import read_manifest

    classifier = AttributeClassifier.load()
    blond0, face0 = rates(before, classifier)
    summary = {
        "faces": args.faces, "val_rows": len(read_manifest(dataset, split="val")),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "shared", "grid", "only", "also_steps")},
        "best_step": best_step, "val_loss": validation.get("losses"), "seconds": timings,
    }  # fmt: skip
    copies = near_copies(dataset, {"before": before, **after})
    summary["before_near_copies"] = copies["before"]
    for name, images in after.items():
        blond1, face1 = rates(images, classifier)
        summary[name] = {"blond": paired(blond0, blond1), "face": paired(face0, face1)}
        summary[name]["near_copies"] = copies[name]
    print(json.dumps(summary, indent=1))
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.grid:
        sets = {"before": before, **after}
        for name, seeds in copies.items():
            sets[name] = [
                Image.new("RGB", im.size, "gray") if i in seeds else im for i, im in enumerate(sets[name])
            ]
        write_grid(sets, Path(args.grid))


if __name__ == "__main__":
    main()
