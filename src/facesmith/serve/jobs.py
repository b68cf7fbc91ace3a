"""The generation queue: jobs run one at a time on the server's one model and device, first come first served.

Owns: `JobQueue`, a worker thread that takes `Job`s in arrival order and runs `FaceGenerator.sample` for
each (or the job's own task on the generator: the page's face edit);
the step progress that `/sdapi/v1/progress` and the page's progress bar read; cancellation (a job whose
client went away is dropped before it starts, or stopped at its next denoising step, so the queue moves
on, and an interrupted job keeps the images it finished, as A1111 returns them); per-job LoRAs (a job
gets only the LoRAs it names, as in A1111); and turning the images into PNG bytes that carry facesmith's metadata
(`metadata.recipe` and `metadata.png_bytes`, the same two functions `facesmith generate` writes with). HTTP and the page are
`api.py`'s and `page.py`'s business; both submit here, so the page and the API share one queue.

One worker per queue, because a diffusers pipeline is not re-entrant: the scheduler and LoRA weights are
per-pipeline state, and two jobs on one device only compete for the same compute.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facesmith.config import GenerateConfig
from facesmith.detailer import share_adapters
from facesmith.errors import FacesmithError
from facesmith.img2img import StartPicture
from facesmith.metadata import png_bytes, recipe, unique_lora_names


class JobCancelled(Exception):
    """The job's client went away or asked to interrupt; the worker moved on. `pictures` holds the images
    it finished before it stopped."""

    def __init__(self, message: str, pictures: list[Picture] | None = None):
        super().__init__(message)
        self.pictures = pictures or []


class QueueFull(FacesmithError):
    """More jobs are waiting than the server's --max-queue allows."""


@dataclass
class Picture:
    """One generated image as it leaves the server: PNG bytes with both metadata chunks."""

    png: bytes
    seed: int
    parameters: str  # A1111's `parameters` text, also inside the PNG
    settings: dict  # facesmith's JSON chunk, also inside the PNG


