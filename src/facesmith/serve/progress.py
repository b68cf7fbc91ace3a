"""`GET /sdapi/v1/progress` and `POST /sdapi/v1/interrupt`: where the running job is, and stopping it.

Owns A1111's ProgressResponse (modules/api/models.py; `state` as modules/shared_state.py keeps it) built
from the queue's snapshot: `sampling_steps` are the steps that actually run (steps x strength for img2img,
as `jobs.run_steps` counts them), `job_no` the image, and while the face detailer repaints a face its
pass is a stage of its own (`state.job` names it, `sampling_step`/`sampling_steps` count its steps), as
ADetailer's inpainting shows in A1111's progress. The interrupt route stops the running job under
--api-auth only for its own user or the server's first user. Running jobs is `jobs.py`'s.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request

from facesmith.serve.config import AUTH_USER, credentials
from facesmith.serve.jobs import Job, JobQueue, run_steps

if TYPE_CHECKING:
    from facesmith.serve.config import ServeConfig


def progress_report(queue: JobQueue) -> dict:
    """A1111's ProgressResponse for the running job (zeros when idle), plus the queue counts."""
    return progress_from(queue.snapshot())


def progress_from(state: dict) -> dict:
    """`progress_report` of a queue snapshot (`JobQueue.snapshot`)."""
    job: Job | None = state["running"]
    fraction = job.step / job.total if job and job.total else 0.0
    elapsed = time.time() - job.started_at if job and job.started_at else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    steps = run_steps(job.config) if job else 0
    image, step, label = (
        (job.step // steps, job.step % steps, f"job {job.id}") if job and steps else (0, 0, "")
    )
    text = f"job {job.id}: step {job.step} of {job.total}" if job else None
    if job and job.stage != "sampling":  # the face detailer's pass: its own steps, on the image just made
        image, step, steps = max(image - 1, 0), job.stage_step, job.stage_total
        label = f"job {job.id}: {job.stage}"
        text = f"{label}, step {step} of {steps}"
    return {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 3),
        "state": {
            "skipped": False,
            "interrupted": bool(job and job.cancel.is_set()),
            "stopping_generation": False,
            "job": label,
            "job_count": state["waiting"] + (1 if job else 0),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.queued_at)) if job else "0",
            "job_no": image,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": None,
        "textinfo": text,
        "queue": {k: state[k] for k in ("waiting", "done", "cancelled", "failed")},
    }


def progress_router(queue: JobQueue, serve: ServeConfig) -> APIRouter:
    """/progress and /interrupt, included in api.py's /sdapi/v1 router."""
    router = APIRouter()

    @router.get("/progress")
    def progress() -> dict:
        return progress_report(queue)

    @router.post("/interrupt")
    def interrupt(request: Request) -> dict:
        """Stop the running job. Under --api-auth only its own user may, or the server's first user."""
        user = request.scope.get(AUTH_USER)
        users = [name for name, _ in credentials(serve.api_auth)]
        queue.interrupt(user, any_job=not users or user == users[0])
        return {}

    return router
