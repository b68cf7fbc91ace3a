"""How well `facesmith edit` edits, and how much of the person it keeps, on the default model.

For each real CelebA face (the last N of the shared set) and each edit (+eyeglasses, +smiling,
age=senior) at each strength, the photo is edited with `edit.edit_face` and scored on the aligned face:
- done: the attribute classifier reads the asked-for attribute in the result (faces that already had it
  are left out of this share);
- kept: the share of the classifier's other outputs (38 binary attributes, age group, ethnicity) that
  read the same before and after;
- identity: the cosine distance between the face before and after in the evaluation feature space
  (`evaluate.features`, MobileNetV2-ImageNet pool-1280; there is no face-recognition network offline),
  beside the same distance between two different people (each face and the next one).
The balance is the strength with the largest done - identity / different-people distance.
`--grid PATH` also writes a before/after grid of faces made by the default model itself (the first
seeds from 0 whose face MTCNN finds),
so the README shows no real person. Run: `nice python benchmarks/edit_faces.py --count 50`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

EDITS = {"+eyeglasses": {"add": ["eyeglasses"]}, "+smiling": {"add": ["smiling"]},
         "age=senior": {"set": ["age=senior"]}}  # fmt: skip
TARGETS = {
    "+eyeglasses": ("Eyeglasses", 1),
    "+smiling": ("Smiling", 1),
    "age=senior": ("age_group", "senior"),
}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1 - (a * b).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--strengths", default="0.4,0.6,0.8")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--grid", default=None, help="write a before/after grid of generated faces here")
    parser.add_argument("--grid-strength", type=float, default=0.6)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import facesmith
    from facesmith.attributes.classifier import AttributeClassifier
    from facesmith.edit import EditConfig, edit_face
    from facesmith.evaluate.features import extract_features

    generator = facesmith.load()
    classifier = AttributeClassifier.load()
    if args.grid:
        write_grid(generator, classifier, Path(args.grid), args.grid_strength, args.steps)
    if args.count <= 0:  # --grid alone (`[-0:]` below would take every face)
        return
    files = sorted((Path(args.shared) / "celeba" / "images").glob("*.jpg"))[-args.count :]
    photos = [Image.open(f).convert("RGB") for f in files]
    started = time.time()
    figures = {}
    for strength in [float(s) for s in args.strengths.split(",")]:
        for label, change in EDITS.items():
            before, after = [], []
            for i, photo in enumerate(photos):
                config = EditConfig(
                    photo=files[i].name, strength=strength, steps=args.steps, seed=i, **change
                )
                result = edit_face(generator, photo, config, classifier, name=files[i].name)
                before.append(result.crop)
                after.append(result.edited)
            figures[f"{label} @ {strength:g}"] = score(label, before, after, classifier, extract_features)
            print(json.dumps({f"{label} @ {strength:g}": figures[f"{label} @ {strength:g}"]}), flush=True)
    ranked = {}
    for label in EDITS:
        rows = {k: v for k, v in figures.items() if k.startswith(label + " @")}
        best = max(rows, key=lambda k: rows[k]["done"] - rows[k]["identity"] / rows[k]["different_people"])
        ranked[label] = best.split(" @ ")[1]
    summary = {"faces": len(photos), "steps": args.steps, "seconds": round(time.time() - started),
               "figures": figures, "balanced_strength": ranked}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


def score(label, before, after, classifier, extract_features) -> dict:
    key, value = TARGETS[label]
    was, now = classifier.predict(before), classifier.predict(after)
    todo = [i for i, a in enumerate(was) if a[key] != value]
    done = np.mean([now[i][key] == value for i in todo]) if todo else float("nan")
    others = [k for k in was[0] if k != key and not (label == "age=senior" and k == "Young")]
    kept = np.mean([[w[k] == n[k] for k in others] for w, n in zip(was, now, strict=True)])
    f_before, f_after = extract_features(before), extract_features(after)
    identity = cosine(f_before, f_after)
    different = cosine(f_before, np.roll(f_before, 1, axis=0))
    return {"done": round(float(done), 3), "asked": len(todo), "kept": round(float(kept), 3),
            "identity": round(float(np.median(identity)), 3),
            "different_people": round(float(np.median(different)), 3)}  # fmt: skip


def write_grid(generator, classifier, path: Path, strength: float, steps: int) -> None:
    """Rows: a face the default model made (seed s), then each edit of it at `strength`."""
    from facesmith.edit import EditConfig, edit_face

    side = 128
    prompts = ["a photo of a young woman with long brown hair", "a photo of a man with short black hair",
               "a photo of a woman with blond hair", "a photo of a middle-aged man"]  # fmt: skip
    grid = Image.new("RGB", (side * (1 + len(EDITS)), side * len(prompts)), "white")
    from facesmith.data.faces import detect_faces

    seed = 0
    for row, prompt in enumerate(prompts):
        # the first seed whose face MTCNN finds (the early default model distorts some faces past it)
        while not detect_faces(face := generator.generate(prompt, seed=seed, steps=steps)[0]):
            seed += 1
        grid.paste(face.resize((side, side)), (0, row * side))
        for col, change in enumerate(EDITS.values(), start=1):
            config = EditConfig(photo=f"seed {seed}", strength=strength, steps=steps, seed=seed, **change)
            edited = edit_face(generator, face, config, classifier, name=f"seed {seed}").image
            grid.paste(edited.resize((side, side)), (col * side, row * side))
        print(f"grid row {row}: {prompt!r}, seed {seed}", flush=True)
        seed += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


if __name__ == "__main__":
    main()
