"""The `facesmith train` stage: TrainConfig -> a run folder with checkpoints, samples, logs and exports.

The loop is diffusers' `train_text_to_image.py` on Accelerate (mixed precision, DDP across processes,
TensorBoard through its trackers), with Kohya's training features from the other modules of this
package. What makes it resumable bit for bit: the batch order is a function of (seed, epoch), all noise
and caption randomness comes from two generators whose states are checkpointed, and a checkpoint is
only ever written after a whole optimizer step. The run folder:

    OUTPUT_DIR/train.toml             the settings that reproduce the run
    OUTPUT_DIR/checkpoints/step-N/    atomic checkpoints (checkpoint.py)
    OUTPUT_DIR/samples/step-N.png     labelled sample grids (sampling.py)
    OUTPUT_DIR/logs/                  TensorBoard: loss, lr, grad_norm, samples
    OUTPUT_DIR/lora.safetensors | model/ [+ model.safetensors]   exports (export.py)
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig, save_train_config

Progress = Callable[[int, int, dict[str, float]], None]

LIKELY_NAN_CAUSES = (
    "a learning rate too high for this optimizer, fp16 overflow (use mixed_precision bf16 or no), "
    "or a corrupt image; lower learning_rate or set max_grad_norm"
)
# Settings a checkpoint can only be resumed under unchanged: they decide the weights' layout or the data order.
RESUME_KEYS = (
    "model", "preset", "mode", "lora_rank", "lora_alpha", "lora_conv", "train_text_encoder", "seed",
    "batch_size", "gradient_accumulation", "resolution", "bucketing", "flip", "ema_decay", "optimizer",
)  # fmt: skip
OOM_ADVICE = (
    "out of GPU memory: lower batch_size (raise gradient_accumulation to keep the effective batch), "
    "resolution, or use mode lora, gradient_checkpointing = true, mixed_precision bf16, optimizer adamw8bit"
)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    exports: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)
    final_loss: float = math.nan
    bad_steps: int = 0


def run_train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train as `config` says; FacesmithError for anything a person has to fix, before the first step."""
    config.validate()
    if config.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from facesmith.train.launch import launch_processes

        return launch_processes(config)
    try:
        return _train(config, progress)
    except torch.cuda.OutOfMemoryError:
        raise FacesmithError(OOM_ADVICE) from None


