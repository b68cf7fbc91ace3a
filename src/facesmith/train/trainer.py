"""The `facesmith train` stage: TrainConfig -> a run folder with checkpoints, samples, logs and exports.

The loop is diffusers' `train_text_to_image.py` on Accelerate (mixed precision, DDP across processes,
TensorBoard through its trackers), with Kohya's training features from the other modules of this
package, laid out in sections as NVlabs/edm's `training_loop.py` is. What makes it resumable bit for bit:
the batch order is a function of (seed, epoch), all noise and caption randomness comes from two
generators in the checkpointed `TrainState`, and a checkpoint is only ever written after a whole
optimizer step. Ctrl-C (KeyboardInterrupt) rewinds the run to the end of its last whole step, saves a
checkpoint there, as Kohya's scripts save on interrupt, and stops with `launch.TrainingInterrupted`, which says
how to resume. Phases report through `progress`: "caching latents", "encoding captions", "training" and
"sampling". The run folder, which `read_result` reads back whether the run was in this process or in
`--num-processes` launched ones:

    OUTPUT_DIR/train.toml             the settings that reproduce the run
    OUTPUT_DIR/checkpoints/step-N/    atomic checkpoints (checkpoint.py) of the TrainState (state.py)
    OUTPUT_DIR/samples/step-N.png     labelled sample grids (sampling.py)
    OUTPUT_DIR/logs/                  TensorBoard: loss, lr, grad_norm, samples
    OUTPUT_DIR/NAME.safetensors | model/ [+ model.safetensors]   exports (export.py; NAME: the folder's)
    OUTPUT_DIR/NAME-step00000600.safetensors | NAME-step00000600/   the same at each earlier save
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.progress import Progress
from facesmith.runtime import DTYPES
from facesmith.train.config import TrainConfig
from facesmith.train.launch import TrainingInterrupted, interrupted_message, launch_processes
from facesmith.train.process import interrupts_deferred, make_accelerator

LIKELY_NAN_CAUSES = (
    "a learning rate too high for this optimizer, fp16 overflow (use mixed_precision bf16 or no), "
    "or a corrupt image; lower learning_rate or set max_grad_norm"
)
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
    config = config.validate().resolved()
    if config.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        launch_processes(config)
    else:
        try:
            _train(config, progress)
        except torch.cuda.OutOfMemoryError:
            raise FacesmithError(OOM_ADVICE) from None
    return read_result(Path(config.output_dir))


def read_result(output_dir: Path) -> TrainResult:
    """What a run left in its folder: the newest checkpoint's counters, the exports and the sample grids."""
    from facesmith.train.checkpoint import latest_checkpoint, saved_counters

    last = latest_checkpoint(output_dir)
    counters = saved_counters(last) if last else {"step": 0, "loss": math.nan, "bad_steps": 0}
    from facesmith.train.export import run_name

    exports = (f"{run_name(output_dir)}.safetensors", "model", "model.safetensors")
    return TrainResult(
        output_dir,
        counters["step"],
        exports=[output_dir / name for name in exports if (output_dir / name).exists()],
        checkpoint=last,
        samples=sorted((output_dir / "samples").glob("step-*.png")),
        final_loss=counters["loss"],
        bad_steps=counters["bad_steps"],
    )


