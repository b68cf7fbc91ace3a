"""Targets, noise offset and min-SNR-gamma weights against their formulas."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from facesmith.errors import FacesmithError
from facesmith.train.objective import diffusion_loss, sample_noise, target_for


def _scheduler(kind: str) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind
    )


def test_v_target_is_sqrt_a_eps_minus_sqrt_1_minus_a_x0():
    scheduler = _scheduler("v_prediction")
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(target_for(scheduler, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert target_for(_scheduler("epsilon"), x0, eps, t) is eps


def test_a_sample_predicting_scheduler_is_a_one_line_user_error_naming_the_fix():
    x0 = torch.randn(1, 4, 8, 8)
    with pytest.raises(FacesmithError, match="predicts 'sample'.*set prediction_type to epsilon"):
        target_for(_scheduler("sample"), x0, torch.randn_like(x0), torch.tensor([10]))


def test_min_snr_weights_match_the_paper():
    scheduler = _scheduler("epsilon")
    t = torch.tensor([5, 999])
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    expected = (torch.clamp(snr, max=5.0) / snr).mean()
    torch.testing.assert_close(diffusion_loss(pred, target, t, scheduler, 5.0), expected.float())
    assert diffusion_loss(pred, target, t, scheduler, 0.0) == 1.0


def test_noise_offset_shifts_whole_channels_and_is_seeded():
    scheduler = _scheduler("epsilon")
    latents = torch.zeros(64, 4, 16, 16)
    plain, _ = sample_noise(latents, torch.Generator().manual_seed(0), scheduler, 0.0)
    offset, t = sample_noise(latents, torch.Generator().manual_seed(0), scheduler, 1.0)
    assert plain.mean(dim=(2, 3)).std() < 0.2 < offset.mean(dim=(2, 3)).std()
    again, t2 = sample_noise(latents, torch.Generator().manual_seed(0), scheduler, 1.0)
    assert torch.equal(offset, again) and torch.equal(t, t2)
