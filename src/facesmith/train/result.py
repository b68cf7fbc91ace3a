"""What a training run left in its folder, read back the same way whether it ran in this process or in
`--num-processes` launched ones: the newest checkpoint's counters, the exports, the sample grids and the
validation summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from facesmith.train.checkpoint import latest_checkpoint, saved_counters
from facesmith.train.export import run_name
from facesmith.train.validation import read_validation


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    exports: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)
    final_loss: float = math.nan
    bad_steps: int = 0
    validation: dict | None = None  # validation.json: losses by step, best_step, best_val_loss


def read_result(output_dir: Path) -> TrainResult:
    """What a run left in its folder: the newest checkpoint's counters, the exports and the sample grids."""
    last = latest_checkpoint(output_dir)
    counters = saved_counters(last) if last else {"step": 0, "loss": math.nan, "bad_steps": 0}
    exports = (f"{run_name(output_dir)}.safetensors", "model", "model.safetensors")
    return TrainResult(
        output_dir,
        counters["step"],
        exports=[output_dir / name for name in exports if (output_dir / name).exists()],
        checkpoint=last,
        samples=sorted((output_dir / "samples").glob("step-*.png")),
        final_loss=counters["loss"],
        bad_steps=counters["bad_steps"],
        validation=read_validation(output_dir),
    )