@dataclass
class Job:
    id: int
    config: GenerateConfig
    lora_weights: dict[str, float] = field(default_factory=dict)  # LoRA name -> weight; absent = not applied
    owner: str | None = None  # the --api-auth user who submitted it; None without auth
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    # "sampling" (step of total above), or a later pass of the image just made ("detailing faces"),
    # counted on its own: its face count is only known once the image is there
    stage: str = "sampling"
    stage_step: int = 0
    stage_total: int = 0
    used: GenerateConfig | None = None  # as run: seed, size and sampler resolved
    given: StartPicture | None = None  # an API img2img request's init image and mask, in memory
    # a job that is not one sampling run (the page's face edit): task(generator, progress) -> its result;
    # `config` then only counts its steps
    task: Callable[..., Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    def timings(self) -> dict:
        return {"id": self.id, "queued_at": self.queued_at, "started_at": self.started_at,
                "finished_at": self.finished_at}  # fmt: skip


class JobQueue:
    """FIFO of generation jobs on one FaceGenerator, run by one worker thread."""

    def __init__(self, generator, *, max_waiting: int = 64):
        self.generator = generator
        self.max_waiting = max_waiting
        self.loras = lora_names(generator)  # name -> adapter, fixed at start-up
        # the face detailer takes these adapters for an ad_prompt's <lora:name> instead of loading the file
        share_adapters(generator.pipe, {path: adapter for adapter, _, path in self.loras.values()})
        self.done = self.cancelled = self.failed = 0
        self._ids = itertools.count(1)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="facesmith-jobs", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------------------
    def submit(
        self,
        config: GenerateConfig,
        lora_weights: dict[str, float] | None = None,
        owner: str | None = None,
        given: StartPicture | None = None,
        task: Callable[..., Any] | None = None,
    ) -> Job:
        """Queue a validated config with the LoRAs it names (and the init picture `given` in memory), or a
        `task` that calls the generator itself, counted as `config`'s steps; raise QueueFull when
        --max-queue jobs are already waiting."""
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"{len(self._waiting)} jobs are already waiting (--max-queue {self.max_waiting}): "
                    "retry later"
                )
            job = Job(next(self._ids), config, dict(lora_weights or {}), owner, given=given, task=task)
            job.total = config.count * run_steps(config)
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop `job` if it waits, stop it at its next step if it runs; a finished job is left alone."""
        job.cancel.set()
        with self._wake:
            if job in self._waiting:
                self._waiting.remove(job)
                self.cancelled += 1
                job.future.set_exception(JobCancelled(f"job {job.id} was cancelled before it started"))

    def interrupt(self, user: str | None = None, *, any_job: bool = True) -> Job | None:
        """A1111's /sdapi/v1/interrupt: stop the running job, if `any_job` or it is `user`'s; return it."""
        running = self._running
        if running is None or not (any_job or running.owner == user):
            return None
        self.cancel(running)
        return running

    def snapshot(self) -> dict:
        """The running job and queue length, for progress reports."""
        with self._wake:
            running = self._running
            return {
                "running": running,
                "waiting": len(self._waiting),
                "done": self.done,
                "cancelled": self.cancelled,
                "failed": self.failed,
            }

    def close(self) -> None:
        with self._wake:
            self._closed = True
            for job in self._waiting:
                job.future.set_exception(JobCancelled("the server is shutting down"))
            self._waiting.clear()
            self._wake.notify_all()
        if self._running is not None:
            self._running.cancel.set()
        self._worker.join(timeout=30)

    # ------------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running = job
            job.started_at = time.time()
            pictures, error, outcome = None, None, "done"
            try:
                pictures = self._run(job)
            except JobCancelled as err:
                error, outcome = err, "cancelled"
            except Exception as err:  # a failed job must never stop the worker
                error, outcome = err, "failed"
            job.finished_at = time.time()
            with self._wake:
                self._running = None
                setattr(self, outcome, getattr(self, outcome) + 1)
            if error is None:
                job.future.set_result(pictures)
            else:
                job.future.set_exception(error)

    def _run(self, job: Job) -> list[Picture]:
        """Run `job` one batch at a time (batch i+1 from seed s + i*batch_size, the images that run would
        make), so an interrupt keeps the batches already finished."""
        config = job.config.validate()
        if config.seed is None:
            config = dataclasses.replace(config, seed=secrets.randbelow(2**32))
        pictures: list[Picture] = []
        done = 0

        def progress(stage: str, step: int, total: int | None, **fields: float) -> None:
            if stage == "sampling":  # the face detailer's pass ("detailing faces") leaves the count alone
                job.stage = stage
                job.step, job.total = done * run_steps(config) + step, config.count * run_steps(config)
            else:
                job.stage, job.stage_step, job.stage_total = stage, step, total or 0
            if job.cancel.is_set():
                raise JobCancelled(
                    f"job {job.id} was interrupted at step {job.step} of {job.total}", pictures
                )

        if job.cancel.is_set():
            raise JobCancelled(f"job {job.id} was cancelled before it started")
        generator = self.generator
        if job.task is not None:
            with lora_weights_applied(generator, self.loras, job.lora_weights):
                return job.task(generator, progress)
        with lora_weights_applied(generator, self.loras, job.lora_weights) as applied:
            while done < config.count:
                size = min(config.batch_size, config.count - done)
                batch = dataclasses.replace(config, seed=config.seed + done, count=size)
                result = generator.sample(batch, progress=progress, given=job.given)
                pictures += pictures_from(generator, result, applied.names, self.loras)
                done += size
        job.used = dataclasses.replace(result.config, seed=config.seed, count=config.count)
        return pictures


def run_steps(config: GenerateConfig) -> int:
    """The denoising steps one image takes: steps x strength for img2img (as `img2img.prepare_start`)."""
    if config.init_image is None:
        return config.steps
    return min(int(config.steps * config.strength), config.steps)


# ----------------------------------------------------------------------------------------------------------
# LoRAs: loaded once at start-up as peft adapters; each job only chooses their weights.


def lora_names(generator) -> dict[str, tuple[str, float, str]]:
    """{LoRA name: (adapter name, start-up weight, path)} in load order.

    `models.lora.apply_loras` names the adapter of the i-th LoRA `lora{i}`; a request names a LoRA by the
    name `metadata.unique_lora_names` gives it (its file stem, with parent folders where stems clash),
    looked up here, never as a path.
    """
    specs = [spec.rpartition(":") for spec in generator.loras]
    names = unique_lora_names([path for path, _, _ in specs])
    return {
        name: (f"lora{index}", float(weight), path)
        for index, (name, (path, _, weight)) in enumerate(zip(names, specs, strict=True))
    }


class lora_weights_applied:  # noqa: N801 - used as a context manager, reads as a phrase
    """Apply only the LoRAs this job names, at its weights, and record just those in the metadata.

    A LoRA the job does not name is off, not at its start-up weight: A1111 applies a LoRA only when the
    prompt names it. With none named, peft's adapters are disabled, so the image is the base model's.
    """

    def __init__(self, generator, loras: dict[str, tuple[str, float, str]], weights: dict[str, float]):
        self.generator, self.loras = generator, loras
        self.chosen = {name: weight for name, weight in weights.items() if name in loras}
        self.names = list(self.chosen)

    def __enter__(self):
        if not self.loras:
            return self
        pipe = self.generator.pipe
        self.saved = list(self.generator.loras)
        if self.chosen:
            pipe.enable_lora()
            pipe.set_adapters(
                [self.loras[name][0] for name in self.chosen], adapter_weights=list(self.chosen.values())
            )
        else:
            pipe.disable_lora()
        self.generator.loras = [f"{self.loras[name][2]}:{weight:g}" for name, weight in self.chosen.items()]
        return self

    def __exit__(self, *exc):
        if self.loras:
            self.generator.loras = self.saved
        return False


def pictures_from(
    generator, result, lora_names: list[str] | None = None, loras: dict | None = None
) -> list[Picture]:
    """PNG bytes with A1111's `parameters` chunk and facesmith's JSON chunk, as `run_generate` writes.
    The face pass's LoRA is recorded by the name the server shows (`loras`), never by its path."""
    config = result.config
    if config.detail_lora and loras:
        path, _, weight = config.detail_lora.rpartition(":")
        name = next((n for n, (_, _, p) in loras.items() if p == path), None)
        config = dataclasses.replace(
            config, detail_lora=f"{name}{Path(path).suffix}:{weight}" if name else None
        )
    pictures = []
    for image, seed in zip(result.images, result.seeds, strict=True):
        chunks = recipe(config, generator.model, seed, lora_names)
        pictures.append(Picture(png_bytes(image, chunks), seed, chunks.parameters, chunks.settings))
    return pictures
