"""Do the missed classifier rows (Smiling, Black_Hair, No_Beard) still gain with more CelebA epochs?

    OMP_NUM_THREADS=2 python benchmarks/attribute_celeba_continuation.py --checkpoint CKPT \
        [--minutes 12] [--utkface-share 0.15] [--work /tmp/attr-ft128]

Continues the shipped recipe's fine-tune from its end (`--checkpoint`: the `checkpoint.pt` that
`scripts/train_attribute_classifier.py` leaves in its `--work`) on the training faces of CelebA, the only
source of those labels, plus a `--utkface-share` of the UTKFace training faces so the age and ethnicity
heads still see examples, at a third of the recipe's rates (heads 1e-4, backbone 3e-5; same
augmentations, frozen modules 0-3 and BatchNorm statistics) for `--minutes`, then prints held-out
balanced accuracy (and accuracy) on the issue-13 targets. In the recipe a batch holds ~30 % CelebA faces;
here ~80 %. A row that does not move is limited by the 9k labelled CelebA faces, not by training time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_attribute_classifier import TARGETS, cached_faces, read_shared  # noqa: E402

from facesmith.attributes.classifier import AttributeClassifier, AttributeNetwork, score  # noqa: E402
from facesmith.attributes.finetune import fine_tune, network_probabilities  # noqa: E402
from facesmith.evaluate.faceset import hashed_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/attr-ft128"))
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--utkface-share", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"--checkpoint {args.checkpoint} does not exist: give the recipe's checkpoint.pt")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    paths, attrs = read_shared(args.shared)
    faces = cached_faces(paths, 128, args.work)
    held = np.array([hashed_split(p.name) == "val" for p in paths])
    celeba = np.array(["celeba" in p.parts for p in paths])
    keep = celeba | (np.random.default_rng(0).random(len(paths)) < args.utkface_share)
    rows = np.flatnonzero(~held & keep)
    shipped = AttributeClassifier.load()
    network = AttributeNetwork(shipped.size, **shipped.info["heads"])
    network.load_state_dict(torch.load(args.checkpoint, weights_only=True)["network"])
    held_attrs = [a for a, h in zip(attrs, held, strict=True) if h]
    before = score(network_probabilities(network, faces[held]), held_attrs)
    network, run = fine_tune(faces, attrs, rows, minutes=args.minutes, epochs=100, lr=1e-4, backbone_lr=3e-5,
                             frozen=4, network=network, seed=7)  # fmt: skip
    after = score(network_probabilities(network, faces[held]), held_attrs)
    print(f"{len(rows)} training faces ({int(celeba[rows].mean() * 100)} % CelebA); {run}")
    print("| target | before: balanced acc. | after | before: accuracy | after |")
    print("| --- | --- | --- | --- | --- |")
    for name in TARGETS:
        b, a = before[name], after[name]
        print(
            f"| {name} | {b['balanced_accuracy']} | {a['balanced_accuracy']} | {b['accuracy']} | {a['accuracy']} |"
        )


if __name__ == "__main__":
    main()
