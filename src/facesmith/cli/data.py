"""`facesmith prepare`: face photos in, an aligned, captioned dataset folder out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from facesmith.cli.app import app, stage_config
from facesmith.terminal import Bars, guarded, out


@app.command()
def prepare(
    sources: Annotated[list[Path] | None, typer.Argument(help="Folders of face photos.")] = None,
    out_dir: Annotated[str | None, typer.Option("-o", "--out", help="Dataset folder to write.")] = None,
    size: Annotated[
        int | None, typer.Option(help="Side of the square crops in pixels [default: 512].")
    ] = None,
    aligned: Annotated[
        bool | None, typer.Option("--aligned", help="Faces are already aligned: centre-crop, no detection.")
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="auto, celeba, utkface, kohya, imagefolder or folder [default: auto].")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes [default: one per CPU core].")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a prepare.toml.")] = None,
) -> None:
    """Turn face photos into an aligned, captioned dataset folder (metadata.jsonl, report.md)."""

    def work():
        from facesmith.data.config import PrepareConfig
        from facesmith.data.prepare import run_prepare

        given = {
            "sources": [str(s) for s in sources] if sources else None, "out_dir": out_dir, "size": size,
            "aligned": aligned, "format": format, "workers": workers,
        }  # fmt: skip
        with Bars() as bars:
            folder = run_prepare(stage_config(PrepareConfig, config, given), progress=bars)
        summary = json.loads((folder / "report.json").read_text())
        advice = f"; {summary['advice']}" if summary.get("advice") else ""
        out.print(
            f"{folder}: kept {summary['kept']} of {summary['total']}{advice}; see {folder / 'report.md'}"
        )

    guarded(work, models=False)
