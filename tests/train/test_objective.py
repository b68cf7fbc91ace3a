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


# ----------------------------------------------------------------------------------------------------------
# Issue 16: pyramid noise, timestep range, zero terminal SNR, Huber losses, masks.


def test_multires_noise_is_unit_std_low_frequency_heavier_and_seeded():
    scheduler = _scheduler("epsilon")
    latents = torch.zeros(16, 4, 32, 32)
    plain, _ = sample_noise(latents, torch.Generator().manual_seed(0), scheduler)
    pyramid, _ = sample_noise(
        latents, torch.Generator().manual_seed(0), scheduler, multires_iterations=6, multires_discount=0.8
    )
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-4)
    # Coarse structure: 8x8 block means vary far more than white noise's (std 1/8).
    blocks = torch.nn.functional.avg_pool2d(pyramid, 8).std().item()
    assert blocks > 2 * torch.nn.functional.avg_pool2d(plain, 8).std().item()
    again, _ = sample_noise(
        latents, torch.Generator().manual_seed(0), scheduler, multires_iterations=6, multires_discount=0.8
    )
    assert torch.equal(pyramid, again)


def test_timestep_range_is_kohyas_min_inclusive_max_exclusive():
    scheduler = _scheduler("epsilon")
    _, t = sample_noise(torch.zeros(4000, 1, 1, 1), torch.Generator().manual_seed(0), scheduler,
                        min_timestep=200, max_timestep=203)  # fmt: skip
    assert set(t.tolist()) == {200, 201, 202}


def test_zero_terminal_snr_ends_at_kohyas_tiny_alpha_bar_and_keeps_min_snr_finite():
    from diffusers.training_utils import compute_snr

    from facesmith.train.objective import KOHYA_TERMINAL_ALPHA_BAR, zero_terminal_snr

    scheduler = _scheduler("v_prediction")
    rescaled = zero_terminal_snr(scheduler)
    assert rescaled.alphas_cumprod[-1].item() == pytest.approx(KOHYA_TERMINAL_ALPHA_BAR)
    assert scheduler.alphas_cumprod[-1] > 1e-3  # the original is left alone
    assert rescaled.alphas_cumprod[0] == pytest.approx(scheduler.alphas_cumprod[0].item(), rel=1e-3)
    t = torch.tensor([999])
    assert compute_snr(rescaled, t).item() < 1e-7
    x = torch.ones(1, 1, 2, 2)
    assert torch.isfinite(diffusion_loss(x, 0 * x, t, zero_terminal_snr(_scheduler("epsilon")), 5.0))


def test_huber_and_smooth_l1_follow_kohyas_formulas_and_the_snr_schedule():
    from facesmith.train.objective import huber_threshold

    scheduler = _scheduler("epsilon")
    t = torch.tensor([0, 999])
    c_snr = huber_threshold(t, scheduler, 0.1, "snr")
    assert c_snr[0] > 0.9 and c_snr[1] == pytest.approx(0.1, abs=0.01)  # c -> 1 at t=0, -> huber_c at T
    assert huber_threshold(t, scheduler, 0.1, "exponential").tolist() == pytest.approx([1.0, 0.1], rel=1e-2)
    pred, target = torch.full((2, 1, 1, 1), 3.0), torch.zeros(2, 1, 1, 1)
    c = 0.5
    huber = diffusion_loss(
        pred, target, t, scheduler, loss_type="huber", huber_c=c, huber_schedule="constant"
    )
    assert huber.item() == pytest.approx(2 * c * ((9 + c * c) ** 0.5 - c))
    smooth = diffusion_loss(
        pred, target, t, scheduler, loss_type="smooth_l1", huber_c=c, huber_schedule="constant"
    )
    assert smooth.item() == pytest.approx(2 * ((9 + c * c) ** 0.5 - c))
    # Linear, not quadratic, for big errors: the point of Huber (outliers pull less).
    big = diffusion_loss(
        10 * pred, target, t, scheduler, loss_type="huber", huber_c=c, huber_schedule="constant"
    )
    assert big.item() < 12 * huber.item() and diffusion_loss(10 * pred, target, t, scheduler) == 900


def test_a_mask_weights_the_loss_per_latent_pixel_as_kohya_does():
    scheduler = _scheduler("epsilon")
    pred, target, t = torch.ones(1, 4, 4, 4), torch.zeros(1, 4, 4, 4), torch.tensor([10])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # the left half counts
    assert diffusion_loss(pred, target, t, scheduler, mask=mask).item() == pytest.approx(0.5)
    pred[..., :2] = 0  # errors only where the mask is 0: no loss
    assert diffusion_loss(pred, target, t, scheduler, mask=mask).item() == 0
