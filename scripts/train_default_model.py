"""Train the embedded default face model: the exact recipe behind the shipped weights.

The model (issue [default-model]): frozen all-MiniLM-L6-v2 token states as
the text condition, TAEF2 latents (32 x 16 x 16 at 128 px), and a ~29M
parameter diffusers UNet2DConditionModel, trained with the SD noise schedule
(scaled-linear betas, 1000 steps), epsilon prediction, min-SNR-5 weighting
(Hang et al. 2023), 10% caption dropout for classifier-free guidance, EMA,
bf16 autocast and ``torch.compile``.

Built for the lent GPU's limits (10-minute commands, 64 MiB in per call):
everything is staged in a persistent ``--state`` directory, so a later
command on the same machine resumes from ``ckpt.pt`` and may bring more
packed data; each command stops itself after ``--seconds`` and exports fp16
EMA shards plus a sample grid to ``--out``. Data arrives packed by
``scripts/pack_default_data.py`` and the text encoder by
``scripts/pack_text_encoder.py``. Latents and text states are computed on
the GPU at the start of every command and kept in GPU memory, so a training
step never touches the host.

This script predates ``facesmith train`` (issue [train]); the settings here are
what that command must reproduce for the default model.

    python scripts/train_default_model.py --pack .pack --state /root/fs --out $OUT --seconds 420

A fresh GPU machine has no ``ckpt.pt``: continue from the last exported EMA shards (carried in, e.g. a
copy of ``src/facesmith/weights/default_model``) with ``--init-from DIR``; steps count on from its
``unet.json`` and the learning rate warms up again because Adam's moments start from zero.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facesmith.data.captions import caption_from_attributes
from facesmith.models.shards import save_sharded
from facesmith.models.taef2 import load_taef2
from facesmith.train.presets import (
    LATENT_SCALE,
    PRESETS,
    RESOLUTION,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
)

# The model's shape and noise schedule are the `face-small` preset of `facesmith train`.
TINY_UNET_CONFIG = PRESETS["face-tiny"]
MAX_TOKENS = 77
SAMPLE_PROMPTS = [
    "a photo of a smiling old man with a gray beard and glasses",
    "a portrait of a young woman with wavy blond hair",
    "a photo of a middle-aged Black man with a beard",
    "a headshot of a young East Asian woman with black hair and bangs",
    "a photo of a bald man with a mustache",
    "a portrait of a little girl",
    "a photo of a woman with brown hair wearing lipstick and earrings",
    "a photo of a serious young man with black hair",
]


# ---------------------------------------------------------------------------
# Data: packed WebP faces -> latents; attributes -> captions -> text states.


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def load_pack(path: Path, limit: int | None) -> tuple[np.ndarray, list[dict]]:
    pack = np.load(path)
    data, offsets = pack["data"], pack["offsets"]
    attrs = json.loads(pack["attrs"].tobytes())
    n = len(attrs) if limit is None else min(limit, len(attrs))
    blobs = [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(n)]
    with ProcessPoolExecutor() as pool:
        images = np.stack(list(pool.map(_decode, blobs, chunksize=256)))
    return images, attrs[:n]


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, device: str, batch: int = 1024) -> torch.Tensor:
    """Scaled latents of every image and of its mirror image: [2N, 32, 16, 16] bf16."""
    out = []
    for flip in (False, True):
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).to(device).permute(0, 3, 1, 2)
            x = x.float().div(127.5).sub(1)
            if flip:
                x = x.flip(3)
            out.append((vae.encode(x).latents * LATENT_SCALE).to(torch.bfloat16))
    return torch.cat(out)


class PrunedMiniLM:
    """all-MiniLM-L6-v2 with only caption tokens' embedding rows (pack_text_encoder.py)."""

    def __init__(self, directory: Path, device: str):
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel, BertTokenizerFast

        self.tokenizer = BertTokenizerFast.from_pretrained(directory)
        config = BertConfig.from_pretrained(directory)
        self.model = BertModel(config, add_pooling_layer=False)
        self.model.load_state_dict(
            {k: v.float() for k, v in load_file(directory / "model.safetensors").items()},
            strict=False,
        )
        self.model.to(device).eval()
        kept = load_file(directory / "kept_ids.safetensors")["kept_ids"]
        self.lookup = torch.full((self.tokenizer.vocab_size,), -1, dtype=torch.long)
        self.lookup[kept] = torch.arange(len(kept))
        self.device = device

    @torch.no_grad()
    def encode(self, captions: list[str], batch: int = 4096) -> torch.Tensor:
        """Token states [len, 77, 384] bf16, exactly as the pipeline encodes a prompt."""
        out = []
        for i in range(0, len(captions), batch):
            tok = self.tokenizer(
                captions[i : i + batch],
                padding="max_length",
                max_length=MAX_TOKENS,
                truncation=True,
                return_tensors="pt",
            )
            ids = self.lookup[tok.input_ids]
            if (ids < 0).any():
                missing = set(tok.input_ids[ids < 0].tolist())
                raise RuntimeError(f"caption tokens outside the packed vocabulary: {missing}")
            states = self.model(ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))[0]
            out.append(states.to(torch.bfloat16))
        return torch.cat(out)


