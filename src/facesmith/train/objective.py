"""The denoising objective: noise (with offset), noised latents, the target, and the weighted loss.

- Targets: epsilon (DDPM, Ho et al. 2020) or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022),
  from the noise scheduler's `prediction_type`, as diffusers' `train_text_to_image.py` does.
- Noise offset (Guttenberg 2023, "Diffusion with Offset Noise"): add `offset * N(0, 1)` per sample and
  channel, constant over the image, so the model can shift overall brightness.
- Min-SNR-gamma (Hang et al. 2023): per-sample weight min(SNR, gamma) / SNR for epsilon and
  min(SNR, gamma) / (SNR + 1) for v, with SNR from diffusers' `compute_snr`.
Random numbers come from the caller's CPU generator, so a run is the same on any device and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facesmith.errors import FacesmithError


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_scheduler, noise_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, timesteps) for a batch of latents, drawn from `generator` on the CPU."""
    shape = latents.shape
    noise = torch.randn(shape, generator=generator)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (shape[0],), generator=generator)
    return noise.to(latents.device, latents.dtype), timesteps.to(latents.device)


def target_for(
    noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's `prediction_type`: the noise, or v."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise FacesmithError(
        f"the model's noise scheduler predicts {kind!r}, which facesmith cannot train: "
        "set prediction_type to epsilon or v_prediction"
    )


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler,
    min_snr_gamma: float = 0.0,
) -> torch.Tensor:
    """Mean squared error, per-sample weighted by min-SNR-gamma when gamma > 0."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps).to(per_sample)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        if noise_scheduler.config.prediction_type == "v_prediction":
            weights = clipped / (snr + 1)
        else:
            weights = clipped / snr
        per_sample = per_sample * weights
    return per_sample.mean()
