"""The denoising objective: noise (with offset or pyramid), noised latents, the target, and the weighted loss.

- Targets: epsilon (DDPM, Ho et al. 2020) or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022),
  from the noise scheduler's `prediction_type`, as diffusers' `train_text_to_image.py` does.
- Noise offset (Guttenberg 2023, "Diffusion with Offset Noise"): add `offset * N(0, 1)` per sample and
  channel, constant over the image, so the model can shift overall brightness.
- Multires (pyramid) noise (Whitaker 2023, Kohya's `--multires_noise_iterations/--multires_noise_discount`,
  sd-scripts `pyramid_noise_like`): noise at 1/r^i of the size, r in [2, 4), upsampled bilinearly, added
  with weight discount^i, then rescaled to unit std; applied after the offset, as Kohya does.
- Timestep range (Kohya's `--min_timestep/--max_timestep`): t uniform in [min, max), max exclusive.
- Zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
  diffusers' `rescale_betas_zero_snr` on the betas; the last alpha-bar is then set to Kohya's 4.9e-8
  instead of 0 (sd-scripts `fix_noise_scheduler_betas_for_zero_terminal_snr`) so that SNR and min-SNR
  weights stay finite. The paper pairs it with v-prediction: at SNR 0 an epsilon model sees pure noise.
  Such a model samples with the same rescaled betas from the trailing timestep (`sampling_schedule`): its
  sample grids and exported scheduler config carry `rescale_betas_zero_snr` and `timestep_spacing`.
- Min-SNR-gamma (Hang et al. 2023): per-sample weight min(SNR, gamma) / SNR for epsilon and
  min(SNR, gamma) / (SNR + 1) for v, with SNR from diffusers' `compute_snr`.
- Loss types (Kohya's `--loss_type`, `--huber_c`, `--huber_schedule`, sd-scripts PR #1228,
  "scheduled pseudo-Huber"): l2, pseudo-Huber 2c(sqrt((p - y)^2 + c^2) - c) and smooth_l1
  2(sqrt((p - y)^2 + c^2) - c), with c constant, exponential in t (c^(t/T)) or by SNR
  ((1 - c) / (1 + sigma)^2 + c, sigma = sqrt((1 - a) / a)), the default.
- `batch_loss`: one micro-batch's loss, with DreamBooth's class batch beside it when prior preservation is
  on (diffusers' `train_dreambooth.py`: one UNet call on both, loss = instance + prior_loss_weight * prior).
- Masked loss (Kohya's `--masked_loss`, sd-scripts `apply_masked_loss`): the per-element loss times a
  [B, 1, h, w] latent-size mask in [0, 1], then the plain mean, as Kohya does (not divided by the mask).
Random numbers come from the caller's CPU generator, so a run is the same on any device and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facesmith.errors import FacesmithError

KOHYA_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # sd-scripts' finite stand-in for alpha-bar 0 at t = T


def noise_options(config) -> dict:
    """`sample_noise`'s keyword options from a TrainConfig."""
    return dict(
        multires_iterations=config.multires_noise_iterations,
        multires_discount=config.multires_noise_discount,
        min_timestep=config.min_timestep,
        max_timestep=config.max_timestep,
    )


def loss_options(config) -> dict:
    """`per_sample_loss`'s loss-type keyword options from a TrainConfig."""
    return dict(loss_type=config.loss_type, huber_c=config.huber_c, huber_schedule=config.huber_schedule)


def sample_noise(
    latents: torch.Tensor,
    generator: torch.Generator,
    noise_scheduler,
    noise_offset: float = 0.0,
    *,
    multires_iterations: int = 0,
    multires_discount: float = 0.3,
    min_timestep: int = 0,
    max_timestep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, timesteps) for a batch of latents, drawn from `generator` on the CPU.

    Options left at their defaults draw nothing extra, so a run without them is the run it always was."""
    shape = latents.shape
    noise = torch.randn(shape, generator=generator)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    if multires_iterations > 0:
        noise = pyramid_noise(noise, generator, multires_iterations, multires_discount)
    steps = noise_scheduler.config.num_train_timesteps
    high = steps if max_timestep is None else min(max_timestep, steps)
    timesteps = torch.randint(min_timestep, high, (shape[0],), generator=generator)
    return noise.to(latents.device, latents.dtype), timesteps.to(latents.device)


def pyramid_noise(
    noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float
) -> torch.Tensor:
    """Kohya's `pyramid_noise_like` on a CPU generator: coarser and coarser noise added to `noise`."""
    batch, channels, height, width = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2  # not always 2x (Kohya)
        small_h, small_w = max(1, int(height / r**i)), max(1, int(width / r**i))
        coarse = torch.randn(batch, channels, small_h, small_w, generator=generator)
        noise += F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if small_h == 1 or small_w == 1:
            break  # the lowest resolution is 1x1
    return noise / noise.std()


def zero_terminal_snr(noise_scheduler):
    """A copy of a DDPM-style noise scheduler with its betas rescaled to zero terminal SNR (Lin et al.)."""
    rescaled = type(noise_scheduler).from_config(noise_scheduler.config, rescale_betas_zero_snr=True)
    rescaled.alphas_cumprod[-1] = KOHYA_TERMINAL_ALPHA_BAR
    return rescaled


