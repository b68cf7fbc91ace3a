"""The libraries' own logs, progress bars and notices, kept off the terminal: facesmith shows its own.

Shared by the CLI (`terminal.guarded`) and the Python API (`facesmith.load`), so both are equally quiet.
Imports nothing heavy unless `models` asks it to switch off diffusers' and transformers' progress bars.
"""

from __future__ import annotations

import logging
import os


def quiet_libraries(models: bool = True) -> None:
    """Keep library logs and their own progress bars off the terminal; facesmith shows its own.

    `models`: also switch off diffusers' and transformers' progress bars (imports both)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers", "transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if models:
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