def _mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision is not None:
        return config.mixed_precision
    if not config.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _train(config: TrainConfig, progress: Progress | None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    from facesmith.data.caption_ops import process_caption
    from facesmith.train import checkpoint as ckpt
    from facesmith.train.cache import LatentSource, TextStateCache, encode_text
    from facesmith.train.dataset import assign_buckets, epoch_batches, make_buckets, read_dataset
    from facesmith.train.model import build_model, check_fits
    from facesmith.train.objective import diffusion_loss, sample_noise, target_for
    from facesmith.train.optim import make_lr_schedule, make_optimizer

    out = Path(config.output_dir)
    precision = _mixed_precision(config)
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, a notebook) may use another precision. The distributed state itself is kept.
    AcceleratorState._reset_state()
    if config.compile:
        from facesmith.engines import configure_compile_cache

        configure_compile_cache()  # inductor's caches persist, so a resumed chunk compiles from cache
    if torch.cuda.is_available() and not config.cpu:
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=config.cpu,
        dynamo_backend="inductor" if config.compile else None,
        log_with="tensorboard" if config.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if config.compile and device.type != "cuda":
        raise FacesmithError(
            "compile = true trains on CUDA only: on a CPU, torch's inductor gave wrong UNet gradients "
            "(benchmarks/NOTES.md, 2026-11-25); set compile = false"
        )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_train_config(config, out / "train.toml")

    # -- data and model, checked against each other before anything trains
    images = read_dataset(config.dataset)
    model = build_model(config)
    pipe = model.pipe
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if config.bucketing:
        buckets = make_buckets(resolution, config.bucket_step, config.min_bucket_side, config.max_bucket_side)
        assigned = assign_buckets(images, buckets)
    else:
        assigned = {(resolution, resolution): list(range(len(images)))}
    sizes = {i: bucket for bucket, indices in assigned.items() for i in indices}
    check_fits(model, set(assigned))

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    pipe.vae.to(device, weight_dtype if config.cache_latents == "none" else torch.float32)
    pipe.unet.to(device)
    train_text = config.train_text_encoder
    pipe.text_encoder.to(device, torch.float32 if train_text else weight_dtype)
    latents_of = LatentSource(
        images,
        sizes,
        pipe.vae,
        mode=config.cache_latents,
        flip=config.flip,
        device=device,
        cache_dir=Path(config.cache_dir) if config.cache_dir else out / "cache",
    )
    # Whole-caption dropout alone keeps captions fixed: "" is one more caption to cache.
    varying = config.caption_shuffle or config.caption_tag_dropout > 0 or config.caption_from_attributes
    text_cache = None
    if config.cache_text_encoder and not train_text and not varying:
        text_cache = TextStateCache(pipe.tokenizer, pipe.text_encoder, device)

    # -- optimisation
    named = model.trainable()
    params = [p for _, p in named]
    global_batch = config.batch_size * world
    batches_per_epoch = len(epoch_batches(assigned, global_batch, config.seed, 0, config.flip))
    total = config.max_steps or 10**12
    if config.max_epochs:
        total = min(total, math.ceil(config.max_epochs * batches_per_epoch / config.gradient_accumulation))
    optimizer = make_optimizer(params, config, device)
    schedule = make_lr_schedule(optimizer, config, total)
    ema = None
    if config.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
    unet = accelerator.prepare(pipe.unet)
    text_encoder = accelerator.prepare(pipe.text_encoder) if train_text else pipe.text_encoder
    # The LR schedule stays unprepared: Accelerate would step it once per process.
    optimizer = accelerator.prepare(optimizer)

    caption_rng = random.Random(f"facesmith-captions-{config.seed}-{rank}")
    noise_gen = torch.Generator().manual_seed(config.seed * 1000 + rank)
    step, epoch, position, bad_streak, bad_total = 0, 0, 0, 0, 0
    started_at = time.time()

    resume_from = ckpt.resolve_resume(out, config.resume)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, rank)
        missing = sorted({n for n, _ in named} - set(state["trainable"]))
        if missing:
            raise FacesmithError(
                f"checkpoint {resume_from} does not match this run ({len(missing)} trainable tensors missing, "
                f"e.g. {missing[0]}): resume with the settings in its training.pt"
            )
        with torch.no_grad():
            for name, param in named:
                param.copy_(state["trainable"][name])
        training = state["training"]
        made_with = training.get("config", {})
        changed = [k for k in RESUME_KEYS if k in made_with and made_with[k] != str(getattr(config, k))]
        if changed:
            differences = ", ".join(f"{k} {made_with[k]} -> {getattr(config, k)}" for k in changed)
            raise FacesmithError(
                f"checkpoint {resume_from} was made with other settings ({differences}): resume with the "
                "settings of its run (OUTPUT_DIR/train.toml), or start a new output_dir"
            )
        optimizer.load_state_dict(training["optimizer"])
        schedule.load_state_dict(training["lr_schedule"])
        if ema is not None:
            if state["ema"] is None:
                raise FacesmithError(
                    f"checkpoint {resume_from} has no EMA weights: resume with ema_decay = 0"
                )
            for (name, _), shadow in zip(named, ema.shadow_params, strict=True):
                shadow.copy_(state["ema"][name])
            ema.optimization_step = training["ema_step"]
        step, epoch, position = training["step"], training["epoch"], training["position"]
        started_at = training["started_at"]
        rng = state["rng"]
        caption_rng.setstate(_tuples(rng["captions"]))
        noise_gen.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda" in rng:
            torch.cuda.set_rng_state_all(rng["cuda"])

    if config.tensorboard:
        accelerator.init_trackers("facesmith", config={k: str(v) for k, v in config.to_dict().items()})
    prompts = None
    if config.sample_prompts:
        from facesmith.train.sampling import read_prompt_file

        prompts = read_prompt_file(config.sample_prompts)

    batches = epoch_batches(assigned, global_batch, config.seed, epoch, config.flip)
    seen: list[int] = []  # image indices this process trained on since the last checkpoint

    def next_items():
        nonlocal epoch, position, batches
        if position >= len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(assigned, global_batch, config.seed, epoch, config.flip)
        batch = batches[position]
        position += 1
        mine = batch[rank * config.batch_size : (rank + 1) * config.batch_size]
        seen.extend(item.index for item in mine)
        return mine

    def caption_of(index: int) -> str:
        image = images[index]
        text = image.text
        if config.caption_from_attributes and image.attributes:
            from facesmith.data.captions import caption_from_attributes

            text = caption_from_attributes(image.attributes, caption_rng)
        return process_caption(
            text,
            caption_rng,
            dropout_rate=config.caption_dropout,
            tag_dropout_rate=config.caption_tag_dropout,
            shuffle=config.caption_shuffle,
            keep_tokens=config.keep_tokens,
        )

    def save(at: int) -> Path:
        rng = {
            "captions": caption_rng.getstate(),
            "noise": noise_gen.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        training = {
            "optimizer": optimizer.state_dict(),
            "lr_schedule": schedule.state_dict(),
            "ema_step": ema.optimization_step if ema is not None else 0,
            "step": at,
            "epoch": epoch,
            "position": position,
            "started_at": started_at,
            "config": {k: str(v) for k, v in config.to_dict().items()},
        }
        return ckpt.save_checkpoint(
            out,
            at,
            trainable={n: p for n, p in named},
            ema={n: s for (n, _), s in zip(named, ema.shadow_params, strict=True)}
            if ema is not None
            else None,
            training=training,
            rng=rng,
            process={
                "rank": rank,
                "processes": world,
                "weights_sha256": _digest(params),
                "images_seen": seen,
            },
            rank=rank,
            is_main=accelerator.is_main_process,
            barrier=accelerator.wait_for_everyone,
            keep=config.keep_checkpoints,
        )

    result = TrainResult(out, step)
    if resume_from is not None:
        result.checkpoint = resume_from
    last_loss = math.nan
    tick = time.time()
    while step < total:
        # -- one optimizer step over gradient_accumulation micro-batches
        micro_losses = []
        for micro in range(config.gradient_accumulation):
            items = next_items()
            latents = latents_of.latents(items)
            captions = [caption_of(i.index) for i in items]
            noise, timesteps = sample_noise(latents, noise_gen, model.noise_scheduler, config.noise_offset)
            noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
            target = target_for(model.noise_scheduler, latents, noise, timesteps)
            sync = micro == config.gradient_accumulation - 1
            with contextlib.ExitStack() as stack:
                if not sync:
                    stack.enter_context(accelerator.no_sync(unet))
                    if train_text:
                        stack.enter_context(accelerator.no_sync(text_encoder))
                with accelerator.autocast():
                    if text_cache is not None:
                        states = text_cache(captions)
                    elif train_text:
                        states = encode_text(pipe.tokenizer, text_encoder, captions, device)
                    else:
                        with torch.no_grad():
                            states = encode_text(pipe.tokenizer, text_encoder, captions, device)
                    prediction = unet(noisy, timesteps, states).sample
                loss = diffusion_loss(
                    prediction, target, timesteps, model.noise_scheduler, config.min_snr_gamma
                )
                accelerator.backward(loss / config.gradient_accumulation)
            micro_losses.append(loss.detach())
        loss_value = accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item()
        grad_norm = math.nan
        if math.isfinite(loss_value) and config.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
        finite = math.isfinite(loss_value) and (
            math.isfinite(grad_norm) or config.max_grad_norm == 0 or precision == "fp16"
        )
        if not finite:
            # NaN/inf guard: skip the update, keep the last good checkpoint, stop after a streak.
            optimizer.zero_grad(set_to_none=True)
            bad_streak += 1
            bad_total += 1
            accelerator.print(f"warning: step {step + 1}: loss {loss_value}, grad norm {grad_norm}; skipped")
            if config.tensorboard:
                accelerator.log({"skipped_steps": bad_total}, step=step)
            if bad_streak >= config.max_bad_steps:
                kept = ckpt.latest_checkpoint(out)
                raise FacesmithError(
                    f"the loss was NaN or inf for {bad_streak} steps in a row at step {step + 1}; "
                    f"likely causes: {LIKELY_NAN_CAUSES}. The last good checkpoint is "
                    f"{kept if kept else 'none (no checkpoint was saved yet)'}"
                )
            continue
        bad_streak = 0
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        step += 1
        last_loss = loss_value
        logs = {"loss": loss_value, "lr": schedule.get_last_lr()[0], "epoch": epoch}
        if math.isfinite(grad_norm):
            logs["grad_norm"] = grad_norm
        if config.tensorboard and (step % config.log_every == 0 or step == total):
            accelerator.log(logs, step=step)
        if step % config.save_every == 0 or step == total:
            result.checkpoint = save(step)
            seen.clear()
        if prompts and ((config.sample_every and step % config.sample_every == 0) or step == total):
            if accelerator.is_main_process:
                result.samples.append(
                    _sample(accelerator, pipe, prompts, config, resolution, device, step, out)
                )
            accelerator.wait_for_everyone()
        if progress is not None and accelerator.is_main_process:
            progress(step, total, {**logs, "it/s": 1 / max(1e-9, time.time() - tick)})
        tick = time.time()

    # -- export (EMA weights if EMA is on)
    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(params)
    if accelerator.is_main_process:
        from facesmith.train.export import export_full, export_kohya_lora

        pipe.unet = accelerator.unwrap_model(unet, keep_torch_compile=False)
        pipe.text_encoder = accelerator.unwrap_model(text_encoder, keep_torch_compile=False)
        info = {
            "resolution": resolution,
            "step": step,
            "epoch": epoch,
            "total_steps": total,
            "images": len(images),
            "mixed_precision": precision,
            "started_at": started_at,
        }
        if config.mode == "lora":
            result.exports = [export_kohya_lora(model, config, out / "lora.safetensors", info)]
        else:
            result.exports = export_full(model, config, out, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result.steps, result.final_loss, result.bad_steps = step, last_loss, bad_total
    return result


def _sample(
    accelerator, pipe, prompts, config: TrainConfig, resolution: int, device, step: int, out: Path
) -> Path:
    import numpy as np

    from facesmith.train.sampling import labelled_grid, sample_images

    unet = pipe.unet
    was_training = unet.training
    unet.eval()
    try:
        images = sample_images(pipe, prompts, config.sample_sampler, resolution, device)
    finally:
        unet.train(was_training)
    grid = labelled_grid(images, prompts)
    path = out / "samples" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    if config.tensorboard:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    return path


def _digest(params: list[torch.Tensor]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _tuples(value: Any) -> Any:
    """random.Random.setstate needs tuples; a checkpoint may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
