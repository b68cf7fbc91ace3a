"""Atomic checkpoints, and the training state they save and restore: a half-written save is never picked
up, old ones are pruned after the new lands, a resume restores every counter and generator, and it is
refused, naming the setting, under settings that would change the weights' layout or the data order."""

from __future__ import annotations

import random

import pytest
import torch

from facesmith.errors import FacesmithError
from facesmith.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    saved_counters,
)
from facesmith.train.config import TrainConfig
from facesmith.train.dataset import BatchStream
from facesmith.train.state import TrainState, resume_training, save_training


def _save(out, step, keep=2):
    return save_checkpoint(
        out,
        step,
        config=TrainConfig(),
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


# A tiny "model": two named tensors, AdamW, a cosine schedule and an EMA, as the trainer has them.
def _learning(seed: int):
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    generator = torch.Generator().manual_seed(seed)
    named = [(n, torch.nn.Parameter(torch.randn(3, generator=generator))) for n in ("a.weight", "b.bias")]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    return dict(named=named, optimizer=optimizer, schedule=schedule, ema=EMAModel(params, decay=0.9))


def _state(config: TrainConfig) -> TrainState:
    stream = BatchStream(
        {(8, 8): list(range(5))}, batch_size=2, rank=0, processes=1, seed=config.seed, flip=True
    )
    return TrainState(data=stream, captions=random.Random(1), noise=torch.Generator().manual_seed(2))


def _train_steps(state: TrainState, learning, steps: int) -> None:
    params = [p for _, p in learning["named"]]
    for _ in range(steps):
        items = next(state.data)
        x = torch.randn(3, generator=state.noise) + state.captions.random() + len(items)
        sum(((p - x) ** 2).sum() for p in params).backward()
        learning["optimizer"].step()
        learning["schedule"].step()
        learning["optimizer"].zero_grad()
        learning["ema"].step(params)
        state.step += 1
        state.loss = float(x.sum())


def test_resume_restores_every_counter_generator_and_tensor_a_straight_run_has(tmp_path):
    config = TrainConfig(seed=4, ema_decay=0.9, keep_checkpoints=5)
    straight, straight_learning = _state(config), _learning(0)
    _train_steps(straight, straight_learning, 5)

    first, first_learning = _state(config), _learning(0)
    _train_steps(first, first_learning, 3)
    first.bad_steps = 1
    path = save_training(tmp_path, first, config, **first_learning)
    assert first.data.seen == []  # the images since the last checkpoint went into process-0.json
    assert saved_counters(path)["step"] == 3 and saved_counters(path)["bad_steps"] == 1

    resumed, resumed_learning = _state(config), _learning(1)  # other initial weights: all overwritten
    resume_training(path, resumed, config, **resumed_learning)
    assert (resumed.step, resumed.data.epoch, resumed.data.position) == (
        3,
        first.data.epoch,
        first.data.position,
    )
    assert (resumed.started_at, resumed.loss, resumed.bad_steps) == (first.started_at, first.loss, 1)
    _train_steps(resumed, resumed_learning, 2)
    assert resumed.loss == straight.loss and resumed.data.epoch == straight.data.epoch == 1
    for (name, a), (_, b) in zip(straight_learning["named"], resumed_learning["named"], strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(
        straight_learning["ema"].shadow_params, resumed_learning["ema"].shadow_params, strict=True
    ):
        assert torch.equal(a, b)


def test_resume_compares_typed_settings_and_names_what_changed(tmp_path):
    config = TrainConfig(seed=4, lora_alpha=16.0, ema_decay=0.9)
    state, learning = _state(config), _learning(0)
    path = save_training(tmp_path, state, config, **learning)
    # An int where the TOML has a float is the same setting (a string comparison saw "16" != "16.0").
    same = TrainConfig(seed=4, lora_alpha=16, ema_decay=0.9, learning_rate=1.0)
    resume_training(path, _state(same), same, **_learning(0))
    changed = TrainConfig(seed=4, lora_alpha=16.0, ema_decay=0.9, batch_size=4, flip=True)
    with pytest.raises(
        FacesmithError, match=r"other settings \(batch_size 1 -> 4, flip False -> True\).*train.toml"
    ):
        resume_training(path, _state(changed), changed, **_learning(0))


def test_a_checkpoint_without_its_settings_is_refused_with_the_way_out(tmp_path):
    path = _save(tmp_path, 1)
    (path / "train.toml").unlink()  # as checkpoints of facesmith before TrainState were
    with pytest.raises(FacesmithError, match="no train.toml.*older facesmith.*new output_dir"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------
# Damaged checkpoints: refused before anything is restored, naming the file and the checkpoint before it.


def _two_checkpoints(tmp_path, config: TrainConfig, ema_nan: bool = False):
    state, learning = _state(config), _learning(0)
    for _ in range(2):
        _train_steps(state, learning, 1)
        if ema_nan:
            learning["ema"].shadow_params[1][0] = float("nan")
        path = save_training(tmp_path, state, config, **learning)
    return path.parent / "step-000001", path


def _rewrite(path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a weights file and its recorded sha256, as a file copied in from another run would be."""
    import hashlib
    import json

    from safetensors.torch import save_file

    save_file(tensors, path / name)
    view = json.loads((path / "process-0.json").read_text())
    view["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "process-0.json").write_text(json.dumps(view))


@pytest.mark.parametrize("name", ["trainable.safetensors", "ema.safetensors", "training.pt", "rng-0.pt"])
def test_a_changed_byte_in_any_checkpoint_file_is_refused_naming_the_checkpoint_before(tmp_path, name):
    config = TrainConfig(seed=4, ema_decay=0.9)
    before, path = _two_checkpoints(tmp_path, config)
    data = bytearray((path / name).read_bytes())
    data[-2] ^= 0x01  # one mantissa bit of the last tensor, or a byte of the zip's directory
    (path / name).write_bytes(bytes(data))
    with pytest.raises(FacesmithError, match=rf"{name} is corrupt .*--resume {before}\)$"):
        resume_training(path, _state(config), config, **_learning(1))


def test_truncated_or_missing_files_are_one_line_naming_the_file(tmp_path):
    config = TrainConfig(seed=4, ema_decay=0.9)
    before, path = _two_checkpoints(tmp_path, config)
    rng = path / "rng-0.pt"
    rng.write_bytes(rng.read_bytes()[:100])
    with pytest.raises(FacesmithError, match=rf"rng-0.pt is corrupt .*--resume {before}\)$"):
        load_checkpoint(path)
    # A checkpoint from before the sha256 record: the read itself fails, in one line.
    (path / "process-0.json").unlink()
    with pytest.raises(
        FacesmithError, match=rf"rng-0.pt is unreadable \(.*\); .*--resume {before}\)$"
    ) as got:
        load_checkpoint(path)
    assert "\n" not in str(got.value)
    (before / "trainable.safetensors").unlink()
    with pytest.raises(FacesmithError, match="has no trainable.safetensors: no earlier checkpoint is kept"):
        load_checkpoint(before)


@pytest.mark.parametrize(
    "wrong",
    [torch.zeros(1), torch.zeros(3, dtype=torch.float64)],
    ids=["broadcastable shape", "dtype"],
)
def test_a_tensor_of_another_shape_or_dtype_is_refused_not_broadcast_or_cast(tmp_path, wrong):
    config = TrainConfig(seed=4, ema_decay=0.9)
    _, path = _two_checkpoints(tmp_path, config)
    saved = load_checkpoint(path)["trainable"]
    _rewrite(path, "trainable.safetensors", {**saved, "a.weight": wrong})
    learning = _learning(1)
    start = learning["named"][0][1].detach().clone()
    with pytest.raises(
        FacesmithError, match=r"trainable.safetensors holds a.weight as \((1|3),\) torch.float"
    ):
        resume_training(path, _state(config), config, **learning)
    assert torch.equal(learning["named"][0][1], start)  # nothing half restored


def test_non_finite_ema_weights_are_refused_on_resume(tmp_path):
    config = TrainConfig(seed=4, ema_decay=0.9)
    _, path = _two_checkpoints(tmp_path, config, ema_nan=True)
    with pytest.raises(
        FacesmithError, match=r"ema.safetensors holds NaN or inf in 1 tensors \(e.g. b.bias\)"
    ):
        resume_training(path, _state(config), config, **_learning(1))


def test_a_full_disk_removes_the_partial_save_and_says_so(tmp_path, monkeypatch):
    import errno

    from facesmith.train import checkpoint

    _save(tmp_path, 1)
    real = checkpoint.save_file

    def disk_full(tensors, path, *args, **kwargs):
        real(tensors, path, *args, **kwargs)
        with open(path, "r+b") as handle:  # what a full disk leaves: a file cut short
            handle.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(FacesmithError, match="no space left on the disk of .* --resume latest") as got:
        _save(tmp_path, 2)
    assert "\n" not in str(got.value) and "step-000001" in str(got.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["trainable"]["w"][0] == 1


def test_the_checkpoint_named_as_good_is_the_newest_that_passes_its_checks(tmp_path):
    """Issue 15 bug 5: the NaN guard named a corrupt newest checkpoint as "the last good checkpoint"."""
    from facesmith.train.checkpoint import good_checkpoint

    config = TrainConfig(seed=4, ema_decay=0.9)
    before, path = _two_checkpoints(tmp_path, config)
    assert good_checkpoint(tmp_path) == path
    data = bytearray((path / "trainable.safetensors").read_bytes())
    data[-2] ^= 0x01
    (path / "trainable.safetensors").write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == path and good_checkpoint(tmp_path) == before
    # Recorded hashes that match, but NaN weights, do not pass either.
    saved = load_checkpoint(before)["trainable"]
    _rewrite(before, "trainable.safetensors", {k: torch.full_like(v, float("nan")) for k, v in saved.items()})
    assert good_checkpoint(tmp_path) is None