# ---------------------------------------------------------------------------
# Training.


def min_snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023, eq. 9)."""
    return torch.clamp(snr, max=gamma) / snr


@torch.no_grad()
def sample_grid(unet, vae, text: PrunedMiniLM, device: str, steps: int = 25, cfg: float = 5.0):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    seeds = range(4)
    cond = text.encode([p for p in SAMPLE_PROMPTS for _ in seeds]).float()
    uncond = text.encode([""]).float().expand_as(cond)
    gens = [torch.Generator().manual_seed(s) for _ in SAMPLE_PROMPTS for s in seeds]
    x = torch.stack([torch.randn(32, 16, 16, generator=g) for g in gens]).to(device)
    for t in scheduler.timesteps:
        inp = torch.cat([x, x])
        with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=device != "cpu"):
            eps = unet(inp, t, torch.cat([uncond, cond])).sample.float()
        e_u, e_c = eps.chunk(2)
        x = scheduler.step(e_u + cfg * (e_c - e_u), t, x).prev_sample
    images = vae.decode(x / LATENT_SCALE).sample.add(1).mul(127.5).clamp(0, 255).byte().cpu()
    grid = Image.new("RGB", (RESOLUTION * 4, RESOLUTION * len(SAMPLE_PROMPTS)))
    for i, img in enumerate(images):
        tile = Image.fromarray(img.permute(1, 2, 0).numpy())
        grid.paste(tile, ((i % 4) * RESOLUTION, (i // 4) * RESOLUTION))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=Path(".pack"))
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=420)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--ema", type=float, default=0.9995)
    parser.add_argument("--variants", type=int, default=8, help="captions per face per command")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=None, help="faces per source (tests)")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="with no ckpt.pt in --state: start UNet and EMA from these fp16 EMA shards (e.g. the shipped "
        "src/facesmith/weights/default_model), counting steps on from their unet.json; Adam restarts, "
        "so the learning rate warms up again over --warmup steps",
    )
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()
    args.state.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.txt"

    def say(msg: str) -> None:
        line = f"[{time.time() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as log:
            log.write(line + "\n")

    # Stage whatever this command carried into the persistent state directory.
    for item in sorted(args.pack.glob("*")):
        target = args.state / item.name
        if not target.exists():
            (shutil.copytree if item.is_dir() else shutil.copy)(item, target)
            say(f"staged {item.name}")
    sources = sorted(p for p in args.state.glob("*.npz"))
    if not sources or not (args.state / "minilm").is_dir():
        raise SystemExit(f"nothing staged in {args.state}: carry .pack (machine went cold?)")

    vae = load_taef2(scaling_factor=LATENT_SCALE).to(device).eval()
    text = PrunedMiniLM(args.state / "minilm", device)
    text.encode(SAMPLE_PROMPTS)  # fail now, not after training, if a word is missing
    ckpt_path = args.state / "ckpt.pt"
    ckpt = torch.load(ckpt_path, map_location="cpu") if ckpt_path.exists() else None
    step = ckpt["step"] if ckpt else 0
    init = None
    if ckpt is None and args.init_from is not None:
        from facesmith.models.shards import load_sharded

        init, manifest = load_sharded(args.init_from, "unet")
        step = int(manifest.get("step", 0))
    warm_from = ckpt.get("warm_from", 0) if ckpt else step  # the step Adam's moments started at
    rng = random.Random(step)

    latents, states, owners = [], [], []
    n_faces = 0
    for src in sources:
        images, attrs = load_pack(src, args.limit)
        lat = encode_latents(vae, images, device)
        n = len(attrs)
        caps = [caption_from_attributes(a, rng) for a in attrs for _ in range(args.variants)]
        states.append(text.encode(caps))
        # Latent rows [face i, mirrored face i] both use face i's captions.
        owners.append(torch.arange(n).repeat(2) + n_faces)
        latents.append(lat)
        n_faces += n
        say(f"{src.stem}: {n} faces, latent std {lat.float().std():.3f}, e.g. '{caps[0]}'")
    latents = torch.cat(latents)
    states = torch.cat(states)
    owners = torch.cat(owners).to(device)
    empty = text.encode([""])[0]
    del text.model
    say(f"data ready: {len(latents)} latents, text states {tuple(states.shape)}")

    unet = UNet2DConditionModel(**(TINY_UNET_CONFIG if args.tiny else UNET_CONFIG)).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01, fused=device == "cuda")
    if ckpt:
        unet.load_state_dict(ckpt["unet"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        say(f"resumed at step {step}")
    elif init is not None:
        weights = {k: v.float() for k, v in init.items()}
        unet.load_state_dict(weights, strict=True)
        ema.load_state_dict(weights, strict=True)
        say(f"initialised from {args.init_from} (EMA weights of step {step}); Adam starts afresh")
    n_params = sum(p.numel() for p in unet.parameters())
    say(f"unet {n_params / 1e6:.1f}M params")
    forward = unet if args.no_compile or device == "cpu" else torch.compile(unet)

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
    snr_all = alphas_cumprod / (1 - alphas_cumprod)
    params = [p for p in unet.parameters()]
    ema_params = [p for p in ema.parameters()]
    gen = torch.Generator(device).manual_seed(1234 + step)
    B = args.batch

    def train_step() -> torch.Tensor:
        idx = torch.randint(0, len(latents), (B,), device=device, generator=gen)
        face = owners[idx]
        variant = torch.randint(0, args.variants, (B,), device=device, generator=gen)
        cond = states[face * args.variants + variant].float()
        drop = torch.rand(B, device=device, generator=gen) < args.caption_dropout
        cond = torch.where(drop[:, None, None], empty.float(), cond)
        x0 = latents[idx].float()
        noise = torch.randn(x0.shape, device=device, generator=gen)
        t = torch.randint(0, 1000, (B,), device=device, generator=gen)
        a = alphas_cumprod[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
            pred = forward(xt, t, cond).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))
        loss = (per_sample * min_snr_weights(snr_all[t], args.min_snr)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "warm_from": warm_from,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)  # atomic: a kill mid-save keeps the old checkpoint

    budget = args.seconds - (time.time() - t_start)
    say(f"training for {budget:.0f}s more from step {step}")
    t_loop, step0, losses = time.time(), step, []
    last_save = time.time()
    while time.time() - t_start < args.seconds:
        lr = args.lr * min(1.0, (step - warm_from + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        losses.append(train_step())
        step += 1
        # EMA with a warm-up (Kohya/diffusers EMAModel style) so early steps don't stick.
        decay = min(args.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, params, 1 - decay)
        if step % 200 == 0:
            loss = torch.stack(losses).mean().item()
            losses.clear()
            rate = (step - step0) / (time.time() - t_loop)
            say(f"step {step} loss {loss:.4f} lr {lr:.2e} {rate:.1f} it/s")
        if time.time() - last_save > 180:
            save_checkpoint()
            last_save = time.time()
    save_checkpoint()
    rate = (step - step0) / (time.time() - t_loop)
    say(f"stopped at step {step} ({rate:.1f} it/s incl. compile, {rate * B:.0f} samples/s)")

    ema.eval()
    half = {k: v.half() for k, v in ema.state_dict().items()}
    save_sharded(
        half,
        args.out,
        "unet",
        extra={
            "unet_config": dict(ema.config),
            "scheduler_config": SCHEDULER_CONFIG,
            "latent_scale": LATENT_SCALE,
            "resolution": RESOLUTION,
            "step": step,
            "batch": B,
            "faces": n_faces,
            "train_seconds_this_command": time.time() - t_start,
        },
    )
    sample_grid(ema, vae, PrunedMiniLM(args.state / "minilm", device), device).save(
        args.out / f"samples_{step:06d}.png"
    )
    say("exported EMA shards and sample grid")


if __name__ == "__main__":
    main()
