"""`facesmith edit`: change a face's attributes in a photo (`edit.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facesmith.cli.app import app, stage_config
from facesmith.edit import EDITS, SETTINGS, EditConfig
from facesmith.terminal import Bars, guarded, out


@app.command()
def edit(
    photo: Annotated[Path, typer.Argument(help="A photo with a face in it.")],
    add: Annotated[
        list[str] | None, typer.Option(help=f"Give the face one of: {', '.join(EDITS)}; repeat.")
    ] = None,
    remove: Annotated[list[str] | None, typer.Option(help="Take one of the same away; repeat.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="KEY=VALUE: " + "; ".join(f"{k}={'|'.join(v)}" for k, v in SETTINGS.items())
        ),
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="img2img strength, (0, 1] [default: the edit's own, 0.5-0.7].")
    ] = None,
    steps: Annotated[int | None, typer.Option(help=f"Denoising steps [default: {EditConfig.steps}].")] = None,
    seed: Annotated[int | None, typer.Option(help=f"Seed [default: {EditConfig.seed}].")] = None,
    model: Annotated[
        str | None, typer.Option(help="Diffusers folder or .safetensors [default: built-in].")
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("-o", "--out", help="Output folder [default: outputs].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from an edit.toml.")] = None,
) -> None:
    """Change the attributes of the main face in PHOTO (glasses, smile, age, hair), keeping the person.

    E.g. `facesmith edit me.jpg --add eyeglasses --set age=senior`: the face is aligned, re-captioned from
    its predicted attributes plus the changes, redrawn and pasted back."""

    def work():
        from facesmith.edit import run_edit

        given = {
            "photo": str(photo), "add": add or None, "remove": remove or None, "set": set_ or None,
            "strength": strength, "steps": steps, "seed": seed, "model": model, "out_dir": out_dir,
            "device": device,
        }  # fmt: skip
        settings = stage_config(EditConfig, config, given)
        with Bars() as bars:
            paths = run_edit(settings, progress=bars)
        for path in paths:
            out.print(str(path), highlight=False)

    guarded(work)
