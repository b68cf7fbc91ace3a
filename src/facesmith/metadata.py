"""Recipes inside PNGs: AUTOMATIC1111's `parameters` text chunk and facesmith's JSON chunk.

Every image facesmith writes carries both. The `parameters` chunk uses A1111's layout so other tools
read it:

    a photo of a face
    Negative prompt: blurry
    Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 0123456789, Model: sd15

The `facesmith` chunk is JSON holding the full GenerateConfig for that one image (its own seed, count 1),
which is what `facesmith generate --from` reads. Images from A1111 itself, with only `parameters`, are
read through `parse_parameters`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError

PARAMETERS_KEY = "parameters"
JSON_KEY = "facesmith"


def format_parameters(
    config: GenerateConfig, *, seed: int, width: int, height: int, model_name: str, model_hash: str | None
) -> str:
    """A1111's `parameters` text for one image made with `config` and `seed`."""
    lines = [config.prompt]
    if config.negative:
        lines.append(f"Negative prompt: {config.negative}")
    fields = {
        "Steps": config.steps,
        "Sampler": config.sampler,
        "CFG scale": f"{config.cfg:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    if config.loras:
        fields["Lora"] = _quote(" ".join(config.loras))
    fields["Version"] = "facesmith"
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def write_png(image, path: str | Path, parameters: str, settings: dict[str, Any]) -> Path:
    """Save `image` as PNG with the `parameters` and JSON `facesmith` text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(JSON_KEY, json.dumps(settings, sort_keys=True))
    path = Path(path)
    image.save(path, pnginfo=info)
    return path


def read_png(path: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """Return (parameters text, facesmith JSON) from a PNG; either is None when absent."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            chunks = dict(getattr(image, "text", {}) or {})
    except FileNotFoundError as err:
        raise FacesmithError(f"image {path} does not exist") from err
    except (OSError, UnidentifiedImageError) as err:
        raise FacesmithError(f"cannot read image {path}: {err}") from err
    settings = None
    if JSON_KEY in chunks:
        try:
            settings = json.loads(chunks[JSON_KEY])
        except json.JSONDecodeError as err:
            raise FacesmithError(f"{path}: the facesmith metadata chunk is not valid JSON ({err})") from err
    return chunks.get(PARAMETERS_KEY), settings


def config_from_png(path: str | Path) -> GenerateConfig:
    """The GenerateConfig that reproduces the image at `path` (facesmith JSON, else A1111 parameters)."""
    parameters, settings = read_png(path)
    if settings is not None:
        config = GenerateConfig.from_dict(settings["config"], origin=f"{path} metadata")
        # An image is a recipe, not a permission: a PNG from elsewhere must not switch on unpickling,
        # and the device belongs to the machine, not the recipe.
        return dataclasses.replace(config, allow_pickle=False, device=None)
    if parameters is not None:
        return config_from_parameters(parameters)
    raise FacesmithError(f"{path} carries no generation metadata (no `parameters` or `facesmith` chunk)")


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 `parameters` text into (prompt, negative prompt, {field: value})."""
    lines = text.strip("\n").split("\n")
    fields: dict[str, str] = {}
    if lines and re.match(r"^\s*Steps: ", lines[-1]):
        last = lines.pop()
        for match in re.finditer(r'\s*([\w .+-]+?): ("(?:\\.|[^"])*"|[^,]*)(?:,|$)', last):
            value = match.group(2).strip()
            if value.startswith('"'):
                value = json.loads(value)
            fields[match.group(1).strip()] = value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:") and not negative_lines:
            negative_lines.append(line[len("Negative prompt:") :].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


def config_from_parameters(text: str) -> GenerateConfig:
    prompt, negative, fields = parse_parameters(text)
    config = GenerateConfig(prompt=prompt, negative=negative)
    try:
        if "Steps" in fields:
            config.steps = int(fields["Steps"])
        if "Sampler" in fields:
            config.sampler = fields["Sampler"]
        if "CFG scale" in fields:
            config.cfg = float(fields["CFG scale"])
        if "Seed" in fields:
            config.seed = int(fields["Seed"])
        if "Size" in fields:
            width, height = fields["Size"].lower().split("x")
            config.width, config.height = int(width), int(height)
    except ValueError as err:
        raise FacesmithError(f"cannot read the A1111 parameters {fields}: {err}") from err
    return config


def _quote(text: str) -> str:
    # A1111 quotes a field value that contains a comma or colon, JSON-style.
    return json.dumps(text) if ("," in text or ":" in text or '"' in text) else text
