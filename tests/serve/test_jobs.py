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


@pytest.fixture(scope="module")
def two_loras(sd15_folder, tmp_path_factory):
    """A generator with two LoRAs that share a file name (every training run writes lora.safetensors),
    beside one on the same model without LoRAs; both sample eagerly so their pixels compare exactly."""
    import facesmith

    paths = factory.same_named_loras(tmp_path_factory.mktemp("loras"))
    with_loras = facesmith.load(
        sd15_folder, loras=[f"{paths[0]}:1", f"{paths[1]}:0.5"], engine="eager", fuse_loras=False
    )
    base = facesmith.load(sd15_folder, engine="eager")
    return with_loras, base, paths


def test_only_the_loras_a_job_names_are_applied(two_loras):
    generator, base_generator, paths = two_loras
    with_loras, base = JobQueue(generator), JobQueue(base_generator)
    try:
        assert list(with_loras.loras) == ["runA/lora", "runB/lora"]  # same file name, two names
        [plain] = with_loras.submit(config()).future.result(timeout=60)
        [a] = with_loras.submit(config(), {"runA/lora": 1.0}).future.result(timeout=60)
        [b] = with_loras.submit(config(), {"runB/lora": 1.0}).future.result(timeout=60)
        [off] = with_loras.submit(config(), {"runA/lora": 0.0}).future.result(timeout=60)
        [plain_again] = with_loras.submit(config()).future.result(timeout=60)
        [reference] = base.submit(config()).future.result(timeout=60)
    finally:
        with_loras.close()
        base.close()
    # a job that names no LoRA is the base model's image, to the bit, also right after one that did
    assert np.array_equal(pixels(plain), pixels(reference))
    assert np.array_equal(pixels(plain_again), pixels(reference))
    assert np.abs(pixels(a) - pixels(reference)).mean() > 1
    assert np.abs(pixels(b) - pixels(a)).mean() > 1  # the two same-named files stay two LoRAs
    assert np.abs(pixels(off) - pixels(reference)).max() <= 1  # weight 0 is the base model
    assert plain.settings["loras"] == [] and "Lora" not in plain.parameters
    assert [lora["name"] for lora in a.settings["loras"]] == ["runA/lora"]
    assert (
        a.settings["loras"][0]["weight"] == 1.0
        and f'Lora hashes: "runA/lora: {a.settings["loras"][0]["hash"]}"' in a.parameters
    )
    assert a.settings["loras"][0]["hash"] != b.settings["loras"][0]["hash"]
    assert a.settings["config"]["loras"] == ["runA/lora.safetensors:1"]  # a name, never the server's path
    assert generator.loras == [
        f"{paths[0].resolve()}:1",
        f"{paths[1].resolve()}:0.5",
    ]  # jobs leave it as loaded


def test_an_interrupted_job_keeps_the_images_it_finished(queue):
    job = queue.submit(config(steps=30, count=4, seed=7))
    deadline = time.time() + 120
    while job.step <= 30 and time.time() < deadline:  # past the first image
        time.sleep(0.005)
    assert queue.interrupt() is job
    with pytest.raises(JobCancelled) as raised:
        job.future.result(timeout=60)
    made = raised.value.pictures
    assert 1 <= len(made) < 4 and [p.seed for p in made] == list(range(7, 7 + len(made)))
    [alone] = queue.submit(config(steps=30, seed=7)).future.result(timeout=60)
    assert made[0].png == alone.png  # the first image is the one its seed makes alone


def test_under_auth_a_job_is_interrupted_only_by_its_owner_or_the_first_user(queue):
    job = queue.submit(config(steps=200), owner="alice")
    wait_started(job)
    assert queue.interrupt("bob", any_job=False) is None and not job.cancel.is_set()
    assert queue.interrupt("alice", any_job=False) is job
    with pytest.raises(JobCancelled):
        job.future.result(timeout=60)
    other = queue.submit(config(steps=200), owner="bob")
    wait_started(other)
    assert queue.interrupt("alice", any_job=True) is other  # the first user may stop anyone's


def test_lora_tags_name_loaded_loras_only():
    loaded = {"face_style": ("lora0", 0.8, "/models/face_style.safetensors")}
    assert lora_tags("a face, <lora:face_style:0.6>", loaded) == ("a face", {"face_style": 0.6})
    # no weight in the tag: the start-up weight (--lora FILE:0.8)
    assert lora_tags("<lora:face_style> a face", loaded) == ("a face", {"face_style": 0.8})
    for prompt in ("a face <lora:other:1>", "a face <lora:/etc/passwd:1>", "a face <lora:face_style:x>"):
        with pytest.raises(Exception) as raised:
            lora_tags(prompt, loaded)
        assert raised.value.errors()[0]["loc"] == ("body", "prompt")
