"""Between pixels and latents: VAE encode and decode, with the half-precision NaN guard.

Latents here are always *scaled* (multiplied by the VAE's scaling factor, shifted or normalised where
its config says so), the space the UNet works in. Decoding checks for NaN, the known black-image failure
of fp16 VAEs (SD VAEs overflow in fp16), and redoes the decode in float32, keeping the VAE there from
then on, as A1111 does with its `--no-half-vae` fallback. Works for AutoencoderKL (`latent_dist`) and
tiny autoencoders that return `latents` directly.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image


class VaeUpcastWarning(UserWarning):
    """The half-precision VAE decode gave NaN and was redone in float32."""


def encode_image(vae, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (distribution mode for KL VAEs; TAE-style VAEs return latents)."""
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    latents = dist.mode() if dist is not None else getattr(out, "latents", None)
    if latents is None:
        latents = out[0]
    config = vae.config
    if getattr(config, "latents_mean", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        return (latents - mean) * config.scaling_factor / std
    shift = getattr(config, "shift_factor", None) or 0.0
    return (latents - shift) * getattr(config, "scaling_factor", 1.0)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> float32 images in [0, 1], redoing the decode in fp32 if half precision gave NaN."""
    config = vae.config
    if getattr(config, "latents_mean", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / getattr(config, "scaling_factor", 1.0) + (
            getattr(config, "shift_factor", None) or 0.0
        )
    pixels = _decode(vae, latents)
    if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
        warnings.warn(
            f"the VAE decode in {vae.dtype} gave NaN (the black-image failure); decoding in float32 from now on",
            VaeUpcastWarning,
            stacklevel=2,
        )
        vae.to(torch.float32)
        pixels = _decode(vae, latents)
    return (pixels.float() / 2 + 0.5).clamp(0, 1)


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    out = vae.decode(latents.to(vae.dtype))
    return getattr(out, "sample", None) if getattr(out, "sample", None) is not None else out[0]


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]
