"""Several training processes on one machine: `--num-processes N` relaunches the run N times.

On CUDA through `accelerate launch --multi_gpu`, on the CPU through torch's elastic launcher (gloo), each
process reading OUTPUT_DIR/train.toml; `trainer.py` then splits every global batch across them. This module
only launches: what the processes made is read back from the run folder (`result.read_result`). On
Ctrl-C it waits for the processes to stop and says, once, which checkpoint to resume from.
DeepSpeed, FSDP and multi-node runs are Accelerate's own: `accelerate launch --config_file ...`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig


class TrainingInterrupted(FacesmithError, KeyboardInterrupt):
    """Ctrl-C stopped the run: a KeyboardInterrupt to callers, with the one line the CLI prints (where the
    checkpoint is and how to resume)."""


def interrupted_message(output_dir: Path) -> str:
    """The line a person reads after Ctrl-C: where the newest checkpoint is and the command that resumes."""
    from facesmith.train.checkpoint import latest_checkpoint

    kept = latest_checkpoint(output_dir)
    command = f"facesmith train --config {output_dir / 'train.toml'}"
    if kept is None:
        return f"interrupted before the first checkpoint, so nothing was saved: start again with `{command}`"
    return f"interrupted; the newest checkpoint is {kept}: continue with `{command} --resume latest`"


def launch_processes(config: TrainConfig) -> None:
    """Run the same training in `num_processes` processes: `accelerate launch --multi_gpu` on CUDA,
    torch's elastic launcher (gloo) on the CPU. Each process reads OUTPUT_DIR/train.toml.

    For DeepSpeed, FSDP or several machines, call `accelerate launch --config_file ... -m facesmith.cli
    train --config train.toml` yourself; the training code is the same.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = config.save(out / "train.toml")
    n = str(config.num_processes)
    program = ["-m", "facesmith.cli", "train", "--config", str(path)]
    if config.cpu or not torch.cuda.is_available():
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", n]
        command += ["--master_addr", "127.0.0.1", "--master_port", port, *program]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", n]
        command += program
    launched = subprocess.Popen(command)
    try:
        status = launched.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the processes too; a `kill -INT` of this one alone did not.
        launched.send_signal(signal.SIGINT)
        launched.wait()
        raise TrainingInterrupted(interrupted_message(out)) from None
    if status != 0:
        raise FacesmithError(
            f"the {n} training processes failed (exit status {status}); see their output above"
        )