def _train(config: TrainConfig, progress: Progress | None) -> None:
    from facesmith.generate import PromptTruncatedWarning
    from facesmith.train import checkpoint as ckpt
    from facesmith.train.cache import LatentSource, TextStateCache, encode_text, overlong_captions
    from facesmith.train.dataset import (
        BatchStream,
        TrainingWarning,
        bucketed_images,
        held_out_note,
        read_dataset,
        training_caption,
    )
    from facesmith.train.export import export_info, export_run
    from facesmith.train.model import build_model, check_fits
    from facesmith.train.objective import diffusion_loss, sample_noise, target_for
    from facesmith.train.optim import make_lr_schedule, make_optimizer
    from facesmith.train.sampling import sample_grid
    from facesmith.train.state import TrainState, mark_step, resume_training, rewind_to, save_training
    from facesmith.train.watch import PlainProgress, RunningLoss

    # -- Initialize: Accelerate and the run folder.
    out = Path(config.output_dir)
    accelerator, precision = make_accelerator(config, out)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "train.toml")
    # Only the main process reports; the others do the same work in step with it.
    report = progress if progress is not None and accelerator.is_main_process else _silent

    # -- Load the dataset and the model, checked against each other before anything trains.
    images = read_dataset(config.dataset)
    if config.mode == "embedding":  # issue 16: textual inversion's captions carry its tokens (embedding.py)
        from facesmith.train.embedding import token_captions, widened

        images = token_captions(images, config)
    note = held_out_note(config.dataset)
    if note and accelerator.is_main_process:
        warnings.warn(note, TrainingWarning, stacklevel=2)
    model = build_model(config)
    pipe = model.pipe
    if accelerator.is_main_process:  # which model this was, also when `model` is unset (the default one)
        with open(out / "train.toml", "a", encoding="utf-8") as toml:
            toml.write(f"# base model: {model.base_name}, family {model.family}, sha256 {model.base_hash}\n")
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    assigned = bucketed_images(images, config, resolution)
    check_fits(model, set(assigned), config.max_token_length)
    long_length = config.max_token_length if config.max_token_length != 75 else None
    overlong = overlong_captions(pipe.tokenizer, {image.text for image in images}, long_length)
    if overlong and accelerator.is_main_process:
        limit = long_length or pipe.tokenizer.model_max_length - 2
        hint = (
            "; max_token_length = 150 or 225 reads more (CLIP)"
            if long_length != 225 and _is_clip(pipe)
            else ""
        )
        warnings.warn(
            f"{len(overlong)} of {len({image.text for image in images})} captions are longer than the "
            f"{limit} tokens the text encoder reads and are cut there, so their ends train as nothing "
            f"(e.g. {overlong[0][:60]!r}...){hint}",
            PromptTruncatedWarning,
            stacklevel=2,
        )
    weight_dtype = DTYPES.get(precision, torch.float32)  # Accelerate's "no" is fp32
    pipe.vae.to(device, weight_dtype if config.cache_latents == "none" else torch.float32)
    pipe.unet.to(device)
    train_text = config.train_text_encoder or config.mode == "embedding"  # TI's tokens learn through it
    pipe.text_encoder.to(device, torch.float32 if train_text else weight_dtype)
    latents_of = LatentSource(
        images,
        {i: bucket for bucket, indices in assigned.items() for i in indices},
        pipe.vae,
        mode=config.cache_latents,
        flip=config.flip,
        device=device,
        cache_dir=Path(config.cache_dir) if config.cache_dir else out / "cache",
        progress=lambda done, count: report("caching latents", done, count),
    )
    # Whole-caption dropout alone keeps captions fixed: "" is one more caption to cache.
    varying = config.caption_shuffle or config.caption_tag_dropout > 0 or config.caption_from_attributes
    text_cache = None
    if config.cache_text_encoder and not train_text and not varying:
        text_cache = TextStateCache(pipe.tokenizer, pipe.text_encoder, device, long_length)
        captions = {image.text for image in images} | ({""} if config.caption_dropout > 0 else set())
        with accelerator.autocast():  # as the training step encodes them
            text_cache.fill(captions, progress=lambda done, count: report("encoding captions", done, count))

    # -- Set up the optimisation and the training state.
    named = model.trainable()
    params = [p for _, p in named]
    state = TrainState(
        data=BatchStream(
            assigned,
            batch_size=config.batch_size,
            rank=rank,
            processes=world,
            seed=config.seed,
            flip=config.flip,
        ),
        captions=random.Random(f"facesmith-captions-{config.seed}-{rank}"),
        noise=torch.Generator().manual_seed(config.seed * 1000 + rank),
    )
    total = config.max_steps or 10**12
    if config.max_epochs:
        epoch_steps = config.max_epochs * state.data.batches_per_epoch / config.gradient_accumulation
        total = min(total, math.ceil(epoch_steps))
    running = RunningLoss(state.data.batches_per_epoch // config.gradient_accumulation)
    plain = PlainProgress(total, config.log_every)
    plain.enabled = plain.enabled and accelerator.is_main_process and progress is not None
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
    learning = dict(named=named, optimizer=optimizer, schedule=schedule, ema=ema)

    # -- Resume from a checkpoint.
    resume_from = ckpt.resolve_resume(out, config.resume)
    if resume_from is not None:
        resume_training(resume_from, state, config, **learning, rank=rank)
    if config.tensorboard:
        accelerator.init_trackers("facesmith", config={k: str(v) for k, v in config.to_dict().items()})
    prompts = None
    if config.sample_prompts:
        from facesmith.train.sampling import read_prompt_file

        prompts = read_prompt_file(config.sample_prompts)

    # -- A grid before the first step, to compare the later ones with (Kohya's --sample_at_first).
    if prompts and config.sample_at_first and state.step == 0:
        if accelerator.is_main_process:
            plain.say(f"step 0: sampling {len(prompts)} images")
            sample_grid(accelerator, model, prompts, config, resolution, device, 0, out, report)
        accelerator.wait_for_everyone()

    # -- Train.
    scheduler = model.noise_scheduler
    bad_streak = 0
    tick = time.time()
    whole = mark_step(state)  # the end of the last whole optimizer step
    try:
        while state.step < total:
            # Accumulate gradients over gradient_accumulation micro-batches; DDP syncs only on the last.
            micro_losses = []
            for micro in range(config.gradient_accumulation):
                items = next(state.data)
                latents = latents_of.latents(items)
                captions = [training_caption(images[i.index], config, state.captions) for i in items]
                if config.mode == "embedding":  # each token widened to its vectors, as generate does
                    captions = widened(captions, pipe)
                noise, timesteps = sample_noise(latents, state.noise, scheduler, config.noise_offset)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                target = target_for(scheduler, latents, noise, timesteps)
                with contextlib.ExitStack() as stack:
                    if micro < config.gradient_accumulation - 1:
                        stack.enter_context(accelerator.no_sync(unet))
                        if train_text:
                            stack.enter_context(accelerator.no_sync(text_encoder))
                    with accelerator.autocast():
                        if text_cache is not None:
                            states = text_cache(captions)
                        elif train_text:
                            states = encode_text(pipe.tokenizer, text_encoder, captions, device, long_length)
                        else:
                            with torch.no_grad():
                                states = encode_text(
                                    pipe.tokenizer, text_encoder, captions, device, long_length
                                )
                        prediction = unet(noisy, timesteps, states).sample
                    loss = diffusion_loss(prediction, target, timesteps, scheduler, config.min_snr_gamma)
                    accelerator.backward(loss / config.gradient_accumulation)
                micro_losses.append(loss.detach())
            loss_value = accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item()

            # Skip a step whose loss or gradient norm is NaN/inf; stop after max_bad_steps in a row.
            grad_norm = math.nan
            if math.isfinite(loss_value) and config.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            # Under fp16 Accelerate trains through torch's GradScaler, which raises the loss scale until the
            # scaled gradients overflow: the norm of that step is inf, and `optimizer.step()` (GradScaler.step)
            # skips the update by itself and lowers the scale. That is the scaler's normal probing, not a
            # diverged run, so only a non-finite loss counts as a bad step there.
            finite = math.isfinite(loss_value) and (
                math.isfinite(grad_norm) or config.max_grad_norm == 0 or precision == "fp16"
            )
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                bad_streak += 1
                state.bad_steps += 1
                accelerator.print(
                    f"warning: step {state.step + 1}: loss {loss_value}, grad norm {grad_norm}; skipped"
                )
                if config.tensorboard:
                    accelerator.log({"skipped_steps": state.bad_steps}, step=state.step)
                if bad_streak >= config.max_bad_steps:
                    kept = ckpt.good_checkpoint(out)
                    raise FacesmithError(
                        f"the loss was NaN or inf for {bad_streak} steps in a row at step {state.step + 1}; "
                        f"likely causes: {LIKELY_NAN_CAUSES}. The last good checkpoint is "
                        f"{kept if kept else 'none (no checkpoint was saved yet)'}"
                    )
                continue
            bad_streak = 0

            # Update the weights and the EMA, as one step that Ctrl-C cannot cut in two.
            with interrupts_deferred():
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(params)
                state.step += 1
                state.loss = loss_value
                whole = mark_step(state)

            # Log, checkpoint, report, sample.
            step = state.step
            average = running.add(loss_value)
            lr = schedule.get_last_lr()[0]
            logs = {"loss": loss_value, "avr_loss": average, "lr": lr, "epoch": state.data.epoch}
            if math.isfinite(grad_norm):
                logs["grad_norm"] = grad_norm
            if config.tensorboard:  # every step's loss and the average (Kohya's loss/current, loss/average)
                accelerator.log(logs, step=step)
            if step % config.save_every == 0 or step == total:
                save_training(
                    out,
                    state,
                    config,
                    **learning,
                    rank=rank,
                    world=world,
                    is_main=accelerator.is_main_process,
                    barrier=accelerator.wait_for_everyone,
                )
                # Beside each checkpoint, a LoRA or model that --lora / --model take, named by its step
                # (the last step's is the run's own export, below).
                if step < total and accelerator.is_main_process:
                    plain.say(f"step {step}: exporting {config.mode} of this step")
                    export_run(model, config, out, export_info(state, total, images, resolution, precision),
                            params=params, ema=ema, step=step)  # fmt: skip
                accelerator.wait_for_everyone()
            # The bar's loss is the running average; the step's own is beside it.
            shown = dict(logs, loss=average, step_loss=loss_value)
            report("training", step, total, **shown, steps_per_s=1 / max(1e-9, time.time() - tick))
            plain.step(step, average, lr)
            if prompts and ((config.sample_every and step % config.sample_every == 0) or step == total):
                if accelerator.is_main_process:
                    plain.say(f"step {step}: sampling {len(prompts)} images")
                    sample_grid(accelerator, model, prompts, config, resolution, device, step, out, report)
                accelerator.wait_for_everyone()
            tick = time.time()  # the rate is of training steps: sampling has its own stage
    except KeyboardInterrupt:
        rewind_to(state, whole)
        saved = ckpt.checkpoint_dir(out, state.step)
        # Several processes would have to agree on one step to save together; they keep the last save.
        if world == 1 and state.step > 0 and not saved.is_dir():
            save_training(out, state, config, **learning)
        if world > 1:  # the launching process says where the run stands, once (launch.py)
            raise
        raise TrainingInterrupted(interrupted_message(out)) from None

    # -- Export (the EMA weights when EMA is on).
    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(params)
    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(unet, keep_torch_compile=False)
        pipe.text_encoder = accelerator.unwrap_model(text_encoder, keep_torch_compile=False)
        export_run(model, config, out, export_info(state, total, images, resolution, precision))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _is_clip(pipe) -> bool:
    return type(pipe.text_encoder).__name__ == "CLIPTextModel"


def _silent(stage: str, done: int, total: int | None, **fields: float) -> None:
    pass
