"""CPU speed of the embedded default model: facesmith's engines against stock diffusers, same weights.

Targets (issues [default-model] and [gpu-speed] item 4, on the 2-core CPU): one face at 25 steps in
<= 3 s after load, a cold `facesmith generate` to the first PNG in <= 15 s, and the CPU settings
measured: thread count, channels_last, bf16 autocast (the CPU must report avx512_bf16 or AMX for that
to mean anything), torch.compile and ONNX Runtime. The baseline is a diffusers StableDiffusionPipeline
assembled from the same components and called directly (Euler a, CFG 5, 128 px, fp32, all threads).
Every variant runs in this process, interleaved with the baseline, and the table prints each median,
its ratio to stock (lower is faster) and the largest pixel difference from stock's image.

    python benchmarks/default_model_cpu.py [--repeats 5] [--steps 25] [--skip-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

PROMPT = "a photo of a smiling old man with a gray beard and glasses"


def cold_cli_seconds(steps: int, engine: str) -> float:
    """Wall time of a fresh `facesmith generate` process until it exits with its PNG written."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "facesmith.cli", "generate", PROMPT, "--steps", str(steps),
             "--seed", "1", "--engine", engine, "-o", out],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - start


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (60 s warm-up)")
    args = parser.parse_args()
    threads = torch.get_num_threads()

    from diffusers import EulerAncestralDiscreteScheduler

    from facesmith.generate import FaceGenerator

    t0 = time.perf_counter()
    eager = FaceGenerator.load(None, engine="eager")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx = FaceGenerator(eager.model, engine="onnx")
    onnx_load_s = time.perf_counter() - t0
    pipe = eager.pipe

    def stock() -> np.ndarray:
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(eager.base_scheduler_config)
        with torch.inference_mode():
            image = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=5.0, height=128, width=128,
                         generator=torch.Generator().manual_seed(1)).images[0]  # fmt: skip
        return np.asarray(image, dtype=np.int16)

    def facesmith(generator) -> np.ndarray:
        image = generator.generate(PROMPT, steps=args.steps, cfg=5.0, sampler="Euler a", seed=1)[0]
        return np.asarray(image, dtype=np.int16)

    @contextlib.contextmanager
    def one_thread():
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    @contextlib.contextmanager
    def channels_last():
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            for module in (pipe.unet, pipe.vae):
                module.to(memory_format=torch.contiguous_format)

    variants = {
        "stock diffusers": (stock, contextlib.nullcontext),
        "facesmith eager": (lambda: facesmith(eager), contextlib.nullcontext),
        "facesmith onnx (auto)": (lambda: facesmith(onnx), contextlib.nullcontext),
        "stock, 1 thread": (stock, one_thread),
        "stock, channels_last": (stock, channels_last),
        "stock, bf16 autocast": (stock, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    }
    warmups = {}
    if not args.skip_compile:
        t0 = time.perf_counter()
        compiled = FaceGenerator(eager.model, engine="compile")
        facesmith(compiled)
        warmups["facesmith compile"] = time.perf_counter() - t0
        variants["facesmith compile"] = (lambda: facesmith(compiled), contextlib.nullcontext)

    reference = stock()
    times: dict[str, list[float]] = {name: [] for name in variants}
    diffs: dict[str, int] = {}
    for name, (fn, context) in variants.items():
        with context():
            diffs[name] = int(np.abs(fn() - reference).max())  # also the warm-up call
    for _ in range(args.repeats):
        for name, (fn, context) in variants.items():
            with context():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    flags = cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    print(f"{threads} threads, {args.steps} steps, 128 px; CPU bf16 support: {'yes' if bf16 else 'no'}")
    print(f"load: eager {load_s:.2f} s, then the ONNX engine {onnx_load_s:.2f} s (export or cache hit)")
    for name, seconds in warmups.items():
        print(f"{name} warm-up (first image, compile included): {seconds:.1f} s")
    base = statistics.median(times["stock diffusers"])
    print(f"{'path':<24}{'median s':>10}{'ratio':>8}{'max px diff':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{median:>10.2f}{median / base:>8.2f}{diffs[name]:>13}")
    for engine in ("eager", "onnx"):
        print(
            f"cold `facesmith generate --engine {engine}` to first PNG: {cold_cli_seconds(args.steps, engine):.1f} s"
        )


if __name__ == "__main__":
    main()
