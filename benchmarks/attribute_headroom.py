"""How much the shipped attribute classifier's missed targets can gain without retraining: flips, thresholds.

    OMP_NUM_THREADS=2 python benchmarks/attribute_headroom.py [--shared /work/shared] [--work /tmp/attr-ft128]

On the held-out faces of `scripts/train_attribute_classifier.py` (the same decode and cache: `--work`
holds `faces-128.npy`, made there or here), per issue-13 target: balanced accuracy at the 0.5 cut, with
test-time horizontal-flip averaging, the ROC AUC, and the best balanced accuracy any single threshold
reaches on these same held-out faces (an oracle: an upper bound on what a tuned threshold could give,
since it is fitted on the faces it is scored on). Age group and ethnicity: accuracy, plain and flipped.
If the oracle stays under a target, no threshold reaches it, and the gap is the network's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_attribute_classifier import TARGETS, cached_faces, read_shared  # noqa: E402

from facesmith.attributes.classifier import AttributeClassifier, AttributeNetwork, score, targets  # noqa: E402
from facesmith.attributes.finetune import normalize  # noqa: E402
from facesmith.attributes.schema import CELEBA_ATTRIBUTES  # noqa: E402
from facesmith.evaluate.faceset import hashed_split  # noqa: E402


@torch.no_grad()
def logits(network: AttributeNetwork, faces: np.ndarray, flip: bool) -> list[np.ndarray]:
    parts = []
    for start in range(0, len(faces), 128):
        x = normalize(torch.from_numpy(faces[start : start + 128]))
        parts.append([t.numpy() for t in network(x.flip(3) if flip else x)])
    return [np.concatenate([p[k] for p in parts]) for k in range(3)]


def probabilities(out: list[np.ndarray]) -> dict:
    soft = [torch.from_numpy(o).softmax(1).numpy() for o in out[1:]]
    return {"binary": 1 / (1 + np.exp(-out[0])), "age": soft[0], "ethnicity": soft[1]}


def auc(truth: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    pos, neg = p[truth], p[~truth]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/attr-ft128"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    paths, attrs = read_shared(args.shared)
    held = np.array([hashed_split(p.name) == "val" for p in paths])
    faces = cached_faces(paths, 128, args.work)[held]
    held_attrs = [a for a, h in zip(attrs, held, strict=True) if h]
    shipped = AttributeClassifier.load()
    network = AttributeNetwork(shipped.size, **shipped.info["heads"])
    network.features, network.heads = shipped.features, shipped.heads
    network.eval()
    plain, flipped = logits(network, faces, False), logits(network, faces, True)
    averaged = [(a + b) / 2 for a, b in zip(plain, flipped, strict=True)]
    one, both = score(probabilities(plain), held_attrs), score(probabilities(averaged), held_attrs)
    binary = targets(held_attrs)[0]
    print(f"{len(faces)} held-out faces")
    print("| target | goal | balanced acc. (0.5) | with flip | AUC | best threshold (oracle) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, goal in TARGETS.items():
        if name in CELEBA_ATTRIBUTES:
            j = CELEBA_ATTRIBUTES.index(name)
            known = ~np.isnan(binary[:, j])
            truth, p = binary[known, j] > 0.5, probabilities(averaged)["binary"][known, j]
            best = max(
                ((p[truth] > t).mean() + (p[~truth] <= t).mean()) / 2 for t in np.linspace(0.02, 0.98, 97)
            )
            print(f"| {name} | {goal} | {one[name]['balanced_accuracy']:.3f} | {both[name]['balanced_accuracy']:.3f} "
                  f"| {auc(truth, p):.3f} | {best:.3f} |")  # fmt: skip
        else:
            print(
                f"| {name} (accuracy) | {goal} | {one[name]['accuracy']:.3f} | {both[name]['accuracy']:.3f} | | |"
            )


if __name__ == "__main__":
    main()
