"""What facesmith's commands show on the terminal: results on stdout, progress bars and one-line errors
and warnings on stderr, and no library chatter.

`guarded` runs a command's work: a FacesmithError becomes one red line and exit status 2, facesmith's
own warnings (a cut prompt, a NaN VAE decode: any warning class defined in a facesmith module) become
yellow lines, every other warning and library log is silenced. `Bars` is the `facesmith.progress`
interface drawn as rich progress bars. The commands themselves are the `cli` package's.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from facesmith.errors import FacesmithError
from facesmith.library_logs import quiet_libraries

out = Console(markup=False)  # results are data (paths, JSON, prompts): brackets stay as they are
err = Console(stderr=True)


def guarded(work: Callable[[], Any], models: bool = True) -> Any:
    """Run `work`, turning user mistakes into one red line and exit status 2.

    `models`: switch off diffusers' and transformers' progress bars first, which imports them (and torch);
    a command that checks its input before loading a model passes False and calls `quiet_libraries()`
    itself once the input is good."""
    quiet_libraries(models)
    try:
        with warnings.catch_warnings():
            # Every warning reaches _show_warning, which prints facesmith's own and drops the libraries'.
            # Telling them apart by the module that defines the class, rather than importing the
            # classes, keeps torch unimported until a command's input has been checked.
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            return work()
    except FacesmithError as error:
        # escape: a message is plain text; "pip install 'facesmith[serve]'" must keep its brackets
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        # A Ctrl-C that a stage turned into advice (train: where its checkpoint is) exits as Ctrl-C does.
        raise typer.Exit(130 if isinstance(error, KeyboardInterrupt) else 2) from None
    except KeyboardInterrupt:
        # Under a multi-process launch the launcher speaks for every process; alone, say it in one line.
        if os.environ.get("RANK", "0") == "0":
            err.print("[yellow]interrupted[/]", highlight=False)
        raise typer.Exit(130) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if not category.__module__.startswith("facesmith."):  # a library's warning is not the user's business
        return
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


class Bars:
    """The command line's `facesmith.progress.Progress`: one rich bar per stage name, on stderr.

    Beside the count it shows a `loss` field when one is given, and for the stages in RATES a rate and
    an ETA measured from the first report the stage made (a resumed run starts past 0).
    """

    RATES = {"preparing": "img/s", "training": "it/s"}

    def __init__(self, disable: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=disable,
        )
        self.tasks: dict[str, int] = {}
        self.first: dict[str, tuple[int, float]] = {}  # (done, time) of each stage's first report
        self.waiting: set[str] = set()  # stages whose length is not known (yet)

    def __enter__(self) -> Bars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int | None, **fields: float) -> None:
        if stage not in self.tasks:
            for waiting in self.waiting:  # a stage of unknown length was only a "please wait"
                self.bars.update(self.tasks[waiting], visible=False)
            self.tasks[stage] = self.bars.add_task(stage, total=total, note="")
            self.first[stage] = (done, time.perf_counter())
        if total is None:
            self.waiting.add(stage)
        else:
            self.waiting.discard(stage)
        self.bars.update(
            self.tasks[stage], completed=done, total=total, note=self._note(stage, done, total, fields)
        )

    def _note(self, stage: str, done: int, total: int | None, fields: dict[str, float]) -> str:
        parts = []
        (done0, t0), now = self.first[stage], time.perf_counter()
        if stage in self.RATES and done > done0 and now > t0:
            rate = (done - done0) / (now - t0)
            parts.append(f"{rate:.1f} {self.RATES[stage]}")
            if total is not None:
                left = (total - done) / rate
                parts.append(f"ETA {int(left // 60)}:{int(left % 60):02d}")
        if fields.get("loss") is not None:
            parts.append(f"{'avr_loss' if stage == 'training' else 'loss'} {fields['loss']:.4f}")
        return "  ".join(parts)
