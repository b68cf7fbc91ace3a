"""The training state and its save/resume pair: what makes a resumed run continue bit for bit.

`TrainState` is what the loop carries from one optimizer step to the next (the batch stream, the caption
and noise generators, counters). `save_training` writes it with the trainable weights, their EMA, the
optimizer and the LR schedule through `checkpoint.save_checkpoint`; `resume_training` reads exactly that
back, after `check_resumable` (the settings that fix the weights' layout or the data order must be the
same, compared as typed `TrainConfig` values) and `check_weights` (every tensor's shape, dtype and
finiteness: `param.copy_` would broadcast a (1, 1, 1, 1) tensor over a whole layer). `mark_step` and
`rewind_to` undo a step that Ctrl-C cut before its update, so the checkpoint saved on interrupt is one a
resume continues exactly.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.models.loading import non_finite
from facesmith.train.checkpoint import load_checkpoint, save_checkpoint, way_out
from facesmith.train.config import TrainConfig
from facesmith.train.dataset import BatchStream

# Settings a checkpoint can only be resumed under unchanged: they decide the weights' layout or the data order.
RESUME_KEYS = (
    "model", "preset", "mode", "lora_rank", "lora_alpha", "lora_conv", "train_text_encoder", "seed",
    "batch_size", "gradient_accumulation", "resolution", "bucketing", "bucket_step", "min_bucket_side",
    "max_bucket_side", "flip", "ema_decay", "optimizer", "lora_type", "use_dora", "lokr_factor", "tokens",
    "num_vectors", "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_dims", "block_alphas",
)  # fmt: skip


@dataclass
class TrainState:
    """What the training loop carries from one optimizer step to the next, for one process.

    A checkpoint saves all of it and a resume restores all of it; with the weights, optimizer, LR schedule
    and EMA beside it, that is what makes a resumed run continue bit for bit.
    """

    data: BatchStream  # the epoch, the position in its batch order, this process's images since the last save
    captions: random.Random  # caption shuffle, tag dropout, caption dropout and attribute captions
    noise: torch.Generator  # noise, noise offset and timesteps (objective.sample_noise), on the CPU
    step: int = 0  # optimizer steps done
    started_at: float = field(default_factory=time.time)
    loss: float = math.nan  # of the last step that updated the weights
    bad_steps: int = 0  # steps skipped for a NaN/inf loss or gradient norm, over the whole run


def save_training(
    output_dir: Path,
    state: TrainState,
    config: TrainConfig,
    *,
    named: list[tuple[str, torch.Tensor]],
    optimizer,
    schedule,
    ema,
    rank: int = 0,
    world: int = 1,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Checkpoint `state` with the trainable weights, their EMA, the optimizer and the LR schedule at
    `state.step`; every process calls it. `resume_training` reads back exactly this."""
    rng = _rng_states(state)
    training = {
        "step": state.step,
        "epoch": state.data.epoch,
        "position": state.data.position,
        "started_at": state.started_at,
        "loss": state.loss,
        "bad_steps": state.bad_steps,
        "optimizer": optimizer.state_dict(),
        "lr_schedule": schedule.state_dict(),
        "ema_step": ema.optimization_step if ema is not None else 0,
    }
    params = [p for _, p in named]
    process = {
        "rank": rank,
        "processes": world,
        "weights_sha256": _digest(params),
        "images_seen": state.data.take_seen(),
    }
    return save_checkpoint(
        output_dir,
        state.step,
        config=config,
        trainable=dict(named),
        ema={n: s for (n, _), s in zip(named, ema.shadow_params, strict=True)} if ema is not None else None,
        training=training,
        rng=rng,
        process=process,
        rank=rank,
        is_main=is_main,
        barrier=barrier,
        keep=config.keep_checkpoints,
    )


def resume_training(
    path: Path,
    state: TrainState,
    config: TrainConfig,
    *,
    named: list[tuple[str, torch.Tensor]],
    optimizer,
    schedule,
    ema,
    rank: int = 0,
) -> None:
    """Restore what `save_training` wrote into `state`, the weights, the optimizer, the LR schedule and
    the EMA, after checking that the checkpoint was made under settings this run can continue."""
    saved = load_checkpoint(path, rank)
    check_resumable(path, saved, config, [n for n, _ in named])
    check_weights(path, saved, named, ema=ema is not None)
    with torch.no_grad():
        for name, param in named:
            param.copy_(saved["trainable"][name])
    training = saved["training"]
    optimizer.load_state_dict(training["optimizer"])
    schedule.load_state_dict(training["lr_schedule"])
    if ema is not None:
        for (name, _), shadow in zip(named, ema.shadow_params, strict=True):
            shadow.copy_(saved["ema"][name])
        ema.optimization_step = training["ema_step"]
    state.step, state.started_at = training["step"], training["started_at"]
    state.loss, state.bad_steps = training["loss"], training["bad_steps"]
    state.data.seek(training["epoch"], training["position"])
    _set_rng_states(state, saved["rng"])


