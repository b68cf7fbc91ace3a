"""Sharded weights: size-capped shards round-trip, and a damaged shard is refused by name."""

from __future__ import annotations

import pytest
import torch

from facesmith.errors import FacesmithError
from facesmith.models.shards import load_sharded, save_sharded


def test_round_trip_respects_shard_size(tmp_path):
    state = {f"layer{i}.weight": torch.randn(64, 64) for i in range(6)}  # 16 KiB each
    manifest = save_sharded(state, tmp_path, "unet", max_bytes=40_000, extra={"step": 3})
    assert len(manifest["shards"]) == 3
    for entry in manifest["shards"]:
        assert (tmp_path / entry["file"]).stat().st_size < 50_000
    loaded, meta = load_sharded(tmp_path, "unet")
    assert meta["step"] == 3
    assert set(loaded) == set(state)
    for key in state:
        assert torch.equal(loaded[key], state[key])


def test_altered_shard_fails_its_hash(tmp_path):
    save_sharded({"w": torch.ones(100)}, tmp_path, "unet")
    shard = tmp_path / "unet-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FacesmithError, match="unet-00000.safetensors fails its sha256"):
        load_sharded(tmp_path, "unet")


def test_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(FacesmithError, match="missing"):
        load_sharded(tmp_path, "unet")
