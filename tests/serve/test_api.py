"""The A1111-compatible API against a real `facesmith serve` process on the tiny model."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import pytest
from PIL import Image

from facesmith.samplers import sampler_names

from .conftest import LIMITS

FAST = {"steps": 2, "width": 64, "height": 64}


def txt2img(server, **fields) -> httpx.Response:
    return httpx.post(server.url + "/sdapi/v1/txt2img", json=fields, timeout=120)


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_txt2img_answers_in_a1111_shapes_with_metadata_in_each_png(server):
    response = txt2img(
        server,
        prompt="a photo of a smiling woman",
        negative_prompt="blurry",
        sampler_name="Euler a",
        cfg_scale=5,
        seed=42,
        batch_size=2,
        n_iter=1,
        # fields facesmith doesn't use are ignored, as A1111 does
        restore_faces=False,
        styles=[],
        override_settings={"CLIP_stop_at_last_layers": 2},
        some_future_field=1,
        **FAST,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert body["parameters"]["prompt"] == "a photo of a smiling woman" and body["parameters"]["seed"] == 42
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43] and info["seed"] == 42
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["cfg_scale"] == 5
    assert info["sd_model_name"] == "tiny-sd15" and len(info["sd_model_hash"]) == 10
    assert (info["width"], info["height"]) == (64, 64)
    assert len(body["images"]) == 2
    for b64, seed, infotext in zip(body["images"], [42, 43], info["infotexts"], strict=True):
        image = png(b64)
        assert image.size == (64, 64)
        assert image.text["parameters"] == infotext
        assert infotext.startswith("a photo of a smiling woman\nNegative prompt: blurry\n")
        assert f"Seed: {seed}," in infotext and "Sampler: Euler a," in infotext and "Steps: 2," in infotext
        assert json.loads(image.text["facesmith"])["config"]["seed"] == seed


def test_image_i_of_a_batch_is_the_image_its_seed_makes_alone(server):
    batch = txt2img(server, prompt="a face", seed=100, batch_size=2, **FAST).json()
    alone = txt2img(server, prompt="a face", seed=101, **FAST).json()
    assert batch["images"][1] == alone["images"][0]
    assert batch["images"][0] != batch["images"][1]


def test_random_seed_is_drawn_and_recorded(server):
    info = json.loads(txt2img(server, prompt="a face", seed=-1, **FAST).json()["info"])
    assert info["seed"] >= 0 and f"Seed: {info['seed']}," in info["infotexts"][0]


def test_sampler_index_and_a1111_karras_scheduler_are_understood(server):
    response = txt2img(server, prompt="a face", sampler_index="DPM++ 2M", scheduler="Karras", **FAST)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sampler_name"] == "DPM++ 2M Karras"


def test_send_images_false_returns_no_images(server):
    response = txt2img(server, prompt="a face", send_images=False, **FAST)
    assert response.status_code == 200 and response.json()["images"] == []


def test_read_only_endpoints_answer_in_a1111_shapes(server):
    get = lambda path: httpx.get(server.url + path, timeout=10)  # noqa: E731
    samplers = get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == sampler_names()
    assert all({"name", "aliases", "options"} <= set(s) for s in samplers)
    models = get("/sdapi/v1/sd-models").json()
    assert len(models) == 1 and models[0]["model_name"] == "tiny-sd15"
    assert models[0]["title"] == f"tiny-sd15 [{models[0]['hash']}]" and len(models[0]["sha256"]) == 64
    assert "/" not in models[0]["filename"]  # no server paths
    options = get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    assert options["facesmith_limits"]["max_steps"] == LIMITS["max_steps"]
    progress = get("/sdapi/v1/progress").json()
    assert {"progress", "eta_relative", "state", "current_image", "textinfo"} <= set(progress)
    assert {"job_count", "sampling_step", "sampling_steps", "interrupted"} <= set(progress["state"])
    assert get("/sdapi/v1/loras").json() == []


def test_openapi_docs_are_served_without_a_cdn(server):
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert "/sdapi/v1/txt2img" in schema["paths"] and "/sdapi/v1/progress" in schema["paths"]
    docs = httpx.get(server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"steps": "many"}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": LIMITS["max_steps"] + 1}, "steps"),
        ({"width": 60}, "width"),
        ({"height": LIMITS["max_size"] + 8}, "height"),
        ({"batch_size": 3, "n_iter": 2}, "batch_size"),
        ({"n_iter": 0}, "n_iter"),
        ({"sampler_name": "Heun++ 9000"}, "sampler_name"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"seed": -5}, "seed"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a face <lora:../../../etc/passwd:1>"}, "prompt"),
    ],
)
def test_invalid_fields_get_422_naming_the_field(server, fields, field):
    response = txt2img(server, **{"prompt": "a face", **FAST, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", field], detail


def test_request_data_never_becomes_a_path(server, tmp_path):
    target = tmp_path / "samples"
    response = txt2img(
        server, prompt="a face", save_images=True, outpath_samples=str(target), outdir=str(target), **FAST
    )
    assert response.status_code == 200
    assert not target.exists()


def _progress(server) -> dict:
    return httpx.get(server.url + "/sdapi/v1/progress", timeout=10).json()


def test_a_client_that_disconnects_does_not_wedge_the_queue(server):
    before = _progress(server)["queue"]["cancelled"]
    body = json.dumps({"prompt": "a long job", "steps": LIMITS["max_steps"], "batch_size": 4,
                       "width": 64, "height": 64}).encode()  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # the job is running and says so
        state = _progress(server)
        if state["state"]["job"] and state["state"]["sampling_steps"] == LIMITS["max_steps"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the long job never showed up in /sdapi/v1/progress: {state}")
    client.close()
    while time.time() < deadline:  # it is stopped, not run to the end for nobody
        if _progress(server)["queue"]["cancelled"] > before:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job of a client that went away was never cancelled")
    response = txt2img(server, prompt="the next client", **FAST)
    assert response.status_code == 200 and len(response.json()["images"]) == 1


def test_interrupt_stops_the_running_job_and_returns_what_it_made(server):
    import threading

    result = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "r",
            txt2img(server, prompt="long", steps=LIMITS["max_steps"], n_iter=4, seed=9, width=64, height=64),
        )
    )
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline and _progress(server)["state"]["job_no"] < 1:  # the first image is done
        time.sleep(0.02)
    assert httpx.post(server.url + "/sdapi/v1/interrupt", timeout=10).status_code == 200
    worker.join(60)
    response = result["r"]
    assert response.status_code == 200
    images, info = response.json()["images"], json.loads(response.json()["info"])
    assert "interrupted" in info and 1 <= len(images) < 4  # A1111 returns the images made so far
    assert info["all_seeds"] == list(range(9, 9 + len(images)))
    for b64, infotext in zip(images, info["infotexts"], strict=True):
        assert png(b64).text["parameters"] == infotext


def test_an_existing_a1111_client_works_unchanged(server):
    """webuiapi, a widely used Python client for AUTOMATIC1111's API, with its own defaults and payload."""
    import webuiapi

    host, port = server.url.removeprefix("http://").split(":")
    client = webuiapi.WebUIApi(host=host, port=int(port), steps=2)
    assert {s["name"] for s in client.get_samplers()} >= {"Euler a", "DDIM"}
    assert client.get_sd_models()[0]["model_name"] == "tiny-sd15"
    result = client.txt2img(prompt="a photo of a face", negative_prompt="blurry", seed=3, width=64, height=64)
    assert result.image.size == (64, 64)
    assert result.info["all_seeds"] == [3] and result.info["sampler_name"] == "Euler a"
    assert result.image.info["parameters"] == result.info["infotexts"][0]
    assert client.get_progress()["state"]["job_count"] == 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"prompt": "a face", "cfg_scale": NaN}', "cfg_scale"),
        ('{"prompt": "a face", "cfg_scale": Infinity}', "cfg_scale"),
        ('{"prompt": "a \\ud800 face"}', "prompt"),
        ('{"prompt": "a face", "negative_prompt": "\\udfff"}', "negative_prompt"),
    ],
)
def test_values_json_cannot_echo_get_422_not_500(server, raw, field):
    response = httpx.post(
        server.url + "/sdapi/v1/txt2img",
        content=raw.encode(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_an_overlong_prompt_is_refused_without_echoing_it(server):
    from facesmith.serve.api import MAX_PROMPT_CHARS

    response = txt2img(server, prompt="face " * (MAX_PROMPT_CHARS // 5 + 1), **FAST)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert len(response.content) < 2000  # the 10k-character prompt does not come back


def test_a_body_over_the_limit_gets_413(server):
    from facesmith.serve.app import MAX_BODY_BYTES

    response = httpx.post(
        server.url + "/sdapi/v1/txt2img",
        content=b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert txt2img(server, prompt="a face", **FAST).status_code == 200  # and the server is still up


def test_lora_tags_are_parsed_in_linear_time_and_strip_their_commas():
    import subprocess
    import sys

    from facesmith.serve.lora_tags import lora_tags

    loras = {"style": ("lora0", 1.0, "/models/style.safetensors")}
    assert lora_tags("a face, <lora:style:0.6>, smiling", loras) == ("a face, smiling", {"style": 0.6})
    assert lora_tags("<lora:style> a face ,  <lora:style:2>", loras) == ("a face", {"style": 2.0})
    assert lora_tags("a face", loras) == ("a face", {})
    # 4 KB of spaces took 25-90 s with a `\s*,?\s*<lora...>` regex (cubic backtracking). In a child
    # process: a regex holds the GIL, so a thread could not time it out.
    hostile = "from facesmith.serve.lora_tags import lora_tags; lora_tags('a' + ' ' * 4096 + 'b', {})"
    subprocess.run([sys.executable, "-c", hostile], check=True, timeout=30)


def test_progress_counts_the_steps_that_run_and_the_face_pass_as_its_own_stage():
    from facesmith.config import GenerateConfig
    from facesmith.serve.jobs import Job
    from facesmith.serve.progress import progress_from

    def report(job: Job) -> dict:
        return progress_from({"running": job, "waiting": 0, "done": 0, "cancelled": 0, "failed": 0})

    img2img = GenerateConfig(prompt="a", steps=40, init_image="init_images[0]", strength=0.5, count=2)
    job = Job(7, img2img, step=25, total=40, started_at=time.time())
    state = report(job)["state"]
    assert (state["sampling_steps"], state["job_no"], state["sampling_step"]) == (20, 1, 5)
    txt2img = Job(8, GenerateConfig(prompt="a", steps=40), step=25, total=40, started_at=time.time())
    assert report(txt2img)["state"]["sampling_steps"] == 40
    # the first image is made, its face pass (e.g. 20 steps x 0.4) is on step 3
    job.step, job.stage, job.stage_step, job.stage_total = 20, "detailing faces", 3, 8
    progress = report(job)
    assert progress["state"]["job"] == "job 7: detailing faces"
    assert (progress["state"]["sampling_step"], progress["state"]["sampling_steps"]) == (3, 8)
    assert progress["state"]["job_no"] == 0 and "detailing faces, step 3 of 8" in progress["textinfo"]
    assert progress["progress"] == 0.5  # the main passes' share, as before the face pass began


def test_a_running_img2img_job_reports_steps_times_strength(server):
    import threading

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode("ascii")
    body = {"prompt": "a face", "init_images": [init], "denoising_strength": 0.5, "width": 64, "height": 64,
            "steps": LIMITS["max_steps"], "n_iter": 4}  # fmt: skip
    worker = threading.Thread(
        target=lambda: httpx.post(server.url + "/sdapi/v1/img2img", json=body, timeout=120)
    )
    worker.start()
    seen = set()
    deadline = time.time() + 60
    while worker.is_alive() and time.time() < deadline:
        state = _progress(server)["state"]
        if state["job"]:
            seen.add(state["sampling_steps"])
        time.sleep(0.02)
    worker.join(60)
    assert seen == {LIMITS["max_steps"] // 2}
