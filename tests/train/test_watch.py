"""Kohya's running loss and the plain progress lines a run prints where stderr is not a terminal."""

from __future__ import annotations

import io
import math

from facesmith.train.watch import PlainProgress, RunningLoss, duration


def test_running_loss_is_the_mean_of_the_last_epoch_and_skips_non_finite_steps():
    running = RunningLoss(window=3)
    assert math.isnan(running.average)
    assert [running.add(x) for x in (1.0, 2.0, 3.0, 7.0)] == [1.0, 1.5, 2.0, 4.0]
    assert running.add(math.nan) == 4.0


def test_plain_lines_every_n_steps_only_off_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = io.StringIO()
    plain = PlainProgress(total=5, every=2, seconds=1e9, stream=stream)
    for step in range(1, 6):
        plain.step(step, 0.25, 1e-4)
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]
    assert lines[0].startswith("train: step 2/5  avr_loss 0.2500  lr 0.0001  ") and " it/s  ETA " in lines[0]
    terminal = Terminal()
    PlainProgress(total=5, every=1, stream=terminal).step(1, 0.1, 1e-4)
    assert terminal.getvalue() == ""  # the bars speak there
    assert (duration(3725), duration(65), duration(7)) == ("1h02m05s", "1m05s", "7s")