def sampling_schedule(config) -> dict:
    """What a model trained under `config` samples with, beyond its own scheduler config: with zero terminal
    SNR, diffusers' `rescale_betas_zero_snr=True` and `timestep_spacing="trailing"` (Lin et al. 2023,
    section 3.3: sampling must start from the last timestep, where SNR is 0)."""
    return (
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} if config.zero_terminal_snr else {}
    )


def sample_as_trained(pipe, config) -> None:
    """Set the pipeline's scheduler config to `sampling_schedule(config)`, so its sample grids (sampling.py
    rebuilds every sampler from that config) and its exported scheduler sample as the model was trained."""
    extra = sampling_schedule(config)
    if extra:
        pipe.scheduler.register_to_config(**extra)


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


def huber_threshold(
    timesteps: torch.Tensor, noise_scheduler, huber_c: float, schedule: str = "snr"
) -> torch.Tensor:
    """Per-sample c of the scheduled pseudo-Huber loss (sd-scripts `get_huber_threshold`, scale 1)."""
    t = timesteps.cpu()
    if schedule == "exponential":
        alpha = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        c = torch.exp(-alpha * t.float())
    elif schedule == "snr":
        alpha_bar = noise_scheduler.alphas_cumprod.index_select(0, t).float()
        sigmas = ((1.0 - alpha_bar) / alpha_bar) ** 0.5
        c = (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    else:
        c = torch.full((t.shape[0],), huber_c)
    return c.to(timesteps.device)


def element_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", c: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of every element: squared error, pseudo-Huber or smooth-L1 with per-sample `c`."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    c = c.view(-1, 1, 1, 1).float()
    root = torch.sqrt((prediction - target) ** 2 + c**2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def per_sample_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler,
    min_snr_gamma: float = 0.0,
    *,
    mask: torch.Tensor | None = None,
    loss_type: str = "l2",
    huber_c: float = 0.1,
    huber_schedule: str = "snr",
) -> torch.Tensor:
    """[B] losses: the element loss, times the latent mask, averaged, weighted by min-SNR-gamma."""
    c = huber_threshold(timesteps, noise_scheduler, huber_c, huber_schedule) if loss_type != "l2" else None
    elements = element_loss(prediction, target, loss_type, c)
    if mask is not None:
        elements = elements * mask.to(elements)
    per_sample = elements.mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps).to(per_sample)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        if noise_scheduler.config.prediction_type == "v_prediction":
            weights = clipped / (snr + 1)
        else:
            weights = clipped / snr
        per_sample = per_sample * weights
    return per_sample


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler,
    min_snr_gamma: float = 0.0,
    **options,
) -> torch.Tensor:
    """The batch's mean of `per_sample_loss` (options: mask, loss_type, huber_c, huber_schedule)."""
    return per_sample_loss(prediction, target, timesteps, noise_scheduler, min_snr_gamma, **options).mean()


def batch_loss(unet, text_states, autocast, scheduler, config, noisy, timesteps, target, captions, *,
               mask: torch.Tensor | None = None, reg=None, time_ids=None) -> torch.Tensor:  # fmt: skip
    """The loss of one micro-batch: `per_sample_loss` under `config`'s options, plus prior_loss_weight x the
    class batch's (`prior.ClassBatch`) when `reg` is given. The UNet runs under `autocast()`, once on both
    batches when their latents have one shape (as train_dreambooth.py concatenates), else once on each.
    `time_ids`: SDXL's size and crop conditioning of the batch (`conditioning.denoise`)."""
    from facesmith.train.conditioning import denoise

    with autocast():
        if reg is not None and reg.noisy.shape[1:] == noisy.shape[1:]:
            states = text_states(captions + reg.captions)
            ids = None if time_ids is None else torch.cat([time_ids, reg.time_ids])
            both = denoise(unet, torch.cat([noisy, reg.noisy]), torch.cat([timesteps, reg.timesteps]),
                           states, ids)  # fmt: skip
            prediction, reg_prediction = both.split([len(captions), len(reg.captions)])
        else:
            prediction = denoise(unet, noisy, timesteps, text_states(captions), time_ids)
            if reg is not None:  # another bucket's shape: a call of its own
                reg_states = text_states(reg.captions)
                reg_prediction = denoise(unet, reg.noisy, reg.timesteps, reg_states, reg.time_ids)
    gamma, options = config.min_snr_gamma, loss_options(config)
    loss = per_sample_loss(prediction, target, timesteps, scheduler, gamma, mask=mask, **options).mean()
    if reg is not None:
        prior = per_sample_loss(reg_prediction, reg.target, reg.timesteps, scheduler, gamma, **options)
        loss = loss + config.prior_loss_weight * prior.mean()
    return loss


def training_scheduler(noise_scheduler, config):
    """The noise scheduler training draws from: the model's, or its zero-terminal-SNR copy, with a warning
    when that meets an epsilon model."""
    if not config.zero_terminal_snr:
        return noise_scheduler
    if noise_scheduler.config.prediction_type == "epsilon":
        import warnings

        from facesmith.train.dataset import TrainingWarning

        warnings.warn("zero_terminal_snr with an epsilon model: Lin et al. (2023) pair it with v-prediction; "
                      "set prediction_type = \"v_prediction\"", TrainingWarning, stacklevel=3)  # fmt: skip
    return zero_terminal_snr(noise_scheduler)
