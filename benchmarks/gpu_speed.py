"""GPU speed of generation and training: stock diffusers against facesmith, with the FLOP limit beside each.

Issue [gpu-speed]. One process, one machine, random weights in SD1.5 (512 px) or SDXL (1024 px) shapes
built from the configs facesmith ships (nothing is downloaded). Rows:

- generation, batch 1, 50 steps PNDM, CFG 7.5: stock `StableDiffusionPipeline.__call__` in --dtype, then
  `FaceGenerator` with engine "compile" (torch.compile, CUDA graphs); compile warm-up is reported apart;
- generation, batch 8: stock `num_images_per_prompt=8`, facesmith `count=8, batch_size=8`;
- generation, batch 1, 25 steps DPM++ 2M;
- training (SD1.5 only), batch 16 at 512 px on cached latents: the plain diffusers-example step
  (benchmarks/train_speed.py, bf16 autocast, AdamW), then `facesmith train` full (compile, fused AdamW,
  latents on the GPU) and LoRA; the share of wall time the GPU spent in kernels, from torch.profiler.

The FLOP limit: FLOPs of one UNet call with CFG, one VAE decode and one training step are counted by
torch.utils.flop_counter on these very models; the peak is a dense matmul in --dtype measured here (or
--peak-tflops). "of limit" is achieved FLOP/s over that peak. Ratios are stock time / facesmith time, so
above 1 is faster. Images of both paths with the same seed are compared (mean absolute pixel difference).

    python benchmarks/gpu_speed.py [--family sd1|sdxl] [--dtype fp16|bf16] [--skip-train] [--tiny]

--tiny runs the same code on the test factory's tiny sizes (on the CPU if there is no GPU) to check the
harness; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_speed  # noqa: E402  (its model, dataset and plain-step builders)

PROMPT = "a photo of a smiling old man with a gray beard and glasses"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def build_pipeline(family: str, tiny: bool):
    """A random-weight pipeline in the real shapes of `family` (or the tiny factory's sizes)."""
    if tiny:
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
        import factory

        return factory.tiny_sdxl() if family == "sdxl" else factory.tiny_sd15()
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from facesmith.models.single_file import clip_tokenizer, shipped_config

    parts = {
        "vae": AutoencoderKL.from_config(shipped_config(family, "vae")),
        "unet": UNet2DConditionModel.from_config(shipped_config(family, "unet")),
        "scheduler": PNDMScheduler.from_config(shipped_config(family, "scheduler")),
        "tokenizer": clip_tokenizer(),
    }
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            text_encoder=CLIPTextModel(CLIPTextConfig(**shipped_config(family, "text_encoder"))),
            text_encoder_2=CLIPTextModelWithProjection(
                CLIPTextConfig(**shipped_config(family, "text_encoder_2"))
            ),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            **parts,
        )
    return StableDiffusionPipeline(
        text_encoder=CLIPTextModel(CLIPTextConfig(**shipped_config(family, "text_encoder"))),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **parts,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` calls, after one untimed call."""
    fn()
    sync(device)
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul FLOP/s in `dtype`: the roof every other figure is a fraction of."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, 10)
    return 2 * n**3 / seconds


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def unet_inputs(pipe, batch: int, side: int, device, dtype):
    """Inputs of one UNet call as the pipeline makes them (SDXL's added conditions included)."""
    unet = pipe.unet
    latent = side // pipe.vae_scale_factor
    args = (
        torch.randn(batch, unet.config.in_channels, latent, latent, device=device, dtype=dtype),
        torch.tensor(500, device=device),
        torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=dtype),
    )
    kwargs = {}
    if getattr(unet.config, "addition_embed_type", None) == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch, device=device, dtype=dtype),
        }
    return args, kwargs


def training_step_flops(unet, batch: int, size: int, device: torch.device) -> int:
    """Forward and backward of one training step of `unet` (fp32 here: the count is the same in bf16)."""
    unet.to(device)
    latents = torch.randn(batch, 4, size // 8, size // 8, device=device)
    states = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    return count_flops(lambda: unet(latents, t, states).sample.float().pow(2).mean().backward())


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------


def generation_rows(args, device: torch.device, dtype: torch.dtype, peak: float) -> list[tuple]:
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    from facesmith.generate import FaceGenerator
    from facesmith.models.loading import LoadedModel

    pipe = build_pipeline(args.family, args.tiny)
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    t0 = time.perf_counter()
    fast = FaceGenerator(LoadedModel(pipe, args.family, None, []), device=str(device), dtype=dtype_name,
                         engine="compile" if not args.eager else "eager")  # fmt: skip
    side = fast.native_size[0]
    config = dict(fast.base_scheduler_config)

    with torch.inference_mode():
        (u_args, u_kwargs) = unet_inputs(pipe, 2, side, device, dtype)
        unet_flops = count_flops(lambda: pipe.unet(*u_args, **u_kwargs))
        latent = torch.randn(
            1, pipe.vae.config.latent_channels, side // 8, side // 8, device=device, dtype=dtype
        )
        vae_flops = count_flops(lambda: pipe.vae.decode(latent))

    def stock(steps: int, sampler: str, count: int = 1):
        scheduler = PNDMScheduler if sampler == "PNDM" else DPMSolverMultistepScheduler
        pipe.scheduler = scheduler.from_config(
            config, **({"skip_prk_steps": True} if sampler == "PNDM" else {})
        )
        with torch.inference_mode():
            return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=count,
                        generator=[torch.Generator("cpu").manual_seed(1 + i) for i in range(count)]).images  # fmt: skip

    def ours(steps: int, sampler: str, count: int = 1):
        return fast.generate(
            PROMPT, steps=steps, cfg=7.5, sampler=sampler, seed=1, count=count, batch_size=count
        )

    runs = [
        (f"batch 1, {args.steps} steps PNDM", args.steps, "PNDM", 1),
        (f"batch {args.batch}, {args.steps} steps PNDM", args.steps, "PNDM", args.batch),
        ("batch 1, 25 steps DPM++ 2M", 25, "DPM++ 2M", 1),
    ]
    warm = time.perf_counter()
    for _, steps, sampler, count in runs:  # every shape compiles (and records its CUDA graph) once
        ours(steps, sampler, count)
    sync(device)
    print(
        f"facesmith load {warm - t0:.1f} s; compile warm-up for the {len(runs)} shapes: {time.perf_counter() - warm:.1f} s"
    )

    rows = []
    for label, steps, sampler, count in runs:
        floor_flops = count * (steps * unet_flops + vae_flops)
        base = timed(lambda s=steps, m=sampler, c=count: stock(s, m, c), device, args.repeats)
        mine = timed(lambda s=steps, m=sampler, c=count: ours(s, m, c), device, args.repeats)
        diff = float(np.mean([np.abs(pixels(a) - pixels(b)).mean()
                              for a, b in zip(stock(steps, sampler, count), ours(steps, sampler, count), strict=True)]))  # fmt: skip
        for who, seconds in (("stock", base), ("facesmith", mine)):
            rows.append((f"{who}: {label}", seconds, count / seconds, None, base / seconds,
                         floor_flops / seconds / peak, diff if who == "facesmith" else None))  # fmt: skip
    return rows


def training_rows(args, device: torch.device, peak: float) -> list[tuple]:
    from diffusers import UNet2DConditionModel

    size, batch = (64, 4) if args.tiny else (512, args.train_batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_speed.build_model(root / "model", big=not args.tiny)
        train_speed.build_dataset(root / "data", count=max(4 * batch, 16), size=size)
        step_flops = training_step_flops(
            UNet2DConditionModel.from_pretrained(root / "model" / "unet"), batch, size, device
        )
        plain = train_speed.plain_rate(root / "model", size, batch, args.train_steps, device.type)
        rows.append((f"stock: plain step full, batch {batch}", None, None, plain, 1.0,
                     plain / batch * step_flops / peak, None))  # fmt: skip
        for mode in ("full", "lora"):
            busy: list[float] = []
            rate = train_speed.facesmith_rate(
                root / "model", root / "data", root / mode, mode, size, batch, args.train_steps,
                compile=device.type == "cuda" and not args.eager, busy=busy if device.type == "cuda" else None,
            )  # fmt: skip
            share = f", GPU busy {busy[0]:.0%}" if busy else ""
            rows.append((f"facesmith: train {mode}{share}", None, None, rate, rate / plain,
                         rate / batch * step_flops / peak if mode == "full" else None, None))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=24)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--eager", action="store_true", help="facesmith without compile: what the wrapper costs"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="instead of the measured matmul peak")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models: checks the harness, on CPU if need be"
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("gpu_speed.py: no CUDA GPU here; --tiny runs the harness on the CPU with tiny models")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype] if cuda else torch.float32
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device, dtype)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.family}{' (tiny)' if args.tiny else ''}, {dtype}, "
          f"peak {peak / 1e12:.1f} TFLOP/s ({'given' if args.peak_tflops else 'measured matmul'})")  # fmt: skip
    rows = generation_rows(args, device, dtype, peak)
    if not args.skip_train and args.family == "sd1":
        rows += training_rows(args, device, peak)
    print(
        f"{'path':<46}{'latency s':>10}{'images/s':>10}{'samples/s':>11}{'x stock':>9}{'of limit':>10}{'px diff':>9}"
    )
    for label, latency, images, samples, ratio, fraction, diff in rows:
        cells = [f"{latency:10.3f}" if latency else " " * 10, f"{images:10.2f}" if images else " " * 10,
                 f"{samples:11.1f}" if samples else " " * 11, f"{ratio:9.2f}",
                 f"{fraction:10.1%}" if fraction else " " * 10, f"{diff:9.2f}" if diff is not None else ""]  # fmt: skip
        print(f"{label:<46}" + "".join(cells))


if __name__ == "__main__":
    main()
