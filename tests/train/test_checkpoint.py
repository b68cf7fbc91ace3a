"""Atomic checkpoints: a half-written save is never picked up; old ones are pruned after the new lands."""

from __future__ import annotations

import pytest
import torch

from facesmith.errors import FacesmithError
from facesmith.train.checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint


def _save(out, step, keep=2):
    return save_checkpoint(
        out,
        step,
        trainable={"w": torch.full((2,), float(step))},
        ema=None,
        training={"step": step},
        rng={"noise": torch.Generator().get_state()},
        keep=keep,
    )


def test_a_killed_save_leaves_the_previous_checkpoint_as_latest(tmp_path):
    _save(tmp_path, 1)
    # What a kill mid-save leaves behind: a temporary folder without all files.
    partial = tmp_path / "checkpoints" / "step-000002.tmp"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-000001"
    assert load_checkpoint(latest_checkpoint(tmp_path))["trainable"]["w"][0] == 1
    _save(tmp_path, 2)  # the next save replaces the debris
    assert latest_checkpoint(tmp_path).name == "step-000002" and not partial.exists()


def test_keeps_the_newest_and_resolves_resume(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]
    assert resolve_resume(tmp_path, "latest").name == "step-000003"
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(FacesmithError, match="no such checkpoint folder"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(FacesmithError, match="no random state for process 1"):
        load_checkpoint(latest_checkpoint(tmp_path), rank=1)
