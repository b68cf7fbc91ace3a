"""Training checkpoints that survive a kill: written to a temporary folder, then renamed into place.

A checkpoint is `OUTPUT_DIR/checkpoints/step-NNNNNN/` holding
- `trainable.safetensors`: the weights that learn (the whole UNet, or only the LoRA layers), by name;
- `ema.safetensors`: the EMA shadow weights, when EMA is on;
- `training.pt`: optimizer and LR-schedule state, EMA counters, the data position and the config;
- `rng-R.pt`: process R's random states (caption RNG, noise generator, torch's global RNG, CUDA's);
- `process-R.json`: process R's view: its sha256 of the trainable weights and the images it
  trained on since the previous checkpoint.
`os.replace` of the finished temporary folder is atomic, so a kill during a save leaves the previous
checkpoint whole and the partial one under a `.tmp` name that `latest_checkpoint` ignores. Older
checkpoints beyond `keep` are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from facesmith.errors import FacesmithError

PATTERN = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = output_dir / "checkpoints"
    found = (
        [p for p in folder.glob("step-*") if p.is_dir() and PATTERN.match(p.name)] if folder.is_dir() else []
    )
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    training: dict[str, Any],
    rng: dict[str, Any],
    process: dict[str, Any] | None = None,
    rank: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of `step` atomically; every process calls it (each writes its own RNG file)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that was killed earlier
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng, tmp / f"rng-{rank}.pt")
    if process is not None:  # what this process did: lets a person check that DDP ranks agree
        (tmp / f"process-{rank}.json").write_text(json.dumps(process) + "\n")
    if is_main:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors"
        )
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        torch.save(training, tmp / "training.pt")
    barrier()
    if is_main:
        if final.exists():  # the same step saved again (a resumed run re-saving its last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, rank: int = 0) -> dict[str, Any]:
    """{'trainable', 'ema' (or None), 'training', 'rng'} of a checkpoint folder."""
    if not (path / "training.pt").is_file():
        raise FacesmithError(f"{path} is not a complete facesmith checkpoint (no training.pt)")
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise FacesmithError(
            f"{path} has no random state for process {rank}: resume with the same process count"
        )
    ema_file = path / "ema.safetensors"
    return {
        "trainable": load_file(path / "trainable.safetensors"),
        "ema": load_file(ema_file) if ema_file.is_file() else None,
        "training": torch.load(path / "training.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(rng_file, map_location="cpu", weights_only=True),
    }


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """`--resume latest` -> the newest complete checkpoint (None if there is none yet), or a given folder."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FacesmithError(f"--resume {resume}: no such checkpoint folder (or use --resume latest)")
    return path
