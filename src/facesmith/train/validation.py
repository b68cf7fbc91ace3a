"""The validation loss: the denoising loss on the dataset's held-out rows, comparable from step to step.

Kohya's sd-scripts (`train_network.py`, `--validation_split`, `--validate_every_n_steps`) scores held-out
images at a fixed list of timesteps, [10, 350, 500, 650, 990] of 1000, with noise from a fixed seed, so
that two steps differ only by the weights. This module does the same on the rows with split "val"
(`facesmith prepare --val-fraction`): each image is noised at every one of those timesteps (scaled to
the scheduler's `num_train_timesteps`) with noise drawn once, ahead of training, from its own generator
seeded by `validation_seed`, and the loss is the plain mean squared error against the model's target
(epsilon or v), with no min-SNR weight, mask or Huber: the figure means the same under any training
loss. The pass runs in eval mode under `torch.no_grad` inside `torch.random.fork_rng`, so the training
generators and torch's global RNG state (which a checkpoint saves) are untouched and a resumed run
stays bit for bit. Images, captions and latents come from `dataset.py` and `cache.py`.

The run folder gets `validation.csv` (step, val_loss: one row per validation, rows past a resumed
checkpoint dropped) and `validation.json` (the losses, the timesteps, the seed and the best step), which
`facesmith train` names at the end so a user can pick that step's checkpoint or export; the validation
prompt set's scores (validation_prompts.py) are written into the same `validation.json`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.train.conditioning import denoise
from facesmith.train.objective import target_for

KOHYA_VALIDATION_TIMESTEPS = (10, 350, 500, 650, 990)  # of 1000 (sd-scripts train_network.py)
CSV_NAME, JSON_NAME = "validation.csv", "validation.json"


def validation_timesteps(num_train_timesteps: int) -> list[int]:
    """Kohya's fixed timesteps scaled to a schedule of `num_train_timesteps`."""
    return [
        min(num_train_timesteps - 1, round(t * num_train_timesteps / 1000))
        for t in KOHYA_VALIDATION_TIMESTEPS
    ]


def held_out_images(dataset: str, validate_every: int) -> list:
    """The dataset's split "val" images for the validation loss; FacesmithError when there are none."""
    from facesmith.train.dataset import read_dataset

    try:
        return read_dataset(dataset, split="val")
    except FacesmithError:
        raise FacesmithError(
            f"validate_every {validate_every} needs held-out images, and dataset {dataset} has no rows "
            "with split val: prepare it with --val-fraction 0.05 (or so), or set validate_every = 0"
        ) from None


class ValidationLoss:
    """The validation loss of the model under training, on fixed noise and timesteps."""

    @classmethod
    def of_images(cls, images: list, source, noise_scheduler, seed: int) -> ValidationLoss:
        """From the held-out `images` and their (unflipped) `cache.LatentSource`."""
        from facesmith.train.dataset import BatchItem

        items = [BatchItem(i, False) for i in range(len(images))]
        latents = [source.latents([item])[0] for item in items]
        time_ids = [source.time_ids([item]) for item in items]
        return cls(latents, [image.text for image in images], noise_scheduler, seed, time_ids)

    def __init__(
        self, latents: list[torch.Tensor], captions: list[str], noise_scheduler, seed: int, time_ids=None
    ) -> None:
        """`latents`: one [C, h, w] latent per held-out image; `captions`: their captions; `time_ids`:
        their [1, 6] SDXL size and crop conditioning (unused by other models)."""
        self.latents, self.captions, self.scheduler = latents, captions, noise_scheduler
        self.time_ids = time_ids or [None] * len(latents)
        self.timesteps = torch.tensor(validation_timesteps(noise_scheduler.config.num_train_timesteps))
        generator = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn((len(self.timesteps), *x.shape), generator=generator) for x in latents]

    @torch.no_grad()
    def __call__(self, unet, text_states, autocast) -> float:
        """The mean loss over every held-out image and timestep; `text_states(captions)` encodes captions,
        `autocast()` is the training step's autocast context."""
        losses = []
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        was_training = unet.training
        unet.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                rows = zip(self.latents, self.captions, self.noise, self.time_ids, strict=True)
                for latent, caption, noise, ids in rows:
                    count = len(self.timesteps)
                    x0 = latent.unsqueeze(0).expand(count, *latent.shape)
                    noise = noise.to(x0.device, x0.dtype)
                    t = self.timesteps.to(x0.device)
                    noisy = self.scheduler.add_noise(x0, noise, t)
                    target = target_for(self.scheduler, x0, noise, t)
                    with autocast():
                        states = text_states([caption] * count)
                        ids = None if ids is None else ids.expand(count, -1)
                        prediction = denoise(unet, noisy, t, states, ids)
                    losses.append(torch.nn.functional.mse_loss(prediction.float(), target.float()).item())
        finally:
            unet.train(was_training)
        return sum(losses) / len(losses)


