"""What the page's tabs share: its PNG folder, following a job of the queue, the limits, the detailer's controls.

Owns `PageContext` (the queue, the folder of the page's PNGs and the server's limits, which every tab
checks a config against before it queues), `follow` and `finished` (the progress bar while a job waits
and runs, then its result, an interrupted job's finished images, or its error as one line on the page),
the `--api-auth` user of a page event, and the face detailer's checkbox with its strength and confidence
(ADetailer's first tab). The tabs are `page.py`'s, `page_img2img.py`'s and `page_edit.py`'s.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import time as well as by Blocks

import gradio as gr  # noqa: E402

from facesmith.config import GenerateConfig  # noqa: E402
from facesmith.errors import FacesmithError  # noqa: E402
from facesmith.serve.config import AUTH_USER  # noqa: E402
from facesmith.serve.jobs import JobCancelled, JobQueue  # noqa: E402

KEEP_IMAGES = 256  # the page's PNGs on disk; older ones are removed so a long-running server stays flat


class PictureFolder:
    """Where the page's PNGs live until the browser fetched them; names come from job ids, never requests."""

    def __init__(self, keep: int = KEEP_IMAGES):
        self.path = Path(tempfile.mkdtemp(prefix="facesmith-serve-"))
        self.keep = keep

    def save(self, job_id: int, index: int, seed: int, png: bytes) -> str:
        path = self.path / f"{job_id:06d}-{index:02d}-{seed}.png"
        path.write_bytes(png)
        for old in sorted(self.path.glob("*.png"))[: -self.keep]:
            old.unlink(missing_ok=True)
        return str(path)


def page_user(request) -> str | None:
    """The --api-auth user of a page event (app.BasicAuth left it in the HTTP request's scope)."""
    http = getattr(request, "request", None)  # gr.Request wraps the starlette request
    return getattr(http, "scope", {}).get(AUTH_USER) if http is not None else None


def progress_bar(job, queue: JobQueue) -> str:
    """An HTML <progress> bar and a line of text for `job`: its place in the queue, its step, or done."""
    if job.future.done():
        return f'<progress value="1" max="1"></progress> done: {job.total} steps'
    if job.started_at is None:
        return f'<progress max="1"></progress> waiting in the queue ({queue.snapshot()["waiting"]} waiting)'
    if job.stage != "sampling":  # the face detailer's pass counts its own steps
        return (f'<progress value="{job.stage_step}" max="{job.stage_total}"></progress> '
                f"{job.stage}: step {job.stage_step} of {job.stage_total}")  # fmt: skip
    return f'<progress value="{job.step}" max="{job.total}"></progress> step {job.step} of {job.total}'


@dataclass
class PageContext:
    """What every tab of the page works with: the queue, the folder of its PNGs and the server's limits."""

    queue: JobQueue
    folder: PictureFolder
    max_steps: int
    max_size: int
    max_batch: int

    @property
    def native(self) -> int:
        return self.queue.generator.native_size[0]

    def check(self, config: GenerateConfig) -> GenerateConfig:
        """`config` validated and within the server's limits; gr.Error (shown on the page) otherwise."""
        try:
            config.validate()
            if config.steps > self.max_steps or max(config.width or 0, config.height or 0) > self.max_size:
                raise FacesmithError(
                    f"this server allows at most {self.max_steps} steps and {self.max_size} px"
                )
            if config.count > self.max_batch:
                raise FacesmithError(f"this server makes at most {self.max_batch} images per job")
        except FacesmithError as err:
            raise gr.Error(str(err)) from None
        return config


def follow(job, queue: JobQueue):
    """Yield the progress bar of `job` each time it changes, until it is done."""
    shown = None
    while not job.future.done():
        state = (job.started_at is not None, job.step, job.stage, job.stage_step)
        if state != shown:
            shown = state
            yield progress_bar(job, queue)
        time.sleep(0.1)


def finished(job) -> list:
    """The job's result; an interrupted one keeps what it finished, as A1111 shows it; errors as gr.Error."""
    try:
        return job.future.result()
    except JobCancelled as err:
        if not err.pictures:
            raise gr.Error(str(err)) from None
        return err.pictures
    except Exception as err:  # a FacesmithError (no face found) or a failed job: one line on the page
        raise gr.Error(str(err)) from None


def detailer_controls(prefix: str) -> list:
    """The face detailer's checkbox, strength and confidence (ADetailer's first tab), ids `PREFIX-detail*`."""
    with gr.Accordion("Face detailer (ADetailer)", open=False, elem_id=f"{prefix}-detailer"), gr.Row():
        on = gr.Checkbox(False, label="Detail faces", elem_id=f"{prefix}-detail")
        strength = gr.Slider(0.05, 1, value=GenerateConfig.detail_strength, step=0.05,
                             label="Face denoising strength")  # fmt: skip
        confidence = gr.Slider(0.05, 1, value=GenerateConfig.detail_confidence, step=0.05,
                               label="Face detection confidence")  # fmt: skip
    return [on, strength, confidence]


def detail_settings(on: bool, strength: float, confidence: float) -> dict:
    """GenerateConfig's detail_* fields from the detailer's controls."""
    if not on:
        return {}
    return {"detail_faces": True, "detail_strength": float(strength), "detail_confidence": float(confidence)}
