"""CPU speed of the embedded default model: facesmith against stock diffusers, same weights.

Targets (issue [default-model], on the 2-core CPU): one face at 25 steps in <= 3 s after
load, and a cold `facesmith generate` to the first PNG in <= 15 s. The stock baseline is a
diffusers StableDiffusionPipeline assembled from the same components and called directly
(Euler a, CFG 5, 128 px); facesmith is `FaceGenerator.generate` with the same settings.
Both run in this process, alternately, and the table prints each median and the ratio.

    python benchmarks/default_model_cpu.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch

PROMPT = "a photo of a smiling old man with a gray beard and glasses"


def cold_cli_seconds(steps: int) -> float:
    """Wall time of a fresh `facesmith generate` process until it exits with its PNG written."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "facesmith.cli", "generate", PROMPT, "--steps", str(steps),
             "--seed", "1", "-o", out],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import EulerAncestralDiscreteScheduler

    from facesmith.generate import FaceGenerator

    t0 = time.perf_counter()
    generator = FaceGenerator.load(None)
    load_s = time.perf_counter() - t0
    pipe = generator.pipe
    stock_scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)

    def stock() -> None:
        pipe.scheduler = stock_scheduler
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=5.0, height=128, width=128,
                 generator=torch.Generator().manual_seed(1))  # fmt: skip

    def ours() -> None:
        generator.generate(PROMPT, steps=args.steps, cfg=5.0, sampler="Euler a", seed=1)

    stock(), ours()  # warm-up: first calls allocate and pick kernels
    times = {"stock diffusers": [], "facesmith": []}
    for _ in range(args.repeats):
        for name, fn in (("stock diffusers", stock), ("facesmith", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    cold = cold_cli_seconds(args.steps)

    base = statistics.median(times["stock diffusers"])
    print(f"threads {args.threads}, {args.steps} steps, 128 px, load {load_s:.2f} s")
    print(f"{'path':<18}{'median s':>10}{'ratio':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>10.2f}{median / base:>8.2f}")
    print(f"cold `facesmith generate` to first PNG: {cold:.1f} s (target <= 15 s)")


if __name__ == "__main__":
    main()
