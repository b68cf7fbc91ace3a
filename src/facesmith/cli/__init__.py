"""The `facesmith` command line: parse, build a config, call a stage, print.

`app.py` holds the Typer app and `stage_config` (options -> config dataclass); each stage group has its own
module of thin commands: `generate` (generate, samplers, info, noise), `edit`, `data` (prepare), `train`,
`evaluate` (evaluate, attributes) and `serve`. Importing this package registers them all, in the order
`facesmith --help` lists them.
"""

# isort: off
import facesmith.cli.generate  # noqa: F401  (each import registers its commands)
import facesmith.cli.edit  # noqa: F401
import facesmith.cli.data  # noqa: F401
import facesmith.cli.train  # noqa: F401
import facesmith.cli.evaluate  # noqa: F401
import facesmith.cli.serve  # noqa: F401

# isort: on
from facesmith.cli.app import app, main

__all__ = ["app", "main"]
