"""The validation loss: fixed noise and timesteps, untouched training RNG, and the run folder's log."""

from __future__ import annotations

import csv

import torch
from diffusers import DDPMScheduler

from facesmith.train.validation import ValidationLog, ValidationLoss, validation_timesteps


class Denoiser(torch.nn.Module):
    """A one-parameter 'UNet': predicts scale * noisy, so the validation loss is a function of scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, noisy, t, states):
        return type("Out", (), {"sample": self.scale * noisy})()


def _loss(seed: int = 0) -> ValidationLoss:
    latents = [torch.full((4, 8, 8), 0.5), torch.full((4, 8, 8), -0.5)]
    return ValidationLoss(latents, ["a", "b"], DDPMScheduler(), seed)


def test_the_same_weights_give_the_same_loss_and_better_weights_a_lower_one():
    import contextlib

    states = lambda captions: torch.zeros(len(captions), 1, 1)  # noqa: E731
    loss = _loss()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = loss(Denoiser(0.5), states, contextlib.nullcontext)
    assert torch.equal(torch.get_rng_state(), before)  # the training run's RNG is left alone
    assert (
        first
        == loss(Denoiser(0.5), states, contextlib.nullcontext)
        == _loss()(Denoiser(0.5), states, contextlib.nullcontext)
    )
    # Predicting the noisy input is near right at high t (noisy ~ noise): scale 1 beats scale 0.
    assert loss(Denoiser(1.0), states, contextlib.nullcontext) < loss(
        Denoiser(0.0), states, contextlib.nullcontext
    )
    assert _loss(seed=1)(Denoiser(0.5), states, contextlib.nullcontext) != first


def test_kohyas_timesteps_scale_with_the_schedule():
    assert validation_timesteps(1000) == [10, 350, 500, 650, 990]
    assert validation_timesteps(100) == [1, 35, 50, 65, 99]


def test_a_resumed_log_drops_rows_past_its_checkpoint_and_names_the_best(tmp_path):
    log = ValidationLog(tmp_path, 0, [10], 0, 1)
    for step, value in ((2, 0.5), (4, 0.3), (6, 0.4)):
        log.add(step, value)
    assert log.best == (4, 0.3)
    resumed = ValidationLog(tmp_path, 4, [10], 0, 1)  # the checkpoint was at step 4
    assert [row["step"] for row in csv.DictReader((tmp_path / "validation.csv").open())] == ["2", "4"]
    resumed.add(6, 0.2)
    assert resumed.best == (6, 0.2)
