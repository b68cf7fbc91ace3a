"""Sample images during training from a prompt file with Kohya's per-line settings, as a labelled grid.

A prompt file has one prompt per line; `#` lines and blank lines are skipped. Options follow the prompt
as in Kohya's `sample_images`: `--n` negative prompt, `--s` steps, `--d` seed, `--l` CFG scale,
`--w`/`--h` width and height. Unset values use the defaults below (Kohya's: 30 steps, seed from the line
number, the training resolution), and the model's own CFG and sampler, as `facesmith generate` does (Euler a
and CFG 2 for the default model, DDIM and 7.5 for SD). Each image is made by the model being trained, through its
pipeline with the chosen sampler, from a seeded CPU generator, and labelled with its prompt and seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from facesmith.errors import FacesmithError

LABEL_HEIGHT = 24


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    steps: int = 30
    seed: int = 0
    cfg: float | None = None  # None: the model's own guidance (7.5, or 2 for the default model)
    width: int | None = None
    height: int | None = None


def parse_prompt_line(line: str, number: int = 0) -> SamplePrompt:
    """One Kohya prompt line -> SamplePrompt; the seed defaults to the line number."""
    parts = re.split(r"\s--(?=[nsdlwh]\s)", " " + line.strip())
    sample = SamplePrompt(parts[0].strip(), seed=number)
    for part in parts[1:]:
        flag, _, value = part.partition(" ")
        value = value.strip()
        try:
            if flag == "n":
                sample.negative = value
            elif flag == "s":
                sample.steps = int(value)
            elif flag == "d":
                sample.seed = int(value)
            elif flag == "l":
                sample.cfg = float(value)
            elif flag == "w":
                sample.width = int(value)
            elif flag == "h":
                sample.height = int(value)
        except ValueError:
            raise FacesmithError(
                f"sample prompt line {number + 1}: --{flag} {value!r} is not a number"
            ) from None
    return sample


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    samples = [
        parse_prompt_line(line, i)
        for i, line in enumerate(lines)
        if line.strip() and not line.startswith("#")
    ]
    if not samples:
        raise FacesmithError(f"sample prompt file {path} has no prompts")
    return samples


@torch.no_grad()
def sample_images(
    pipe,
    prompts: list[SamplePrompt],
    sampler: str,
    size: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    cfg: float = 7.5,
) -> list[Image.Image]:
    """One image per prompt from `pipe` (the model under training), decoded through facesmith.latents;
    `progress(done, len(prompts))` after each."""
    from facesmith.latents import decode_latents, to_pil
    from facesmith.samplers import make_scheduler

    scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler(sampler, dict(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    images = []
    try:
        for p in prompts:
            latents = pipe(
                prompt=p.prompt,
                negative_prompt=p.negative or None,
                num_inference_steps=p.steps,
                guidance_scale=cfg if p.cfg is None else p.cfg,
                width=p.width or size,
                height=p.height or size,
                generator=torch.Generator("cpu").manual_seed(p.seed),
                output_type="latent",
            ).images
            images += to_pil(decode_latents(pipe.vae, latents.to(device)))
            if progress is not None:
                progress(len(images), len(prompts))
    finally:
        pipe.scheduler = scheduler
    return images


def labelled_grid(images: list[Image.Image], prompts: list[SamplePrompt], columns: int = 4) -> Image.Image:
    """Images in rows of `columns`, each with "seed: prompt" written under it."""
    columns = min(columns, len(images))
    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images) + LABEL_HEIGHT
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for k, (image, p) in enumerate(zip(images, prompts, strict=True)):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        grid.paste(image, (x, y))
        label = f"{p.seed}: {p.prompt}"
        while len(label) > 4 and draw.textlength(label, font=font) > cell_w - 4:
            label = label[:-2]
        draw.text((x + 2, y + image.height + 4), label, fill="black", font=font)
    return grid


def sample_grid(
    accelerator, model, prompts, config, resolution: int, device, step: int, out: Path, report
) -> Path:
    """The labelled grid of `prompts` at `step`, made in eval mode, saved under OUT/samples and given to
    TensorBoard."""
    import numpy as np

    pipe = model.pipe
    unet = pipe.unet
    was_training = unet.training
    unet.eval()
    try:
        images = sample_images(
            pipe,
            prompts,
            config.sample_sampler or model.default_sampler,
            resolution,
            device,
            progress=lambda done, count: report("sampling", done, count, step=step),
            cfg=model.default_cfg,
        )
    finally:
        unet.train(was_training)
    grid = labelled_grid(images, prompts)
    path = out / "samples" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    if config.tensorboard:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    return path
