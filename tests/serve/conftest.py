"""Servers for the serve tests: `facesmith serve` started as a real process on a free port.

The server processes run with a network guard (a `sitecustomize` on their PYTHONPATH) that refuses and
records every connection or name lookup outside this machine, so a test can prove nothing phoned home.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

NETWORK_GUARD = textwrap.dedent(
    """
    import os, socket

    _LOG = os.environ["FACESMITH_TEST_NET_LOG"]
    _LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::"}

    def _refuse(what):
        with open(_LOG, "a") as handle:
            handle.write(f"{what}\\n")
        raise OSError(f"test network guard: {what} is outside this machine")

    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and str(address[0]) not in _LOCAL:
            _refuse(f"connect {address[0]}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and str(address[0]) not in _LOCAL:
            _refuse(f"connect {address[0]}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and str(host) not in _LOCAL:
            _refuse(f"lookup {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    """
)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    net_log: Path

    def outbound(self) -> list[str]:
        return self.net_log.read_text().splitlines() if self.net_log.exists() else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, args: list[str], auth: tuple[str, str] | None = None) -> Server:
    """Run `facesmith serve ARGS --port FREE` and wait until it answers; fail with its log if it dies."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "guard").mkdir(exist_ok=True)
    (folder / "guard" / "sitecustomize.py").write_text(NETWORK_GUARD)
    port = free_port()
    log, net_log = folder / "server.log", folder / "outbound.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder / "guard"), os.environ.get("PYTHONPATH", "")]),
        "FACESMITH_TEST_NET_LOG": str(net_log),
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
    }
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "facesmith.cli", "serve", *args, "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, net_log)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"facesmith serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(server.url + "/sdapi/v1/options", auth=auth, timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(0.3)
    stop_server(server)
    pytest.fail(f"facesmith serve did not answer within 120 s:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


LIMITS = {"max_batch": 4, "max_steps": 60, "max_size": 128}


@pytest.fixture(scope="session")
def server(sd15_folder, tmp_path_factory):
    """One server on the tiny SD1.5 model, shared by the API, load and browser tests."""
    args = ["--model", str(sd15_folder)]
    for name, value in LIMITS.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    running = start_server(tmp_path_factory.mktemp("server"), args)
    yield running
    stop_server(running)
