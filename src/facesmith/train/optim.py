"""Optimizers and learning-rate schedules by name, as Kohya's `--optimizer_type` and `--lr_scheduler`.

- adamw: torch.optim.AdamW (Loshchilov & Hutter 2019), its fused kernel on CUDA; adamw8bit: bitsandbytes' AdamW8bit (Dettmers et
  al. 2022), CUDA only; lion: lion-pytorch (Chen et al. 2023); prodigy: prodigyopt (Mishchenko & Defazio
  2023), whose learning rate is a multiplier of its own estimate (1.0 is its documented setting).
- Learning rates per part (Kohya's `--unet_lr/--text_encoder_lr`): `param_groups` puts the UNet's and the
  text encoder's trainable tensors in two optimizer param groups, each at its own rate (None: learning_rate);
  the schedule scales both by the same factor. Kohya's block lr weights (blocks.py) split the UNet's
  LoRA tensors into one group per weight.
- Schedules: linear warm-up over `lr_warmup_steps`, then constant, cosine to 0 or linear to 0 at
  `total_steps`, diffusers' `get_scheduler` shapes written as one LambdaLR so the state resumes exactly.
"""

from __future__ import annotations

import math

import torch

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


def param_groups(
    named: list[tuple[str, torch.nn.Parameter]],
    config: TrainConfig,
    lr_multipliers: dict[str, float] | None = None,
) -> list[dict]:
    """Optimizer param groups from `TrainModel.trainable()` names ("unet." / "text_encoder." prefixes):
    the UNet's at unet_lr, the text encoder's at text_encoder_lr, each defaulting to learning_rate.
    `lr_multipliers` ({UNet module: weight}, Kohya's block lr weights, blocks.py) split the UNet's tensors
    into one more group per weight, at the UNet's rate times it."""
    rates = {"unet": config.unet_lr, "text_encoder": config.text_encoder_lr}
    groups = []
    for part, rate in rates.items():
        params = [(name, p) for name, p in named if _part(name) == part]
        base = config.learning_rate if rate is None else rate
        weights = {name: _multiplier(name, lr_multipliers) for name, _ in params} if part == "unet" else {}
        for weight in [1.0, *sorted(set(weights.values()) - {1.0})]:  # the plain rate first: it is logged
            chosen = [p for name, p in params if weights.get(name, 1.0) == weight]
            if chosen:
                name = part if weight == 1.0 else f"{part}*{weight:g}"
                groups.append({"params": chosen, "lr": base * weight, "name": name})
    others = [p for name, p in named if _part(name) not in rates]
    if others:
        groups.append({"params": others, "lr": config.learning_rate, "name": "other"})
    return groups


def _multiplier(name: str, lr_multipliers: dict[str, float] | None) -> float:
    """The block lr weight of a UNet tensor ("unet.<module>.lora_A.default.weight" and the like)."""
    if not lr_multipliers:
        return 1.0
    module = name.removeprefix("unet.")
    for marker in (".lora_", ".hada_", ".lokr_"):
        module = module.split(marker, 1)[0]
    return lr_multipliers.get(module, 1.0)


def _part(name: str) -> str:
    """The model part a trainable tensor belongs to; SDXL's text_encoder_2 learns at the text encoder's
    rate, as Kohya's single --text_encoder_lr sets both."""
    part = name.split(".", 1)[0]
    return "text_encoder" if part == "text_encoder_2" else part


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], config: TrainConfig, device: torch.device):
    """The optimizer `config.optimizer` names over `params` (tensors, or `param_groups`)."""
    betas = (config.adam_beta1, config.adam_beta2)
    lr, decay = config.learning_rate, config.weight_decay
    if config.optimizer == "adamw":
        # The fused CUDA kernel updates every tensor in one launch instead of a dozen per tensor.
        return torch.optim.AdamW(
            params,
            lr=lr,
            betas=betas,
            eps=config.adam_epsilon,
            weight_decay=decay,
            fused=device.type == "cuda",
        )
    if config.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise FacesmithError(
                "optimizer adamw8bit needs a CUDA GPU (bitsandbytes): use adamw on this machine"
            )
        try:
            import bitsandbytes
        except ImportError:
            raise FacesmithError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bitsandbytes.optim.AdamW8bit(
            params, lr=lr, betas=betas, eps=config.adam_epsilon, weight_decay=decay
        )
    if config.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=lr, betas=betas, weight_decay=decay)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=lr, betas=betas, weight_decay=decay)
    raise FacesmithError(f"unknown optimizer {config.optimizer!r}")


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "linear":
        return max(0.0, 1 - progress)
    return 1.0


def make_lr_schedule(optimizer, config: TrainConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.lr_scheduler, config.lr_warmup_steps, total_steps)
    )
