"""The job queue on a tiny model, in-process: order, cancellation, failures, limits, LoRA weights."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

import factory
from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError
from facesmith.serve.api import lora_tags
from facesmith.serve.jobs import JobCancelled, JobQueue, QueueFull


def config(steps: int = 2, **fields) -> GenerateConfig:
    return GenerateConfig(
        **{"prompt": "a face", "steps": steps, "width": 64, "height": 64, "seed": 1, **fields}
    )


def pixels(picture) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(picture.png)).convert("RGB"), dtype=np.int16)


def wait_started(job, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while job.started_at is None and time.time() < deadline:
        time.sleep(0.01)


@pytest.fixture
def queue(sd15):
    running = JobQueue(sd15, max_waiting=2)
    yield running
    running.close()


def test_jobs_run_one_at_a_time_in_order_and_a_cancelled_waiting_job_is_skipped(queue):
    first = queue.submit(config(steps=10))
    wait_started(first)
    second = queue.submit(config())
    third = queue.submit(config(seed=5))
    queue.cancel(second)
    with pytest.raises(JobCancelled):
        second.future.result(timeout=5)
    assert len(first.future.result(timeout=120)) == 1
    [picture] = third.future.result(timeout=120)
    assert picture.seed == 5 and third.started_at >= first.finished_at
    assert second.started_at is None and queue.snapshot()["cancelled"] == 1


def test_a_running_job_stops_at_its_next_step_when_cancelled(queue):
    job = queue.submit(config(steps=60, count=4))
    wait_started(job)
    queue.cancel(job)
    with pytest.raises(JobCancelled, match="interrupted at step"):
        job.future.result(timeout=60)
    assert job.step < job.total
    assert len(queue.submit(config()).future.result(timeout=60)) == 1


def test_a_failing_job_does_not_stop_the_worker(queue):
    bad = queue.submit(config(steps=0))  # run() validates, so this fails inside the worker
    with pytest.raises(FacesmithError, match="steps"):
        bad.future.result(timeout=60)
    assert len(queue.submit(config()).future.result(timeout=60)) == 1
    assert queue.snapshot()["failed"] == 1


def test_more_waiting_jobs_than_the_limit_are_refused(queue):
    running = queue.submit(config(steps=10))
    wait_started(running)
    waiting = [queue.submit(config()), queue.submit(config())]
    with pytest.raises(QueueFull, match="--max-queue 2"):
        queue.submit(config())
    for job in (running, *waiting):
        job.future.result(timeout=120)


def test_pngs_carry_both_metadata_chunks(queue):
    [picture] = queue.submit(config(negative="blurry")).future.result(timeout=60)
    image = Image.open(io.BytesIO(picture.png))
    assert image.text["parameters"] == picture.parameters
    assert "Negative prompt: blurry" in picture.parameters and "Seed: 1," in picture.parameters
    assert json.loads(image.text["facesmith"])["config"]["seed"] == 1


def test_each_job_chooses_the_weight_of_a_loaded_lora(sd15, sd15_folder, tmp_path):
    from safetensors.torch import save_file

    import facesmith

    lora = tmp_path / "face_style.safetensors"
    save_file(factory.kohya_lora(factory.tiny_sd15()), lora)
    generator = facesmith.load(sd15_folder, loras=[f"{lora}:1"])
    with_lora = JobQueue(generator)
    base = JobQueue(sd15)
    try:
        assert list(with_lora.loras) == ["face_style"]
        [off] = with_lora.submit(config(), {"face_style": 0.0}).future.result(timeout=60)
        [on] = with_lora.submit(config(), {"face_style": 1.0}).future.result(timeout=60)
        [default] = with_lora.submit(config()).future.result(timeout=60)
        [plain] = base.submit(config()).future.result(timeout=60)
    finally:
        with_lora.close()
        base.close()
    assert np.abs(pixels(off) - pixels(plain)).max() <= 1  # weight 0 is the base model
    assert np.abs(pixels(on) - pixels(plain)).mean() > 1
    assert np.array_equal(pixels(default), pixels(on))  # absent = the start-up weight
    assert off.settings["config"]["loras"][0].endswith("face_style.safetensors:0")
    assert on.settings["config"]["loras"][0].endswith("face_style.safetensors:1")
    assert generator.loras == [f"{lora.resolve()}:1"]  # a job's weight doesn't outlive the job


def test_lora_tags_name_loaded_loras_only():
    loaded = {"face_style": ("lora0", 1.0, "/models/face_style.safetensors")}
    assert lora_tags("a face, <lora:face_style:0.6>", loaded) == ("a face", {"face_style": 0.6})
    assert lora_tags("<lora:face_style> a face", loaded) == ("a face", {"face_style": 1.0})
    for prompt in ("a face <lora:other:1>", "a face <lora:/etc/passwd:1>", "a face <lora:face_style:x>"):
        with pytest.raises(Exception) as raised:
            lora_tags(prompt, loaded)
        assert raised.value.errors()[0]["loc"] == ("body", "prompt")
