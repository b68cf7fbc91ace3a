"""Recipes inside PNGs: AUTOMATIC1111's `parameters` text chunk and facesmith's JSON chunk.

Every image facesmith writes carries both. The `parameters` chunk uses A1111's layout so other tools
read it:

    a photo of a face
    Negative prompt: blurry
    Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 0123456789, Model: sd15

The `facesmith` chunk is JSON, laid out here and nowhere else:

    {"config": {...the GenerateConfig of that one image: its own seed, count 1...},
     "model_name": "sd15", "model_hash": "0123456789",
     "loras": [{"name": "face_style", "hash": "0123456789ab", "weight": 0.8}]}

which is what `facesmith generate --from` reads. Neither chunk holds a server path: the config's `model`,
`loras` and `vae` are file names only (`sd15.safetensors`, `face_style.safetensors:0.8`), `out_dir` is
left out, and the model and LoRAs are identified by name and hash, as A1111 records them (`Model hash`,
`Lora hashes: "name: hash"`). `--from` looks those file names up in the current folder unless `--model`
/ `--lora` say otherwise; a PNG of the default model records no model, so it uses the default model. `recipe` makes both chunks for one image and
`png_bytes` the PNG that carries them; `facesmith generate`, the server and anything else that writes
an image go through those two, and `config_from_png`/`prompt_from_png` read them back. Images from
A1111 itself, with only `parameters`, are read through `parse_parameters`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesmith.config import GenerateConfig
from facesmith.errors import FacesmithError

PARAMETERS_KEY = "parameters"
JSON_KEY = "facesmith"


@dataclass(frozen=True)
class Recipe:
    """The two text chunks of one image: A1111's `parameters` text and facesmith's JSON."""

    parameters: str
    settings: dict[str, Any]


def recipe(config: GenerateConfig, model, seed: int, lora_names: list[str] | None = None) -> Recipe:
    """Both chunks for the image that `seed` made in a run of `config` (as resolved by the run: sampler,
    CFG, size); `model` is the LoadedModel it ran on (its name and short hash are recorded).

    `lora_names` name `config.loras` (the server passes the names it shows); by default they are
    `unique_lora_names` of the LoRA files.
    """
    one = dataclasses.replace(config, seed=seed, count=1, trace=False)
    model_hash = model.model_hash()
    paths = [spec.rpartition(":")[0] for spec in one.loras]
    names = lora_names if lora_names is not None else unique_lora_names(paths)
    loras = [
        {"name": name, "hash": lora_hash(path), "weight": float(spec.rpartition(":")[2])}
        for name, path, spec in zip(names, paths, one.loras, strict=True)
    ]
    recorded = one.to_dict()
    del recorded["out_dir"]  # a folder on the machine that made it, not part of the recipe
    recorded["model"] = Path(one.model).name if one.model else None
    recorded["vae"] = Path(one.vae).name if one.vae else None
    for name in ("init_image", "mask"):  # img2img's inputs, by file name; "face" and other mask words stay
        value = recorded.get(name)
        if value and (Path(value).suffix or "/" in value):
            recorded[name] = Path(value).name
    recorded["loras"] = [
        f"{lora['name']}{Path(path).suffix}:{lora['weight']:g}"
        for lora, path in zip(loras, paths, strict=True)
    ]
    recorded["embeddings"] = [Path(path).name for path in one.embeddings]
    used = used_embeddings(one)
    settings = {"config": recorded, "model_name": model.name, "model_hash": model_hash, "loras": loras}
    if used:  # a PNG made without embeddings keeps the chunk as it was
        settings["embeddings"] = used
    parameters = format_parameters(
        one, model_name=model.name, model_hash=model_hash, loras=loras, embeddings=used
    )
    return Recipe(parameters, settings)


def used_embeddings(config: GenerateConfig) -> list[dict]:
    """{name, hash} of each loaded embedding the prompt or negative prompt calls, as A1111 records them
    (`TI hashes: "name: hash"`, the hash the first 10 hex digits of the file's sha256)."""
    records = []
    for path in config.embeddings:
        stat = Path(path).stat()
        name, digest = _embedding_record(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if re.search(rf"(?<!\S){re.escape(name)}(?![\w])", f"{config.prompt} {config.negative}"):
            records.append({"name": name, "hash": digest})
    return records


@functools.lru_cache(maxsize=64)
def _embedding_record(path: str, _size: int, _mtime_ns: int) -> tuple[str, str]:
    from facesmith.models.embeddings import file_sha256, read_embedding

    # A .pt is a pickle, read only at load time when allowed: its record names it by its stem, as A1111 does.
    name = read_embedding(path).name if path.endswith(".safetensors") else Path(path).stem
    return name, file_sha256(Path(path))[:10]


def unique_lora_names(paths: list[str]) -> list[str]:
    """A name for each LoRA file: its stem, as A1111 names LoRAs, and where the stems of different files
    clash, their parent folders as well (`runA/lora`, `runB/lora`), as many as it takes to tell them apart.
    The same file given twice keeps one name."""
    files = [Path(str(path).replace("\\", "/")).with_suffix("") for path in paths]
    parts = [f.parts[1:] if f.is_absolute() else f.parts for f in files]  # never the root: no full paths
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        grow = [
            i
            for i, name in enumerate(names)
            if depth[i] < len(parts[i])
            and any(names[j] == name and parts[j] != parts[i] for j in range(len(names)))
        ]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def lora_hash(path: str | Path) -> str:
    """A1111's short LoRA hash: the first 12 hex digits of the sha256 of a .safetensors file's tensor data
    (after its JSON header, the "AutoV3" hash A1111 and Civitai use), or of a whole other file."""
    path = Path(path)
    stat = path.stat()
    return _lora_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _lora_hash(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if path.endswith(".safetensors"):
            header = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def format_parameters(
    config: GenerateConfig,
    *,
    model_name: str,
    model_hash: str | None,
    loras: list[dict] | None = None,
    embeddings: list[dict] | None = None,
) -> str:
    """A1111's `parameters` text for the one image `config` describes (its seed, width and height);
    `loras` are `recipe`'s records (name, hash, weight)."""
    lines = [config.prompt]
    if config.negative:
        lines.append(f"Negative prompt: {config.negative}")
    fields = {
        "Steps": config.steps,
        "Sampler": config.sampler,
        "CFG scale": f"{config.cfg:g}",
        "Seed": config.seed,
        "Size": f"{config.width}x{config.height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    if config.init_image is not None:
        fields["Denoising strength"] = f"{config.strength:g}"
        if config.mask is not None:
            fields["Mask blur"] = config.mask_blur
            if config.inpaint_full_res:
                fields["Inpaint area"] = "Only masked"
                fields["Masked area padding"] = config.inpaint_full_res_padding
    fields.update(detailer_fields(config))
    if loras:
        fields["Lora hashes"] = _quote(", ".join(f"{lora['name']}: {lora['hash']}" for lora in loras))
    if embeddings:  # A1111's textual-inversion record
        fields["TI hashes"] = _quote(", ".join(f"{e['name']}: {e['hash']}" for e in embeddings))
    fields["Version"] = "facesmith"
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def detailer_fields(config: GenerateConfig) -> dict[str, Any]:
    """The face detailer's pass in ADetailer's infotext fields (adetailer/args.py, ALL_ARGS), so A1111
    tools show it; {} without --detail-faces. ADetailer writes the optional ones only when they are set."""
    if not config.detail_faces:
        return {}
    from facesmith.detailer import DETECTOR

    fields: dict[str, Any] = {"ADetailer model": DETECTOR}
    if config.detail_prompt:
        fields["ADetailer prompt"] = json.dumps(config.detail_prompt)  # ADetailer quotes them always
    if config.detail_negative:
        fields["ADetailer negative prompt"] = json.dumps(config.detail_negative)
    fields["ADetailer confidence"] = f"{config.detail_confidence:g}"
    if config.detail_max_faces:
        fields["ADetailer mask only top k largest"] = config.detail_max_faces
    fields["ADetailer dilate erode"] = config.detail_dilate
    fields["ADetailer mask blur"] = config.detail_mask_blur
    fields["ADetailer denoising strength"] = f"{config.detail_strength:g}"
    fields["ADetailer inpaint only masked"] = True
    fields["ADetailer inpaint padding"] = config.detail_padding
    if config.detail_size:
        fields["ADetailer use inpaint width height"] = True
        fields["ADetailer inpaint width"] = fields["ADetailer inpaint height"] = config.detail_size
    if config.detail_steps:
        fields["ADetailer use separate steps"] = True
        fields["ADetailer steps"] = config.detail_steps
    if config.detail_cfg is not None:
        fields["ADetailer use separate CFG scale"] = True
        fields["ADetailer CFG scale"] = f"{config.detail_cfg:g}"
    fields["ADetailer version"] = "facesmith"
    return fields


# ADetailer's infotext field -> (GenerateConfig field, reader), for reading a PNG's detailer pass back.
_DETAILER_READS = {
    "ADetailer prompt": ("detail_prompt", str),
    "ADetailer negative prompt": ("detail_negative", str),
    "ADetailer confidence": ("detail_confidence", float),
    "ADetailer mask only top k largest": ("detail_max_faces", int),
    "ADetailer dilate erode": ("detail_dilate", int),
    "ADetailer mask blur": ("detail_mask_blur", int),
    "ADetailer denoising strength": ("detail_strength", float),
    "ADetailer inpaint padding": ("detail_padding", int),
    "ADetailer inpaint width": ("detail_size", int),
    "ADetailer steps": ("detail_steps", int),
    "ADetailer CFG scale": ("detail_cfg", float),
}


def png_bytes(image, recipe: Recipe) -> bytes:
    """`image` as PNG bytes carrying both chunks of `recipe`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, recipe.parameters)
    info.add_text(JSON_KEY, json.dumps(recipe.settings, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(image, path: str | Path, recipe: Recipe) -> Path:
    """Save `image` at `path` as `png_bytes` makes it."""
    path = Path(path)
    path.write_bytes(png_bytes(image, recipe))
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
    if _config_in(settings):
        config = GenerateConfig.from_dict(_config_in(settings), origin=f"{path} metadata")
        # An image is a recipe, not a permission: a PNG from elsewhere must not switch on unpickling,
        # and the device belongs to the machine, not the recipe.
        return dataclasses.replace(config, allow_pickle=False, device=None)
    if parameters is not None:
        return config_from_parameters(parameters)
    raise FacesmithError(f"{path} carries no generation metadata (no `parameters` or `facesmith` chunk)")


def model_hash_from_png(path: str | Path) -> str | None:
    """The hash of the model an image was made with (facesmith JSON, else A1111's `Model hash`)."""
    parameters, settings = read_png(path)
    if settings and settings.get("model_hash"):
        return str(settings["model_hash"])
    if parameters is not None:
        return parse_parameters(parameters)[2].get("Model hash")
    return None


def prompt_from_png(path: str | Path) -> str:
    """The prompt an image was made with (facesmith JSON, else A1111 parameters); '' when it has none."""
    parameters, settings = read_png(path)
    prompt = _config_in(settings).get("prompt")
    if prompt:
        return prompt
    return parse_parameters(parameters)[0] if parameters else ""


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
            config.sampler = _sampler_with_schedule(fields["Sampler"], fields.get("Schedule type"))
        if "CFG scale" in fields:
            config.cfg = float(fields["CFG scale"])
        if "Seed" in fields:
            config.seed = int(fields["Seed"])
        if "Size" in fields:
            width, height = fields["Size"].lower().split("x")
            config.width, config.height = int(width), int(height)
        if "Denoising strength" in fields:
            config.strength = float(fields["Denoising strength"])
        if "Mask blur" in fields:
            config.mask_blur = int(fields["Mask blur"])
        if fields.get("Inpaint area") == "Only masked":
            config.inpaint_full_res = True
        if "Masked area padding" in fields:
            config.inpaint_full_res_padding = int(fields["Masked area padding"])
        if "ADetailer model" in fields:  # any face model of ADetailer's is read as facesmith's MTCNN pass
            config.detail_faces = True
            for key, (name, read) in _DETAILER_READS.items():
                if key in fields:
                    setattr(config, name, read(fields[key]))
    except ValueError as err:
        raise FacesmithError(f"cannot read the A1111 parameters {fields}: {err}") from err
    return config


def _sampler_with_schedule(sampler: str, schedule: str | None) -> str:
    """A1111 1.9+ writes the schedule apart ("Sampler: DPM++ 2M, Schedule type: Karras"); facesmith names
    the Karras form as one sampler. Schedules facesmith has no form for keep the sampler as written."""
    from facesmith.samplers import check_sampler

    if not schedule or schedule.strip().lower() != "karras":
        return sampler
    try:
        return check_sampler(sampler, "karras").name
    except FacesmithError:
        return sampler  # an unknown sampler is named by validate(); one with no Karras form stays itself


def _config_in(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The GenerateConfig fields inside a facesmith JSON chunk (see `recipe` for the layout); {} if none."""
    config = settings.get("config") if isinstance(settings, dict) else None
    return config if isinstance(config, dict) else {}


def _quote(text: str) -> str:
    # A1111 quotes a field value that contains a comma or colon, JSON-style.
    return json.dumps(text) if ("," in text or ":" in text or '"' in text) else text
