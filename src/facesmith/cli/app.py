"""The Typer app every command registers on, and how a command's options become its stage config.

Every command is thin: `stage_config` makes its config dataclass (a TOML or the defaults, then the
options that were given: every option defaults to None, so the dataclass holds the only default), one
stage function validates it and does the work, and the result is printed. What reaches the terminal
(progress bars, one-line errors and warnings) is `terminal.py`'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from facesmith.config import StageConfig

app = typer.Typer(
    rich_markup_mode=None,  # help text is plain: "[default: 50]" must not be read as rich markup
    add_completion=False,
    no_args_is_help=True,
    help="Generate faces with Stable Diffusion, offline. Run `facesmith COMMAND --help` for details.",
)


def main() -> None:
    app()


def stage_config(cls: type[StageConfig], toml: Path | None, given: dict[str, Any], base=None):
    """`base` (else the TOML at `toml`, else `cls`'s defaults) with the `given` options on top; an option
    given as None was not given (every option's default), so the dataclass keeps its own default."""
    if base is None:
        base = cls.load(toml) if toml is not None else cls()
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
