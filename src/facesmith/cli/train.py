"""`facesmith train`: full fine-tune, LoRA, or a preset from scratch; every setting is also a flag."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from facesmith.cli.app import app, stage_config
from facesmith.errors import FacesmithError
from facesmith.flags import flag_summary, parse_flags
from facesmith.library_logs import quiet_libraries
from facesmith.terminal import Bars, err, guarded, out
from facesmith.train.config import TrainConfig


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Every setting is also a flag (--flip / --no-flip for switches; see the README's Training "
    "section). Settings and defaults:  " + flag_summary(TrainConfig),
)
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="Start from a train.toml (a run folder has one).")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Start from a named recipe, e.g. face-small (the default model).")
    ] = None,
) -> None:
    """Fine-tune (full or LoRA) or train a preset from scratch on a dataset folder; flags override the TOML."""

    def work():
        from facesmith.train.presets import RECIPES

        if recipe is not None and recipe not in RECIPES:
            raise FacesmithError(f"unknown recipe {recipe!r}: pick one of {', '.join(RECIPES)}")
        base = TrainConfig(**RECIPES[recipe]) if recipe is not None and config is None else None
        settings = stage_config(TrainConfig, config, {}, base=base)
        # Flags are given values even when they say "none" (`--resolution none`), so they go on as they are.
        settings = dataclasses.replace(settings, **parse_flags(TrainConfig, list(ctx.args))).validate()
        quiet_libraries()  # torch and the trainer only once the settings are good
        from facesmith.train.trainer import run_train

        # Under a multi-process launch only the first process draws the bar and names the files.
        quiet = os.environ.get("RANK", "0") != "0"
        with Bars(disable=quiet) as bars:
            result = run_train(settings, progress=bars)
        if not quiet:
            loss = "" if math.isnan(result.final_loss) else f", last loss {result.final_loss:.4f}"
            err.print(f"trained {result.steps} steps{loss}", highlight=False, markup=False)
        for path in [] if quiet else result.exports:
            out.print(str(path), highlight=False, soft_wrap=True)

    guarded(work, models=False)
