"""The served app: HTTP Basic auth, local-only binding, server limits, and the command's own errors."""

from __future__ import annotations

import json
import re

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from facesmith.cli import app as cli
from facesmith.serve.config import ServeConfig

from .conftest import start_server, stop_server

USERS = [("alice", "s3cret"), ("bob", "pa:ss")]
FAST = {"prompt": "a face", "steps": 1, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def guarded(sd15_folder, tmp_path_factory):
    """A server with two users (alice is the first) and two LoRAs that share a file name."""
    import factory

    folder = tmp_path_factory.mktemp("guarded")
    loras = [arg for path in factory.same_named_loras(folder) for arg in ("--lora", f"{path}:0.8")]
    auth = ",".join(f"{u}:{p}" for u, p in USERS)
    running = start_server(folder, ["--model", str(sd15_folder), "--api-auth", auth, *loras], auth=USERS[0])
    yield running
    stop_server(running)


@pytest.mark.parametrize("path", ["/sdapi/v1/options", "/sdapi/v1/progress", "/", "/docs", "/openapi.json"])
def test_every_route_needs_the_password(guarded, path):
    anonymous = httpx.get(guarded.url + path, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    wrong = httpx.get(guarded.url + path, auth=("alice", "wrong"), timeout=10)
    assert wrong.status_code == 401
    other = httpx.get(guarded.url + path, auth=("bob", "s3cret"), timeout=10)  # another user's password
    assert other.status_code == 401
    for user in USERS:
        assert httpx.get(guarded.url + path, auth=user, timeout=10).status_code == 200


def test_generation_with_and_without_the_password(guarded):
    url = guarded.url + "/sdapi/v1/txt2img"
    assert httpx.post(url, json=FAST, timeout=60).status_code == 401
    response = httpx.post(url, json=FAST, auth=USERS[1], timeout=60)
    assert response.status_code == 200 and len(response.json()["images"]) == 1


def test_img2img_needs_the_password_too(guarded):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, format="PNG")
    body = {**FAST, "init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 1.0}
    url = guarded.url + "/sdapi/v1/img2img"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    response = httpx.post(url, json=body, auth=USERS[0], timeout=60)
    assert response.status_code == 200 and len(response.json()["images"]) == 1


@pytest.mark.slow
def test_serve_without_model_uses_the_default_model(tmp_path):
    running = start_server(tmp_path, [])
    try:
        response = httpx.post(
            running.url + "/sdapi/v1/txt2img", json={"prompt": "a face", "steps": 1}, timeout=120
        )
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["sd_model_name"] == "facesmith-default" and (info["width"], info["height"]) == (128, 128)
    finally:
        stop_server(running)


def test_the_server_listens_on_loopback_only_by_default(server):
    assert ServeConfig().host == "127.0.0.1"
    listening = [
        c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet") if c.status == "LISTEN"
    ]
    assert listening and set(listening) == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-auth", "nopassword"], "--api-auth must be user:pass"),
        (["--max-steps", "0"], "--max-steps 0 must be at least 1"),
        (["--max-size", "100"], "--max-size 100 must be a multiple of 8"),
        (["--model", "/no/such/model"], "model /no/such/model does not exist"),
    ],
)
def test_serve_mistakes_are_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_an_a1111_client_logs_in_as_it_does_with_a1111(guarded):
    import webuiapi

    host, port = guarded.url.removeprefix("http://").split(":")
    client = webuiapi.WebUIApi(host=host, port=int(port), steps=1, username="bob", password="pa:ss")
    assert client.txt2img(prompt="a face", width=64, height=64).image.size == (64, 64)
    anonymous = webuiapi.WebUIApi(host=host, port=int(port), steps=1)
    with pytest.raises(RuntimeError, match="401"):
        anonymous.txt2img(prompt="a face", width=64, height=64)


