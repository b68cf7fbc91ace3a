"""`facesmith noise`: the forward (noising) process of an image, as the paper's figures show it.

The image is encoded, noised by the training schedule q(x_t | x_0) (Ho et al. 2020, eq. 4: diffusers'
`DDPMScheduler.add_noise`) at evenly spaced timesteps, and every slice decoded; `run_noise` is the stage
(config in, one labelled strip out). The UNet never runs here: it only shows what training asks it to undo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from facesmith.config import MAX_STEPS, NoiseConfig
from facesmith.errors import FacesmithError
from facesmith.generate import FaceGenerator
from facesmith.latents import decode_latents, encode_image, to_pil
from facesmith.progress import Progress
from facesmith.runtime import prepare_out_dir
from facesmith.trace import image_strip


def run_noise(config: NoiseConfig, progress: Progress | None = None) -> Path:
    """`facesmith noise`: IMAGE encoded, noised in `steps` slices, each decoded, saved as one strip."""
    config.validate()
    image = Path(config.image)
    try:
        picture = Image.open(image)
        picture.load()
    except FileNotFoundError:
        raise FacesmithError(f"image {image} does not exist") from None
    except (OSError, UnidentifiedImageError) as error:
        raise FacesmithError(f"cannot read image {image}: {error}") from None
    out_dir = prepare_out_dir(config.out_dir)
    if progress is not None:
        progress("loading model and noising", 0, None)
    # The forward process never runs the UNet: no engine to prepare for it.
    generator = FaceGenerator.load(
        config.model, device=config.device, dtype=config.dtype, allow_pickle=config.allow_pickle,
        engine="eager",
    )  # fmt: skip
    frames = forward_process(generator, picture, slices=config.steps, seed=config.seed)
    timesteps = forward_timesteps(config.steps, generator.base_scheduler_config["num_train_timesteps"])
    path = out_dir / f"{image.stem}-noise.png"
    image_strip(frames, labels=[f"t = {t}" for t in timesteps]).save(path)
    return path


def forward_process(
    generator: FaceGenerator, image: Image.Image, slices: int = 8, seed: int = 0
) -> list[Image.Image]:
    """The image encoded, noised to `slices` evenly spaced timesteps of the training schedule, and
    each slice decoded; the first frame is the clean reconstruction (t = 0)."""
    from diffusers import DDPMScheduler

    if not 1 <= slices <= MAX_STEPS:
        raise FacesmithError(f"--steps {slices} is outside [1, {MAX_STEPS}]")
    width, height = (max(8, side - side % 8) for side in image.size)
    pixels = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS), dtype=np.float32)
    x = (
        torch.from_numpy(pixels / 127.5 - 1)
        .permute(2, 0, 1)[None]
        .to(generator.device, generator.pipe.vae.dtype)
    )
    schedule = DDPMScheduler.from_config(generator.base_scheduler_config)
    with torch.inference_mode():
        latents = encode_image(generator.pipe.vae, x)
        noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(latents)
        frames = [decode_latents(generator.pipe.vae, latents)]
        for t in forward_timesteps(slices, schedule.config.num_train_timesteps)[1:]:
            frames.append(
                decode_latents(generator.pipe.vae, schedule.add_noise(latents, noise, torch.tensor([t])))
            )
    return [to_pil(frame)[0] for frame in frames]


def forward_timesteps(slices: int, total: int) -> list[int]:
    """t = 0 (the clean image), then `slices` timesteps evenly spaced up to the last of `total`."""
    return [round(k * (total - 1) / slices) for k in range(slices + 1)]
