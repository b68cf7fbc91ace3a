"""The served app: HTTP Basic auth, local-only binding, server limits, and the command's own errors."""

from __future__ import annotations

import json

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
    auth = ",".join(f"{u}:{p}" for u, p in USERS)
    running = start_server(
        tmp_path_factory.mktemp("guarded"), ["--model", str(sd15_folder), "--api-auth", auth], auth=USERS[0]
    )
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
