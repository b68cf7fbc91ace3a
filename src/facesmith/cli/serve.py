"""`facesmith serve`: the web page and the A1111-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facesmith.cli.app import app, stage_config
from facesmith.serve.config import ServeConfig
from facesmith.terminal import err, guarded


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="Diffusers folder or .safetensors [default: the built-in model].")
    ] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA FILE[:WEIGHT] to offer; repeat.")] = None,
    embedding: Annotated[
        list[str] | None, typer.Option(help="Textual-inversion FILE that prompts may call by name; repeat.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help=f"0.0.0.0 opens it to the network [default: {ServeConfig.host}].")
    ] = None,
    port: Annotated[int | None, typer.Option(help=f"TCP port [default: {ServeConfig.port}].")] = None,
    api_auth: Annotated[str | None, typer.Option(help="user:pass[,user2:pass2]: HTTP Basic auth.")] = None,
    max_batch: Annotated[
        int | None, typer.Option(help=f"Most images per request [default: {ServeConfig.max_batch}].")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help=f"Most steps per image [default: {ServeConfig.max_steps}].")
    ] = None,
    max_size: Annotated[
        int | None, typer.Option(help=f"Most pixels per side [default: {ServeConfig.max_size}].")
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(help=f"Most jobs waiting; more get HTTP 503 [default: {ServeConfig.max_queue}]."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    allow_pickle: Annotated[
        bool | None, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a serve.toml.")] = None,
) -> None:
    """Serve a web page and an AUTOMATIC1111-compatible API (/sdapi/v1) for one model."""

    def work():
        from facesmith.serve import run_serve

        given = {
            "model": model, "loras": lora or None, "embeddings": embedding or None, "device": device, "dtype": dtype, "allow_pickle": allow_pickle,
            "host": host, "port": port, "api_auth": api_auth, "max_batch": max_batch, "max_steps": max_steps,
            "max_size": max_size, "max_queue": max_queue,
        }  # fmt: skip
        settings = stage_config(ServeConfig, config, given)
        run_serve(
            settings, announce=lambda line: err.print(line, highlight=False, soft_wrap=True, markup=False)
        )

    guarded(work)
