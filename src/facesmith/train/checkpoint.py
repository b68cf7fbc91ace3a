"""Training checkpoints that survive a kill: the folder layout, atomic saves, checked loads.

A checkpoint is `OUTPUT_DIR/checkpoints/step-NNNNNN/` holding
- `trainable.safetensors`: the weights that learn (the whole UNet, or only the LoRA layers), by name;
- `ema.safetensors`: the EMA shadow weights, when EMA is on;
- `train.toml`: the settings it was made with (the run's own `train.toml` as it was then), which the
  resume check compares against as typed `TrainConfig` values;
- `training.pt`: the `TrainState` counters (step, epoch, batch position, start time, last loss, skipped
  steps), optimizer and LR-schedule state and the EMA step count;
- `rng-R.pt`: process R's random states (caption RNG, noise generator, torch's global RNG, CUDA's);
- `process-R.json`: process R's view: its sha256 of the trainable weights, the images it trained on
  since the previous checkpoint, and the sha256 of each file it wrote (`files`).
`save_checkpoint` and `load_checkpoint` are the file layer; what goes into the files (the `TrainState`,
the optimizer, the EMA) and the checks a resume makes of their contents are `state.py`'s. `os.replace` of the finished temporary folder is atomic, so a kill
during a save leaves the previous checkpoint whole and the partial one under a `.tmp` name that
`latest_checkpoint` ignores; a save that fails (a full disk) removes its `.tmp` itself. Older checkpoints
beyond `keep` are removed only after the new one is in place. A resume reads nothing it has not checked:
every file against its recorded sha256 here; every tensor's shape, dtype and finiteness in `state.py`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from facesmith.errors import FacesmithError
from facesmith.models.loading import non_finite
from facesmith.train.config import TrainConfig

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


def good_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that passes a resume's file checks (every file's recorded sha256, readable,
    finite weights): what a stopped run names as the one to go back to, never a corrupt one."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            if not (path / "training.pt").is_file() or not (path / "trainable.safetensors").is_file():
                continue
            _check_files(path, 0)
            for name in ("trainable.safetensors", "ema.safetensors"):
                if (path / name).is_file():
                    tensors = _read(path / name, load_file)
                    if non_finite(tensors):
                        raise FacesmithError(f"{path / name} holds NaN or inf")
        except FacesmithError:
            continue
        return path
    return None


def earlier_checkpoint(path: Path) -> Path | None:
    """The newest complete checkpoint beside `path` with a smaller step: where to go when `path` is bad."""
    match = PATTERN.match(path.name)
    if match is None:
        return None
    earlier = [
        p
        for p in list_checkpoints(path.parent.parent)
        if int(PATTERN.match(p.name).group(1)) < int(match.group(1))
    ]
    return earlier[-1] if earlier else None


def way_out(path: Path) -> str:
    earlier = earlier_checkpoint(path)
    if earlier is None:
        return "no earlier checkpoint is kept: start again in a new output_dir"
    return f"resume from the one before it instead (--resume {earlier})"


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    config: TrainConfig,
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
    """Write the checkpoint of `step` atomically; every process calls it (each writes its own RNG file).

    A save that fails removes its partial folder, so a full disk is not kept full by it; running out of
    space is a FacesmithError that says so.
    """
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a save that was killed earlier
            tmp.mkdir(parents=True)
        barrier()
        written = [f"rng-{rank}.pt"]
        torch.save(rng, tmp / written[0])
        if is_main:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in trainable.items()},
                tmp / "trainable.safetensors",
            )
            written.append("trainable.safetensors")
            if ema is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
                written.append("ema.safetensors")
            config.save(tmp / "train.toml")
            torch.save(training, tmp / "training.pt")
            written += ["train.toml", "training.pt"]
        # What this process did and wrote: lets a person check that DDP ranks agree, and a resume that
        # no file changed since.
        files = {name: _file_sha256(tmp / name) for name in written}
        (tmp / f"process-{rank}.json").write_text(json.dumps({**(process or {}), "files": files}) + "\n")
        barrier()
        if is_main:
            if final.exists():  # the same step saved again (a resumed run re-saving its last step)
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException as error:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            kept = good_checkpoint(output_dir)
            raise FacesmithError(
                f"no space left on the disk of {output_dir} while saving checkpoint {final.name} (the partial "
                f"save was removed): free some space and continue with --resume latest"
                + (f" (from {kept})" if kept else "")
            ) from None
        raise
    if is_main:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, rank: int = 0) -> dict[str, Any]:
    """{'config', 'trainable', 'ema' (or None), 'training', 'rng'} of a checkpoint folder, each file
    checked against the sha256 recorded when it was saved; FacesmithError naming the file otherwise."""
    if not (path / "training.pt").is_file():
        raise FacesmithError(f"{path} is not a complete facesmith checkpoint (no training.pt)")
    if not (path / "train.toml").is_file():
        raise FacesmithError(
            f"{path} has no train.toml: it was made by an older facesmith, whose checkpoints cannot be "
            "resumed; start a new output_dir"
        )
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise FacesmithError(
            f"{path} has no random state for process {rank}: resume with the same process count"
        )
    if not (path / "trainable.safetensors").is_file():
        raise FacesmithError(f"checkpoint {path} has no trainable.safetensors: {way_out(path)}")
    _check_files(path, rank)
    ema_file = path / "ema.safetensors"
    weights_only = dict(map_location="cpu", weights_only=True)
    return {
        "config": TrainConfig.load(path / "train.toml"),
        "trainable": _read(path / "trainable.safetensors", load_file),
        "ema": _read(ema_file, load_file) if ema_file.is_file() else None,
        "training": _read(path / "training.pt", lambda f: torch.load(f, **weights_only)),
        "rng": _read(rng_file, lambda f: torch.load(f, **weights_only)),
    }


def _check_files(path: Path, rank: int) -> None:
    """Every file process 0 and process `rank` recorded at save time, against its sha256 (checkpoints
    from before the record are read unchecked)."""
    recorded: dict[str, str] = {}
    for r in sorted({0, rank}):
        view = path / f"process-{r}.json"
        if view.is_file():
            try:
                recorded.update(json.loads(view.read_text()).get("files", {}))
            except (ValueError, AttributeError) as error:
                raise FacesmithError(
                    f"checkpoint {path}: {view.name} is damaged ({error}); {way_out(path)}"
                ) from None
    for name, digest in recorded.items():
        if not (path / name).is_file():
            raise FacesmithError(f"checkpoint {path} has no {name}: {way_out(path)}")
        if _file_sha256(path / name) != digest:
            raise FacesmithError(
                f"checkpoint {path}: {name} is corrupt (its sha256 differs from the one recorded when it "
                f"was saved); {way_out(path)}"
            )


def _read(file: Path, load: Callable[[Path], Any]) -> Any:
    try:
        return load(file)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        path = file.parent
        reason = str(error).splitlines()[0].split(". ")[0]  # torch's own advice runs on for lines
        raise FacesmithError(
            f"checkpoint {path}: {file.name} is unreadable ({reason}); {way_out(path)}"
        ) from None


def _file_sha256(file: Path) -> str:
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def saved_counters(path: Path) -> dict[str, Any]:
    """The step, epoch, position, start time, last loss and skipped steps a checkpoint's training.pt holds;
    memory-mapped, so the optimizer state beside them stays on disk."""
    training = torch.load(path / "training.pt", map_location="cpu", weights_only=True, mmap=True)
    return {k: training[k] for k in ("step", "epoch", "position", "started_at", "loss", "bad_steps")}


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
