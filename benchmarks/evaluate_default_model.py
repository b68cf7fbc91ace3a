"""Evaluate the embedded default model against the packed CelebA faces, as the README reports it.

Runs the `facesmith evaluate` stage (same code as the CLI) and prints the headline numbers with their
feature space. The packed faces are real photos under non-commercial research terms and stay in the
git-ignored `.pack/` (see scripts/pack_default_data.py).

    python benchmarks/evaluate_default_model.py --real .pack/celeba.npz --auto 20 --steps 12 --real-count 200
"""

from __future__ import annotations

import argparse
import json
import time

from facesmith.evaluate.evaluation import EvaluateConfig, run_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source [default: the embedded model]")
    parser.add_argument("--real", default=".pack/celeba.npz")
    parser.add_argument("--auto", type=int, default=20)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--real-count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", default="outputs/eval-default")
    args = parser.parse_args()
    config = EvaluateConfig(
        model=args.model, real=args.real, auto=args.auto, steps=args.steps, sampler=args.sampler, real_count=args.real_count,
        seed=args.seed, out_dir=args.out,
    )  # fmt: skip
    last = [0.0]
    started = time.time()

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or time.time() - last[0] > 20:
            last[0] = time.time()
            print(f"{time.time() - started:6.0f}s {stage} {done}/{total}", flush=True)

    metrics = run_evaluate(config, progress)
    print(f"total {time.time() - started:.0f}s; feature space: {metrics['feature_space']}")
    for name, values in metrics["sets"].items():
        headline = {
            k: values[k]
            for k in ("fd", "kid", "precision", "recall", "diversity", "face_rate", "near_copy_share")
        }
        print(name, json.dumps(headline))


if __name__ == "__main__":
    main()
