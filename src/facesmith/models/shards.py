"""Sharded safetensors with sha256 checks: how the default model's weights are stored.

Owns: splitting a state dict into safetensors files of at most a set size
(the repository keeps files under 16 MiB, and the GPU machine returns files
no larger than that), a ``manifest.json`` that lists every shard with its
sha256, and loading them back with each hash checked, so a truncated or
altered shard is refused instead of producing a broken model.

Why our own code: diffusers' ``save_pretrained(max_shard_size=...)`` shards
too, but records no hashes; we need the check at load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from facesmith.errors import FacesmithError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_sharded(
    state: dict[str, torch.Tensor],
    directory: str | Path,
    prefix: str,
    max_bytes: int = 15_000_000,
    extra: dict | None = None,
) -> dict:
    """Write ``prefix-0000i.safetensors`` shards and ``prefix.json``; return the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        tensor = state[key].contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    entries = []
    for i, shard in enumerate(shards):
        name = f"{prefix}-{i:05d}.safetensors"
        save_file(shard, directory / name)
        entries.append({"file": name, "sha256": sha256_of(directory / name)})
    manifest = {"shards": entries, **(extra or {})}
    (directory / f"{prefix}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_sharded(directory: str | Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read shards listed in ``prefix.json``, checking each sha256 first."""
    directory = Path(directory)
    manifest_path = directory / f"{prefix}.json"
    if not manifest_path.is_file():
        raise FacesmithError(f"{manifest_path} is missing: reinstall facesmith or pass --model")
    manifest = json.loads(manifest_path.read_text())
    state: dict[str, torch.Tensor] = {}
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        if not path.is_file():
            raise FacesmithError(f"weight shard {path} is missing: reinstall facesmith")
        if sha256_of(path) != entry["sha256"]:
            raise FacesmithError(
                f"weight shard {path} fails its sha256 check (corrupt or altered): reinstall facesmith"
            )
        state.update(load_file(path))
    return state, manifest
