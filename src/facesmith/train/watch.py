"""What a person watching a run sees besides the bars: Kohya's running loss and plain progress lines.

`RunningLoss` is sd-scripts' `LossRecorder`: the mean of the last epoch's step losses (`avr_loss`), so
the curve a user reads is not one noisy step's. `PlainProgress` prints one line to stderr every
`every` steps or `seconds` when stderr is not a terminal (nohup, CI, `| tee`), where bars draw nothing:
step, average loss, it/s and ETA, and the phases that take time ("sampling", "exporting"). Where the
numbers go in TensorBoard is the trainer's business.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from typing import TextIO


class RunningLoss:
    """Mean of the last `window` finite step losses (Kohya: one epoch of steps)."""

    def __init__(self, window: int) -> None:
        self.losses: collections.deque[float] = collections.deque(maxlen=max(1, window))

    def add(self, loss: float) -> float:
        if math.isfinite(loss):
            self.losses.append(loss)
        return self.average

    @property
    def average(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


def duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 65 -> '1m05s', 7 -> '7s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PlainProgress:
    """One plain line every `every` steps or `seconds`, on a stream that is not a terminal."""

    def __init__(
        self, total: int, every: int, seconds: float = 60.0, stream: TextIO | None = None, force: bool = False
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.total, self.every, self.seconds = total, every, seconds
        self.start: tuple[int, float] | None = None
        self.last = time.monotonic()

    def step(self, step: int, average: float, lr: float) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = (step - 1, now - 1e-9)  # a resumed run starts past 0
        due = step % self.every == 0 or step == self.total or now - self.last >= self.seconds
        if not self.enabled or not due:
            return
        rate = (step - self.start[0]) / max(1e-9, now - self.start[1])
        eta = duration((self.total - step) / rate) if rate > 0 else "?"
        self.say(f"step {step}/{self.total}  avr_loss {average:.4f}  lr {lr:.3g}  {rate:.2f} it/s  ETA {eta}")
        self.last = now

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"train: {text}", file=self.stream, flush=True)