def mark_step(state: TrainState) -> dict[str, Any]:
    """Where `state` stands now, at the end of a whole optimizer step, for `rewind_to`: what a
    checkpoint written at this moment would hold of it."""
    data = state.data
    return {
        "step": state.step,
        "bad_steps": state.bad_steps,
        "epoch": data.epoch,
        "position": data.position,
        "seen": len(data.seen),
        "rng": _rng_states(state),
    }


def rewind_to(state: TrainState, mark: dict[str, Any]) -> None:
    """Put `state` back at `mark` (from `mark_step` at the same step), undoing the batches and the random
    draws of a step that was interrupted before its update."""
    assert state.step == mark["step"], "the weights moved on since the mark"
    state.bad_steps = mark["bad_steps"]
    if (state.data.epoch, state.data.position) != (mark["epoch"], mark["position"]):
        state.data.seek(mark["epoch"], mark["position"])
    del state.data.seen[mark["seen"] :]
    _set_rng_states(state, mark["rng"])


def _rng_states(state: TrainState) -> dict[str, Any]:
    rng = {
        "captions": state.captions.getstate(),
        "noise": state.noise.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_states(state: TrainState, rng: dict[str, Any]) -> None:
    state.captions.setstate(_tuples(rng["captions"]))
    state.noise.set_state(rng["noise"])
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


def check_resumable(path: Path, saved: dict[str, Any], config: TrainConfig, names: list[str]) -> None:
    """FacesmithError unless `config` can continue the checkpoint `saved` (as `load_checkpoint` read it)."""
    made_with: TrainConfig = saved["config"]
    changed = [k for k in RESUME_KEYS if getattr(made_with, k) != getattr(config, k)]
    if changed:
        differences = ", ".join(f"{k} {getattr(made_with, k)} -> {getattr(config, k)}" for k in changed)
        raise FacesmithError(
            f"checkpoint {path} was made with other settings ({differences}): resume with the settings "
            f"it was made with ({path / 'train.toml'}), or start a new output_dir"
        )
    missing = sorted(set(names) - set(saved["trainable"]))
    if missing:
        raise FacesmithError(
            f"checkpoint {path} does not match this run ({len(missing)} trainable tensors missing, "
            f"e.g. {missing[0]}): resume with the settings in its train.toml"
        )
    if config.ema_decay > 0 and saved["ema"] is None:
        raise FacesmithError(f"checkpoint {path} has no EMA weights: resume with ema_decay = 0")


def check_weights(
    path: Path, saved: dict[str, Any], named: list[tuple[str, torch.Tensor]], *, ema: bool
) -> None:
    """FacesmithError unless every saved tensor has its parameter's shape and dtype and is finite, so that
    nothing is half restored: `param.copy_` would broadcast a (1, 1, 1, 1) tensor over a layer, or cast."""
    kinds = [("trainable", saved["trainable"])] + ([("ema", saved["ema"])] if ema else [])
    for kind, tensors in kinds:
        file = f"{kind}.safetensors"
        for name, param in named:
            tensor = tensors.get(name)
            if tensor is None:
                raise FacesmithError(f"checkpoint {path}: {file} has no {name}; {way_out(path)}")
            if tensor.shape != param.shape or tensor.dtype != param.dtype:
                raise FacesmithError(
                    f"checkpoint {path}: {file} holds {name} as {tuple(tensor.shape)} {tensor.dtype}, where "
                    f"this run has {tuple(param.shape)} {param.dtype}; {way_out(path)}"
                )
        bad = non_finite({name: tensors[name] for name, _ in named})
        if bad:
            raise FacesmithError(
                f"checkpoint {path}: {file} holds NaN or inf in {len(bad)} tensors (e.g. {bad[0]}); "
                f"{way_out(path)}"
            )


def _digest(params: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _tuples(value: Any) -> Any:
    """random.Random.setstate needs tuples; a checkpoint may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
