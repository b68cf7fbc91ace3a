"""The one progress interface every stage reports through.

A stage that runs for a while takes `progress: Progress | None` and calls it as
`progress(stage, done, total, **fields)`: `stage` names the phase a person sees ("loading model",
"sampling", "preparing", "training", "features", ...), `done` of `total` units are finished (`total` None
while it is not known yet), and `fields` carries numbers worth showing beside the bar (a training loss,
images per second). The CLI draws one bar per stage name; the Python API may pass any callable of this
shape, or None for silence.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None, **fields: float) -> None: ...
