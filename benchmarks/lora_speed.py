"""CPU speed of a LoRA on the embedded default model: fused at load (facesmith) against peft adapters.

Issue [hardening] item 2: `generate --lora` used to keep the LoRA as peft adapter layers, which costs
extra matmuls at every layer and step and ruled out the ONNX engine, so it ran 5-8x slower than without
a LoRA. facesmith now fuses a load-time LoRA into the weights (diffusers' `fuse_lora`, then
`unload_lora_weights`), which leaves plain layers that `--engine auto` runs on ONNX Runtime.

The LoRA is random (rank 16 on every attention projection of the UNet, as `facesmith train --mode lora`
makes), written in diffusers' format to a temporary file. All rows run in this process, interleaved
with the baseline (peft adapters, eager torch, as before), and the table prints each median time per
image, its ratio to the baseline (lower is faster) and the largest pixel difference from its image.

    python benchmarks/lora_speed.py [--repeats 3] [--steps 25] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a photo of a smiling old man with a gray beard and glasses"


def random_lora(path: Path, rank: int = 16, seed: int = 0) -> Path:
    """A random UNet LoRA for the default model, saved by diffusers in its peft-named format."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from facesmith.models.loading import load_model

    unet = load_model(None).pipe.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    StableDiffusionPipeline.save_lora_weights(
        path, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    return path / "pytorch_lora_weights.safetensors"


def seconds_per_image(generator, steps: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    image = generator.generate(PROMPT, steps=steps, seed=1)[0]
    return time.perf_counter() - start, np.asarray(image, dtype=np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # oversubscribed threads slow torch badly on a shared machine

    import facesmith

    with tempfile.TemporaryDirectory() as folder:
        lora = f"{random_lora(Path(folder))}:0.8"
        rows = {
            "peft adapters, eager (before)": facesmith.load(loras=[lora], engine="eager", fuse_loras=False),
            "fused, eager": facesmith.load(loras=[lora], engine="eager"),
            "fused, auto (ONNX Runtime)": facesmith.load(loras=[lora]),
            "no LoRA, auto (reference)": facesmith.load(),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        images: dict[str, np.ndarray] = {}
        for name, generator in rows.items():
            _, images[name] = seconds_per_image(generator, args.steps)  # warm-up (ONNX: the export)
        for _ in range(args.repeats):
            for name, generator in rows.items():
                elapsed, _ = seconds_per_image(generator, args.steps)
                times[name].append(elapsed)

    baseline_name = next(iter(rows))
    baseline = statistics.median(times[baseline_name])
    print(f"default model, {args.steps} steps, 128 px, {args.threads} threads, median of {args.repeats}")
    print(f"{'path':34s} {'s/image':>8s} {'vs before':>10s} {'max px diff':>12s}")
    for name in rows:
        median = statistics.median(times[name])
        diff = int(np.abs(images[name] - images[baseline_name]).max())
        print(f"{name:34s} {median:8.2f} {median / baseline:10.2f} {diff:12d}")


if __name__ == "__main__":
    main()
