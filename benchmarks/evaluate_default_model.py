"""Evaluate the embedded default model against the packed CelebA faces, over samplers, steps and CFG scales.

Runs the `facesmith evaluate` stage (same code as the CLI) once per setting and prints one markdown row
each: the MTCNN face rate, FD and precision/recall in MobileNetV2 space, the mean agreement of the
attribute classifier with what the prompts asked (every asked attribute; before issue 13 the frozen-feature
classifier was at its majority rate on Bald and Bald was left out), a few attributes, and the near-copy
share. `--classifier DIR` judges with another attribute classifier than the shipped one. This is how the
default model's default sampler and guidance were chosen (MODEL_CARD.md, "Sampler and guidance"). Each
200-image setting takes 4-11 minutes on 2 CPU cores. The packed faces are real photos under non-commercial research terms and stay
in the git-ignored `.pack/` (see scripts/pack_default_data.py).

    python benchmarks/evaluate_default_model.py --cfg 1.5 2 3 4 5 7.5 10 --auto 200 --steps 25
    python benchmarks/evaluate_default_model.py --sampler "DPM++ 2M" --cfg 7.5
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from facesmith.evaluate.evaluation import EvaluateConfig, run_evaluate

SHOWN = ("Male", "Eyeglasses", "Smiling", "Black_Hair", "Blond_Hair")


def row(metrics: dict) -> str:
    model = metrics["sets"]["model"]
    sampling = metrics["model"]["sampling"]
    faith = model["faithfulness"]
    asked = [v["asked"]["accuracy"] for v in faith.values() if "asked" in v]
    shown = [faith.get(k, {}).get("asked", {}).get("accuracy") for k in SHOWN]
    cells = [sampling["sampler"], sampling["steps"], f"{sampling['cfg']:g}", f"{model['face_rate']:.3f}",
             f"{model['fd']:.1f}", f"{model['precision']:.3f}", f"{model['recall']:.3f}",
             f"{sum(asked) / len(asked):.2f}", *("-" if v is None else f"{v:.2f}" for v in shown),
             f"{model['near_copy_share']:.3f}"]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source [default: the embedded model]")
    parser.add_argument("--real", default=".pack/celeba.npz")
    parser.add_argument("--auto", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[25])
    parser.add_argument("--sampler", nargs="+", default=[None], help="[default: the model's own]")
    parser.add_argument("--cfg", type=float, nargs="+", default=[None], help="[default: the model's own]")
    parser.add_argument("--real-count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", default=None, help="attribute classifier folder [default: shipped]")
    parser.add_argument(
        "--identity", action="store_true", help="audit memorization with the identity space as well"
    )
    parser.add_argument("-o", "--out", default="outputs/eval-default")
    args = parser.parse_args()
    header = ["sampler", "steps", "CFG", "face rate", "FD", "precision", "recall", "mean asked agreement",
              *SHOWN, "near-copies"]  # fmt: skip
    rows = []
    for sampler, steps, cfg in itertools.product(args.sampler, args.steps, args.cfg):
        name = f"{(sampler or 'default').replace(' ', '_')}-{steps}-{cfg if cfg is not None else 'default'}"
        config = EvaluateConfig(
            model=args.model, real=args.real, auto=args.auto, steps=steps, sampler=sampler, cfg=cfg,
            real_count=args.real_count, seed=args.seed, out_dir=str(Path(args.out) / name),
            classifier=args.classifier, identity=args.identity,
        )  # fmt: skip
        started = time.time()
        rows.append(row(run_evaluate(config)))
        print(f"{name}: {time.time() - started:.0f} s -> {config.out_dir}", flush=True)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