def test_loras_with_one_file_name_keep_two_names_and_no_server_path_leaks(guarded, sd15_folder):
    import base64
    import io

    from PIL import Image

    listed = httpx.get(guarded.url + "/sdapi/v1/loras", auth=USERS[0], timeout=10).json()
    assert [lora["name"] for lora in listed] == ["runA/lora", "runB/lora"]
    url = guarded.url + "/sdapi/v1/txt2img"
    tagged = httpx.post(url, json={**FAST, "prompt": "a face <lora:runB/lora>"}, auth=USERS[0], timeout=60)
    plain = httpx.post(url, json=FAST, auth=USERS[0], timeout=60)
    assert tagged.status_code == plain.status_code == 200, tagged.text
    assert tagged.json()["images"] != plain.json()["images"]  # the start-up LoRA is not applied untagged
    info = json.loads(tagged.json()["info"])
    assert (
        'Lora hashes: "runB/lora: ' in info["infotexts"][0]
        and "Lora" not in json.loads(plain.json()["info"])["infotexts"][0]
    )
    chunks = Image.open(io.BytesIO(base64.b64decode(tagged.json()["images"][0]))).text
    for text in (tagged.text, *chunks.values()):
        assert str(guarded.log.parent) not in text and str(sd15_folder) not in text
    assert json.loads(chunks["facesmith"])["loras"][0] | {"hash": None} == {
        "name": "runB/lora",
        "weight": 0.8,
        "hash": None,
    }


def test_under_auth_only_the_owner_or_the_first_user_can_interrupt_a_job(guarded):
    import threading
    import time

    url = guarded.url + "/sdapi/v1"
    long = {**FAST, "steps": 150, "n_iter": 4, "width": 128, "height": 128}

    def running(user) -> dict:
        return httpx.get(url + "/progress", auth=user, timeout=10).json()["state"]

    for owner, interrupter, stops in ((USERS[0], USERS[1], False), (USERS[1], USERS[0], True)):
        result = {}
        worker = threading.Thread(
            target=lambda owner=owner, result=result: result.setdefault(
                "r", httpx.post(url + "/txt2img", json=long, auth=owner, timeout=120)
            )
        )
        worker.start()
        deadline = time.time() + 60
        while time.time() < deadline and not running(owner)["job"]:
            time.sleep(0.02)
        assert httpx.post(url + "/interrupt", auth=interrupter, timeout=10).status_code == 200
        if not stops:  # bob's interrupt left alice's job running
            state = running(owner)
            assert state["job"] and not state["interrupted"]
        worker.join(120)
        info = json.loads(result["r"].json()["info"])
        assert ("interrupted" in info) == stops and (len(info["all_seeds"]) < 4) == stops


def test_a_page_job_belongs_to_its_user_who_can_interrupt_it(guarded):
    # the page's Generate button, as the browser calls it: prompt ... lora, lora_weight, the detailer (off)
    inputs = ["a face", "", 150, 7.5, "DDIM", 3, 4, 128, 128, "none", 1.0, False, 0.4, 0.7]
    call = httpx.post(
        guarded.url + "/gradio_api/call/generate", json={"data": inputs}, auth=USERS[1], timeout=30
    )
    assert call.status_code == 200, call.text
    with httpx.stream("GET", f"{guarded.url}/gradio_api/call/generate/{call.json()['event_id']}", auth=USERS[1],
                      timeout=120) as stream:  # fmt: skip
        lines = stream.iter_lines()
        for line in lines:  # the page's progress bar: "step N of 600"; wait until the first image is done
            step = re.search(r"step (\d+) of 600", line)
            if step and int(step.group(1)) > 150:
                break
        state = httpx.get(guarded.url + "/sdapi/v1/progress", auth=USERS[1], timeout=10).json()["state"]
        assert state["job"]
        assert httpx.post(guarded.url + "/sdapi/v1/interrupt", auth=USERS[1], timeout=10).status_code == 200
        rest = "\n".join(lines)
    final = json.loads(rest.rsplit("data: ", 1)[1])
    assert "event: complete" in rest and 1 <= len(final[0]) < 4  # stopped early, showing what it finished
