"""A bounded load test: 60 requests, 4 at a time, against one server process on the tiny model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

REQUESTS, CONCURRENCY, WARM_UP = 60, 4, 4
REQUEST = {"prompt": "a photo of a face", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler"}


def test_sixty_requests_four_at_a_time_queue_in_order_and_memory_stays_flat(server):
    process = psutil.Process(server.process.pid)
    with httpx.Client(timeout=120) as client:

        def one(i: int) -> dict:
            response = client.post(server.url + "/sdapi/v1/txt2img", json={**REQUEST, "seed": i})
            assert response.status_code == 200, response.text
            return json.loads(response.json()["info"])

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, range(WARM_UP)))  # allocator and caches settle first
            rss_before = process.memory_info().rss
            infos = list(pool.map(one, range(REQUESTS)))
        rss_after = process.memory_info().rss

    assert [info["seed"] for info in infos] == list(range(REQUESTS))
    jobs = sorted((info["facesmith_job"] for info in infos), key=lambda job: job["queued_at"])
    # first come, first served: jobs start in the order they were queued ...
    assert [job["id"] for job in jobs] == sorted(job["id"] for job in jobs)
    assert [job["started_at"] for job in jobs] == sorted(job["started_at"] for job in jobs)
    # ... and one at a time: each starts after the one before it finished
    for previous, job in zip(jobs, jobs[1:], strict=False):
        assert job["started_at"] >= previous["finished_at"]
    growth = (rss_after - rss_before) / rss_before
    print(f"server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB ({growth:+.1%})")
    assert growth < 0.10
