"""Training speed of `facesmith train` against a plain diffusers-example step, in samples/s.

Runs full fine-tuning and LoRA through `run_train` on random-weight models: the tiny SD1.5-shaped model on
the CPU, and SD1.5's real shapes at 512 px on a GPU when one is present. In the same process it times a
plain step as diffusers' `train_text_to_image.py` does it (bf16 autocast on CUDA, AdamW, MSE on epsilon,
no VAE: latents are given, as with facesmith's latent cache) and prints facesmith / plain. Reference
from the issue: such a plain step ran 78 samples/s for full fine-tuning at batch 16 on an H100.

    python benchmarks/train_speed.py [--steps 20] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_model(folder: Path, big: bool) -> None:
    """A random-weight SD1.5 diffusers folder: real shapes if `big`, else the test factory's tiny sizes."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facesmith.models.single_file import clip_tokenizer, shipped_config

    unet, vae, text = (
        shipped_config("sd1", "unet"),
        shipped_config("sd1", "vae"),
        shipped_config("sd1", "text_encoder"),
    )
    if not big:
        unet.update(block_out_channels=[32, 64], layers_per_block=1, sample_size=8, cross_attention_dim=32)
        unet.update(
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        )
        vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
        text.update(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=1,
            projection_dim=32,
        )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel.from_config(unet),
        scheduler=DDIMScheduler.from_config(shipped_config("sd1", "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_dataset(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"images/{i}.png"
        )
        rows.append(json.dumps({"file_name": f"images/{i}.png", "text": f"a photo of face {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def facesmith_rate(
    model: Path,
    data: Path,
    out: Path,
    mode: str,
    size: int,
    batch: int,
    steps: int,
    compile: bool = False,
    busy: list[float] | None = None,
) -> float:
    """samples/s of `run_train` over its middle steps; with `busy` (CUDA), also the share of wall time
    the GPU spent in kernels over the last few steps, from torch.profiler (a window apart from the timing)."""
    from facesmith.train.config import TrainConfig
    from facesmith.train.trainer import run_train

    times: list[float] = []
    window = (steps - 5, steps - 1)  # profiled steps; the timed ones end before them
    profiler = None

    def progress(stage, step, total, **fields):
        nonlocal profiler
        times.append(time.perf_counter())
        if busy is None:
            return
        if step == window[0]:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            profiler.__enter__()
            times.append(time.perf_counter())
        elif step == window[1] and profiler is not None:
            torch.cuda.synchronize()
            wall = time.perf_counter() - times[-1]
            profiler.__exit__(None, None, None)
            kernel_us = sum(event.self_device_time_total for event in profiler.key_averages())
            busy.append(kernel_us / 1e6 / wall)

    config = TrainConfig(
        dataset=str(data),
        model=str(model),
        output_dir=str(out),
        mode=mode,
        resolution=size,
        batch_size=batch,
        max_steps=steps,
        save_every=10**9,  # only the final save, outside the timed steps
        tensorboard=False,
        learning_rate=1e-5,
        compile=compile,
    )
    run_train(config, progress=progress)
    last = window[0] - 1 if busy is not None else len(times) - 1
    timed = times[3 if compile else 2 : last]  # skip warm-up (and compile) steps and the last one (it saves)
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def plain_rate(model: Path, size: int, batch: int, steps: int, device: str) -> float:
    """diffusers' train_text_to_image.py step on given latents: autocast bf16 (CUDA), AdamW (fused on CUDA,
    as in the issue's 78 samples/s reference), MSE on eps."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet").to(device).train()
    scheduler = DDPMScheduler.from_pretrained(model / "scheduler")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device == "cuda")
    latents = torch.randn(batch, 4, size // 8, size // 8, device=device)
    states = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    marks = []
    for _ in range(steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
            pred = unet(scheduler.add_noise(latents, noise, t), t, states).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # synchronise, as a logging training loop does every step
        marks.append(time.perf_counter())
    timed = marks[2:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on CUDA, 4 on the CPU")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = 512 if cuda else 64
    batch = args.batch or (16 if cuda else 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_model(root / "model", big=cuda)
        build_dataset(root / "data", count=max(2 * batch, 8), size=size)
        plain = plain_rate(root / "model", size, batch, args.steps, device)
        name = torch.cuda.get_device_name() if cuda else "CPU"
        shape = "SD1.5 shapes" if cuda else "tiny SD1.5 model"
        print(f"{name}, {shape}, {size} px, batch {batch}, {args.steps} steps")
        print(f"plain diffusers-example step (full): {plain:8.2f} samples/s")
        for mode in ("full", "lora"):
            rate = facesmith_rate(root / "model", root / "data", root / mode, mode, size, batch, args.steps)
            print(
                f"facesmith train --mode {mode:4s}:        {rate:8.2f} samples/s  ({rate / plain:.2f} x plain full)"
            )


if __name__ == "__main__":
    main()
