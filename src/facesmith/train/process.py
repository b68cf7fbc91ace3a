"""How one training process runs: its Accelerator, and the optimizer step that Ctrl-C cannot cut in two.

`make_accelerator` picks the mixed precision (bf16 where CUDA has it, else fp32), resets Accelerate's
process-wide state so a second run in one process may choose another, sets TF32 and the compile cache,
and refuses `compile` off CUDA. `interrupts_deferred` holds SIGINT over a block (Kohya's scripts save on
interrupt; facesmith additionally never lets one land between two parameters' updates).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C that arrives inside the block until the block is done, then deliver it.

    The optimizer, LR-schedule and EMA updates of one step must all happen or none: a KeyboardInterrupt
    between two parameters' updates would leave weights that no step count describes. Signals reach only
    the main thread, so elsewhere there is nothing to hold.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: held.append((number, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(*held[0])


def make_accelerator(config: TrainConfig, out: Path):
    """(Accelerator, its mixed precision) for this run, after the process-wide settings it needs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    precision = config.mixed_precision
    if precision is None:
        bf16 = not config.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "no"
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, a notebook) may use another precision. The distributed state itself is kept.
    AcceleratorState._reset_state()
    if config.compile:
        from facesmith.engines import configure_compile_cache

        configure_compile_cache()  # inductor's caches persist, so a resumed chunk compiles from cache
    if torch.cuda.is_available() and not config.cpu:
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=config.cpu,
        dynamo_backend="inductor" if config.compile else None,
        log_with="tensorboard" if config.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if config.compile and accelerator.device.type != "cuda":
        raise FacesmithError(
            "compile = true trains on CUDA only: on a CPU, torch's inductor gave wrong UNet gradients "
            "(benchmarks/NOTES.md, 2026-11-25); set compile = false"
        )
    return accelerator, precision
