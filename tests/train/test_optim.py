"""Optimizers by name and the LR schedule shapes."""

from __future__ import annotations

import math

import pytest
import torch

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.optim import lr_factor, make_optimizer


def test_warmup_then_cosine_to_zero_or_constant():
    assert [lr_factor(s, "constant", 4, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(4, "cosine", 4, 104) == 1.0
    assert math.isclose(lr_factor(54, "cosine", 4, 104), 0.5)
    assert lr_factor(104, "cosine", 4, 104) == 0.0
    assert math.isclose(lr_factor(29, "linear", 0, 30), 1 / 30)


@pytest.mark.parametrize("name", ["adamw", "lion", "prodigy"])
def test_each_optimizer_moves_weights_downhill(name):
    weight = torch.nn.Parameter(torch.tensor([2.0, -3.0]))
    lr = 1.0 if name == "prodigy" else 0.05
    optimizer = make_optimizer(
        [weight], TrainConfig(optimizer=name, learning_rate=lr, weight_decay=0.0), torch.device("cpu")
    )
    start = (weight**2).sum().item()
    for _ in range(20):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
    assert (weight**2).sum().item() < start


def test_8bit_adamw_needs_cuda():
    with pytest.raises(FacesmithError, match="adamw8bit needs a CUDA GPU"):
        make_optimizer(
            [torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="adamw8bit"), torch.device("cpu")
        )


def test_unet_and_text_encoder_learn_at_their_own_rates_under_one_schedule():
    from facesmith.train.optim import make_lr_schedule, param_groups

    named = [
        ("unet.a", torch.nn.Parameter(torch.zeros(1))),
        ("text_encoder.b", torch.nn.Parameter(torch.zeros(1))),
    ]
    config = TrainConfig(learning_rate=1e-3, unet_lr=1e-4, text_encoder_lr=5e-5, lr_warmup_steps=2)
    optimizer = make_optimizer(param_groups(named, config), config, torch.device("cpu"))
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("unet", 1e-4), ("text_encoder", 5e-5)]
    schedule = make_lr_schedule(optimizer, config, 10)
    assert schedule.get_last_lr() == pytest.approx([0.5e-4, 2.5e-5])  # warm-up scales both
    plain = param_groups(named, TrainConfig(learning_rate=1e-3))
    assert [g["lr"] for g in plain] == [1e-3, 1e-3]  # both default to learning_rate