class ValidationLog:
    """`validation.csv` and `validation.json` of a run folder; a resumed run keeps the rows up to its step."""

    def __init__(self, out: Path, resumed_at: int, timesteps: list[int], seed: int, images: int) -> None:
        self.csv, self.json = out / CSV_NAME, out / JSON_NAME
        self.meta = {"timesteps": timesteps, "seed": seed, "images": images}
        self.losses: dict[int, float] = {}
        if resumed_at > 0 and self.csv.is_file():
            with open(self.csv, encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle):
                    if int(row["step"]) <= resumed_at:
                        self.losses[int(row["step"])] = float(row["val_loss"])
        self._write()

    def add(self, step: int, loss: float) -> None:
        self.losses[step] = loss
        self._write()

    @property
    def best(self) -> tuple[int, float] | None:
        finite = [(loss, step) for step, loss in self.losses.items() if math.isfinite(loss)]
        return (min(finite)[1], min(finite)[0]) if finite else None

    def _write(self) -> None:
        with open(self.csv, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "val_loss"])
            writer.writerows([step, f"{loss:.6g}"] for step, loss in sorted(self.losses.items()))
        best = self.best
        update_validation_json(
            self.json.parent,
            **self.meta,
            losses={str(step): loss for step, loss in sorted(self.losses.items())},
            best_step=best[0] if best else None,
            best_val_loss=best[1] if best else None,
        )


def update_validation_json(out: Path, **entries) -> None:
    """Set `entries` in `validation.json`, keeping what else it holds: the loss (this module) and the
    prompt set's scores (validation_prompts.py) are written beside each other."""
    path = out / JSON_NAME
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    summary.update(entries)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_validation(out: Path) -> dict | None:
    """What `validation.json` of a run folder says, or None when the run had no validation."""
    path = out / JSON_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class Validation:
    """A run's validation: the loss at a step, reported (progress, a plain line, TensorBoard) and logged
    to the run folder, and the best step named at the end. Main process only."""

    def __init__(self, loss: ValidationLoss, log: ValidationLog, report, say, scalars=None) -> None:
        self.loss, self.log, self.report, self.say, self.scalars = loss, log, report, say, scalars

    @classmethod
    def open(
        cls, loss: ValidationLoss, out: Path, step: int, seed: int, report, say, scalars=None
    ) -> Validation:
        """The validation of the run in `out`, (re)starting its log at `step` (0, or the resumed step)."""
        log = ValidationLog(out, step, loss.timesteps.tolist(), seed, len(loss.latents))
        return cls(loss, log, report, say, scalars)

    def at(self, step: int, unet, text_states, autocast) -> float:
        self.report("validating", 0, 1, step=step)
        value = self.loss(unet, text_states, autocast)
        self.log.add(step, value)
        self.report("validating", 1, 1, step=step, val_loss=value)
        self.say(f"step {step}: val_loss {value:.4f}")
        if self.scalars is not None:
            self.scalars({"val_loss": value}, step=step)
        return value

    def name_best(self) -> None:
        if self.log.best is not None:
            step, value = self.log.best
            self.say(f"best step {step} (val_loss {value:.4f} of {len(self.log.losses)}): {self.log.csv}")
