"""The `facesmith train` stage: TrainConfig -> a run folder with checkpoints, samples, logs and exports.

The loop is diffusers' `train_text_to_image.py` on Accelerate (mixed precision, DDP across processes,
TensorBoard through its trackers), with Kohya's training features from the other modules of this
package, laid out in sections as NVlabs/edm's `training_loop.py` is. What makes it resumable bit for bit:
the batch order is a function of (seed, epoch), all noise and caption randomness comes from two
generators in the checkpointed `TrainState`, and a checkpoint is only ever written after a whole
optimizer step. Ctrl-C (KeyboardInterrupt) rewinds the run to the end of its last whole step, saves a
checkpoint there, as Kohya's scripts save on interrupt, and stops with `launch.TrainingInterrupted`, which says
how to resume. Phases report through `progress`: "generating class images", "caching latents", "building
masks", "encoding captions", "training", "validating" and "sampling". Issue 16's options (validation loss,
masked loss, prior preservation, per-part learning rates, noise and loss options) keep all their randomness
in the same two generators, or in their own seeded one (validation), so resumes stay bit for bit. The run folder, which `result.read_result` reads back whether the run was in this process or in
`--num-processes` launched ones:

    OUTPUT_DIR/train.toml             the settings that reproduce the run
    OUTPUT_DIR/checkpoints/step-N/    atomic checkpoints (checkpoint.py) of the TrainState (state.py)
    OUTPUT_DIR/samples/step-N.png     labelled sample grids (sampling.py)
    OUTPUT_DIR/logs/                  TensorBoard: loss, lr, grad_norm, val_loss, samples
    OUTPUT_DIR/validation.csv | .json the validation loss by step and the best step (validation.py), and
                                      the validation prompt set's faithfulness (validation_prompts.py)
    OUTPUT_DIR/class_images/          class images generated for prior preservation (prior.py)
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
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.progress import Progress
from facesmith.runtime import DTYPES
from facesmith.train.config import TrainConfig
from facesmith.train.launch import TrainingInterrupted, interrupted_message, launch_processes
from facesmith.train.process import interrupts_deferred, make_accelerator
from facesmith.train.result import TrainResult, read_result

LIKELY_NAN_CAUSES = (
    "a learning rate too high for this optimizer, fp16 overflow (use mixed_precision bf16 or no), "
    "or a corrupt image; lower learning_rate or set max_grad_norm"
)
OOM_ADVICE = (
    "out of GPU memory: lower batch_size (raise gradient_accumulation to keep the effective batch), "
    "resolution, or use mode lora, gradient_checkpointing = true, mixed_precision bf16, optimizer adamw8bit"
)


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


def _train(config: TrainConfig, progress: Progress | None) -> None:
    from facesmith.train import checkpoint as ckpt
    from facesmith.train.cache import LatentSource, warn_overlong_captions
    from facesmith.train.conditioning import Conditioner
    from facesmith.train.dataset import (
        BatchStream,
        TrainingWarning,
        bucketed_images,
        held_out_note,
        read_dataset,
        training_caption,
    )
    from facesmith.train.export import export_info, export_run
    from facesmith.train.masks import loss_masks_for
    from facesmith.train.model import build_model, check_fits
    from facesmith.train.objective import (
        batch_loss,
        noise_options,
        sample_as_trained,
        sample_noise,
        target_for,
        training_scheduler,
    )
    from facesmith.train.optim import make_lr_schedule, make_optimizer, param_groups
    from facesmith.train.prior import PriorBatches, class_images_for
    from facesmith.train.sampling import sample_grid
    from facesmith.train.state import TrainState, mark_step, resume_training, rewind_to, save_training
    from facesmith.train.validation import Validation, ValidationLoss, held_out_images
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
    if note and accelerator.is_main_process and not config.validate_every:
        warnings.warn(note, TrainingWarning, stacklevel=2)
    held_out = held_out_images(config.dataset, config.validate_every) if config.validate_every else []
    # peft draws LoRA's lora_A init from torch's global generator: seeded, so that a run is a function of
    # its seed (two runs, or a straight and a resumed one, start from the same LoRA), as diffusers' set_seed.
    torch.manual_seed(config.seed)
    model = build_model(config)
    pipe = model.pipe
    if accelerator.is_main_process:  # which model this was, also when `model` is unset (the default one)
        with open(out / "train.toml", "a", encoding="utf-8") as toml:
            toml.write(f"# base model: {model.base_name}, family {model.family}, sha256 {model.base_hash}\n")
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    assigned = bucketed_images(images, config, resolution)
    class_images = class_images_for(config, accelerator, model, out, resolution, device, report)
    sample_as_trained(pipe, config)  # after the base model's class images: those sample as it does
    class_assigned = bucketed_images(class_images, config, resolution) if class_images else {}
    held_assigned = bucketed_images(held_out, config, resolution) if held_out else {}
    check_fits(model, set(assigned) | set(class_assigned) | set(held_assigned), config.max_token_length)
    long_length = config.max_token_length if config.max_token_length != 75 else None
    if accelerator.is_main_process:
        warn_overlong_captions(pipe, {image.text for image in images + class_images}, long_length)
    weight_dtype = DTYPES.get(precision, torch.float32)  # Accelerate's "no" is fp32
    pipe.vae.to(device, weight_dtype if config.cache_latents == "none" else torch.float32)
    pipe.unet.to(device)
    train_text = config.train_text_encoder or config.mode == "embedding"  # TI's tokens learn through it
    conditioner = Conditioner(pipe, device, train_text=train_text, long_length=long_length)
    conditioner.to(weight_dtype)
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"

    def latent_source(pictures, buckets, flip: bool) -> LatentSource:
        sizes = {i: bucket for bucket, indices in buckets.items() for i in indices}
        return LatentSource(pictures, sizes, pipe.vae, mode=config.cache_latents, flip=flip, device=device,
                            cache_dir=cache_dir, progress=lambda done, count: report("caching latents", done, count))  # fmt: skip

    latents_of = latent_source(images, assigned, config.flip)
    loss_masks = loss_masks_for(config, images, assigned, pipe.vae_scale_factor, device, cache_dir, report)
    # Whole-caption dropout alone keeps captions fixed: "" is one more caption to cache.
    varying = config.caption_shuffle or config.caption_tag_dropout > 0 or config.caption_from_attributes
    if config.cache_text_encoder and not train_text and not varying:
        captions = {image.text for image in images + class_images + held_out}
        captions |= {""} if config.caption_dropout > 0 else set()
        with accelerator.autocast():  # as the training step encodes them
            conditioner.fill_cache(captions, progress=lambda done, count: report("encoding captions", done, count))  # fmt: skip

    # -- Set up the optimisation and the training state.
    named = model.trainable()
    params = [p for _, p in named]
    scheduler = training_scheduler(model.noise_scheduler, config)
    validator = None
    if held_out:
        source = latent_source(held_out, held_assigned, False)
        validator = ValidationLoss.of_images(held_out, source, scheduler, config.validation_seed)
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
    optimizer = make_optimizer(param_groups(named, config, model.lr_multipliers), config, device)
    schedule = make_lr_schedule(optimizer, config, total)
    ema = None
    if config.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
    unet = accelerator.prepare(pipe.unet)
    conditioner.prepare(accelerator)
    # The LR schedule stays unprepared: Accelerate would step it once per process.
    optimizer = accelerator.prepare(optimizer)
    learning = dict(named=named, optimizer=optimizer, schedule=schedule, ema=ema)

    # -- Resume from a checkpoint.
    resume_from = ckpt.resolve_resume(out, config.resume)
    if resume_from is not None:
        resume_training(resume_from, state, config, **learning, rank=rank)
    if config.tensorboard:
        accelerator.init_trackers("facesmith", config={k: str(v) for k, v in config.to_dict().items()})
    validation = prompt_check = None
    scalars = accelerator.log if config.tensorboard else None
    if validator is not None and accelerator.is_main_process:
        validation = Validation.open(validator, out, state.step, config.validation_seed, report, plain.say, scalars)  # fmt: skip
    if config.validation_prompts and accelerator.is_main_process:  # the prompt set (validation_prompts.py)
        from facesmith.train.validation_prompts import PromptValidation

        prompt_check = PromptValidation.open(config, out, state.step, report, plain.say, scalars)
    prior = None
    if class_images:
        prior = PriorBatches(class_assigned, batch_size=config.batch_size, rank=rank, processes=world,
                             seed=config.seed, flip=config.flip, images=class_images,
                             latents=latent_source(class_images, class_assigned, config.flip))  # fmt: skip
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
    noise_args = noise_options(config)

    def validate(step: int) -> None:
        if validation is not None:
            states = conditioner.frozen(accelerator)
            validation.at(step, accelerator.unwrap_model(unet), states, accelerator.autocast)
        accelerator.wait_for_everyone()

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
                offset = config.noise_offset
                noise, timesteps = sample_noise(latents, state.noise, scheduler, offset, **noise_args)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                target = target_for(scheduler, latents, noise, timesteps)
                mask = loss_masks(items) if loss_masks is not None else None
                reg = None
                if (
                    prior is not None
                ):  # the class batch beside it (DreamBooth); its index is fixed by the step
                    k = (state.step + state.bad_steps) * config.gradient_accumulation + micro
                    reg = prior.noised(k, state.noise, scheduler, offset, noise_args)
                with contextlib.ExitStack() as stack:
                    if micro < config.gradient_accumulation - 1:
                        stack.enter_context(accelerator.no_sync(unet))
                        conditioner.no_sync(accelerator, stack)
                    loss = batch_loss(unet, conditioner, accelerator.autocast, scheduler, config, noisy,
                                      timesteps, target, captions, mask=mask, reg=reg,
                                      time_ids=latents_of.time_ids(items))  # fmt: skip
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
            rates = schedule.get_last_lr()
            lr = rates[0]
            logs = {"loss": loss_value, "avr_loss": average, "lr": lr, "epoch": state.data.epoch}
            # Kohya's lr/unet and lr/textencoder when the two parts train at their own rates.
            names = [group.get("name", "") for group in optimizer.param_groups]
            if "text_encoder" in names:
                logs["lr/text_encoder"] = rates[names.index("text_encoder")]
            if math.isfinite(grad_norm):
                logs["grad_norm"] = grad_norm
            if config.tensorboard:  # every step's loss and the average (Kohya's loss/current, loss/average)
                accelerator.log(logs, step=step)
            if validator is not None and (step % config.validate_every == 0 or step == total):
                validate(step)
            every = config.validation_prompt_every
            if config.validation_prompts and ((every and step % every == 0) or step == total):
                if prompt_check is not None:
                    prompt_check.at(step, model, config, resolution, device)
                accelerator.wait_for_everyone()
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

    # -- Name the best validation step, then export (the EMA weights when EMA is on).
    accelerator.wait_for_everyone()
    if validation is not None:
        validation.name_best()
    if ema is not None:
        ema.copy_to(params)
    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(unet, keep_torch_compile=False)
        conditioner.unwrap_into(accelerator)
        export_run(model, config, out, export_info(state, total, images, resolution, precision))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _silent(stage: str, done: int, total: int | None, **fields: float) -> None:
    pass
