"""ServeConfig (serve/config.py): defaults, --api-auth, and `serve --config serve.toml` like every stage."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import facesmith.serve
from facesmith.cli import app as cli
from facesmith.errors import FacesmithError
from facesmith.serve.config import ServeConfig, credentials
from factory import one_line_error


def test_defaults_are_the_documented_ones():
    config = ServeConfig()
    assert (config.host, config.port, config.api_auth) == ("127.0.0.1", 7860, None)
    assert (config.max_batch, config.max_steps, config.max_size, config.max_queue) == (8, 150, 1024, 64)
    assert config.validate() is config


def test_credentials_follow_a1111s_flag():
    assert credentials("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
    for bad in ("nopassword", ":x", "a:"):
        with pytest.raises(FacesmithError, match="user:pass"):
            credentials(bad)


def test_serve_reads_a_toml_and_flags_override_it(tmp_path, monkeypatch):
    served = []
    monkeypatch.setattr(facesmith.serve, "run_serve", lambda config, announce: served.append(config))
    toml = ServeConfig(port=7999, max_steps=20, loras=["a.safetensors:0.5"]).save(tmp_path / "serve.toml")
    result = CliRunner().invoke(cli, ["serve", "--config", str(toml), "--max-batch", "3"])
    assert result.exit_code == 0, result.output
    assert served == [ServeConfig(port=7999, max_steps=20, max_batch=3, loras=["a.safetensors:0.5"])]


def test_a_typo_in_serve_toml_is_one_line(tmp_path):
    (tmp_path / "serve.toml").write_text("prot = 7999\n")
    one_line_error(CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "serve.toml")]), "prot")
