"""Where a model comes from: resolving `--model SRC` to a diffusers pipeline, offline.

A source is one of
- None: the default model shipped in `facesmith/weights/default_model/` (`load_default_model`);
- a folder in the default model's layout (`unet.json` + sha256-checked UNet shards), as `facesmith train`
  exports fine-tunes of the default model and presets trained from scratch;
- a diffusers folder (with `model_index.json`) of a StableDiffusion or StableDiffusionXL pipeline;
- a single original-layout checkpoint (`single_file.py`): `.safetensors`, or a pickle with allow_pickle.
Returns a `LoadedModel`: the pipeline plus the name and files that PNG metadata records. LoRAs, devices
and sampling are the business of `lora.py` and `generate.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facesmith.errors import FacesmithError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default_model"
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


@dataclass
class LoadedModel:
    pipe: Any
    name: str  # as A1111 writes "Model: ..."
    source: str | None  # absolute path, or None for the default model
    weight_files: list[Path] = field(default_factory=list)  # hashed for "Model hash"
    default_sampler: str = "DDIM"  # used when a run names none
    default_cfg: float = 7.5  # likewise for the guidance scale
    _hash: str | None = None

    def model_hash(self) -> str | None:
        """A1111's AutoV2 hash: the first 10 hex digits of the weights' sha256 (UNet files for folders)."""
        if self._hash is None and self.weight_files:
            self._hash = cached_sha256(self.weight_files)[:10]
        return self._hash


def cached_sha256(files: list[Path]) -> str:
    """sha256 over `files`, remembered by path, size and mtime (hashing an SDXL file takes seconds).

    The cache is `$FACESMITH_CACHE_DIR` or `~/.cache/facesmith`, `model-hashes.json`; an unwritable
    cache only costs the time.
    """
    from facesmith.engines import cache_root

    cache_file = cache_root() / "model-hashes.json"
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass
    return cache[key]


def load_model(source: str | os.PathLike | None, *, allow_pickle: bool = False) -> LoadedModel:
    """Resolve `source` and build its pipeline; FacesmithError for anything missing or unknown."""
    if source is None or str(source) == "":
        return load_default_model()
    path = Path(source).expanduser()
    if not path.exists():
        raise FacesmithError(f"model {source} does not exist: pass a diffusers folder or a .safetensors file")
    if not os.access(path, os.R_OK):
        raise FacesmithError(f"model {source} is not readable: check its permissions")
    path = path.resolve()
    from facesmith.models.default_model import is_default_model

    if path.is_dir() and is_default_model(path):
        return load_default_model(path)
    if path.is_dir():
        pipe = load_diffusers_folder(path)
        check_finite(pipe, str(path))
        return LoadedModel(pipe, path.name, str(path), _unet_files(path))
    from facesmith.models.single_file import load_single_file

    pipe = load_single_file(path, allow_pickle=allow_pickle)
    check_finite(pipe, str(path))
    return LoadedModel(pipe, path.stem, str(path), [path])


def non_finite(tensors) -> list[str]:
    """Names of the floating-point tensors in the mapping `tensors` that hold NaN or inf (the one check
    behind models, LoRAs, checkpoints and exports)."""
    import torch

    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all())
    ]


def check_finite(pipe, source: str) -> None:
    """FacesmithError when a model's weights hold NaN or inf: they would only draw black images.

    One pass over the weights (about a second for SD 1.5 on a CPU); the embedded model is checked by
    sha256 instead.
    """
    import torch

    bad = non_finite(
        {
            f"{name}.{key}": tensor
            for name, component in pipe.components.items()
            if isinstance(component, torch.nn.Module)
            for key, tensor in component.state_dict().items()
        }
    )
    if bad:
        raise FacesmithError(
            f"model {source}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]}), so every image "
            "would be black: the file is corrupt; use another copy"
        )


def load_default_model(directory: Path | None = None) -> LoadedModel:
    """The model embedded in the package (`default_model.py` builds it; shards are sha256-checked), or a
    folder in its layout (`unet.json` + shards): what `facesmith train` exports for the default model and
    for presets trained from scratch."""
    from facesmith.models.default_model import (
        DEFAULT_MODEL_CFG,
        build_default_pipeline,
        default_model_files,
        is_default_model,
    )

    if directory is None and not is_default_model(DEFAULT_MODEL_DIR):
        raise FacesmithError(
            f"the default model is not installed (expected in {DEFAULT_MODEL_DIR}): pass --model with a "
            "diffusers folder or a .safetensors checkpoint"
        )
    folder = DEFAULT_MODEL_DIR if directory is None else directory
    pipe = build_default_pipeline(folder)
    if directory is not None:
        check_finite(pipe, str(directory))
    return LoadedModel(
        pipe,
        "facesmith-default" if directory is None else directory.name,
        None if directory is None else str(directory),
        default_model_files(folder),
        # Ancestral sampling hides much of this small model's distortion (compared by eye on a
        # grid of DDIM, DPM++ 2M, DPM++ 2M Karras and Euler a: see MODEL_CARD.md).
        default_sampler="Euler a",
        default_cfg=DEFAULT_MODEL_CFG,
    )


def load_diffusers_folder(path: Path):
    """A StableDiffusion(XL)Pipeline from a local diffusers folder, never touching the network."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FacesmithError(
            f"{path} is a folder without model_index.json: unknown model format (expected a diffusers folder)"
        )
    try:
        class_name = json.loads(index_file.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError, OSError) as err:
        raise FacesmithError(f"{index_file} is not a valid diffusers model index: {err}") from err
    if class_name not in SUPPORTED_PIPELINES:
        raise FacesmithError(
            f"{path} holds a {class_name}; facesmith loads {' and '.join(SUPPORTED_PIPELINES)} folders"
        )
    import diffusers

    cls = getattr(diffusers, class_name)
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if class_name == "StableDiffusionPipeline"
        else {}
    )
    try:
        pipe = cls.from_pretrained(str(path), local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FacesmithError(f"cannot load the diffusers folder {path}: {first_line}") from err
    check_complete(pipe, path)
    return pipe


def check_complete(pipe, path: Path) -> None:
    """FacesmithError naming the weights a folder lacks.

    diffusers leaves a weight that is missing from the files on the meta device with a warning, and the
    first `.to()` then fails with "Cannot copy out of meta tensor", naming nothing.
    """
    import torch

    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing = [k for k, t in [*component.named_parameters(), *component.named_buffers()] if t.is_meta]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FacesmithError(
                f"{path / name} lacks {len(missing)} weight(s) its config needs ({shown}): the folder is "
                "incomplete or corrupt; save or copy it again"
            )


VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


def load_vae(source: str | os.PathLike, latent_channels: int):
    """A diffusers VAE folder (config.json + weights) to decode with instead of the model's own.

    AutoencoderTiny folders (TAESD and the like) are the fast preview decoders A1111 users know; any
    AutoencoderKL folder works too. Its latent channels must be the UNet's: an SD1.x/2.x VAE or TAESD
    for SD models, the SDXL ones for SDXL.
    """
    path = Path(source).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FacesmithError(f"--vae {source}: not a diffusers VAE folder (no config.json); pass a folder")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise FacesmithError(f"--vae {source}: config.json is not readable JSON ({err})") from err
    class_name = config.get("_class_name")
    if class_name not in VAE_CLASSES:
        raise FacesmithError(
            f"--vae {source} holds a {class_name}; facesmith decodes with {' or '.join(VAE_CLASSES)}"
        )
    if config.get("latent_channels", 4) != latent_channels:
        raise FacesmithError(
            f"--vae {source} works on {config.get('latent_channels', 4)} latent channels but this model's UNet "
            f"makes {latent_channels}: pick a VAE of the model's family"
        )
    import diffusers

    try:
        return getattr(diffusers, class_name).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FacesmithError(f"cannot load the VAE folder {source}: {first_line}") from err


def _unet_files(folder: Path) -> list[Path]:
    unet = folder / "unet"
    files = sorted(unet.glob("*.safetensors")) or sorted(unet.glob("*.bin"))
    return files
