"""The one factory for test fixtures: tiny random-weight models, photos and datasets, built in code.

Models: shapes follow the real families' shipped configs (`facesmith/models/configs`) with sizes shrunk,
so the same conventions hold (SD1: 8 heads, SDXL: 64-dim heads, CLIP: 64-dim heads, GroupNorm 32). Images
are 64x64 px (8x8 latents), so a 2-step generation takes well under a second on 2 CPU cores.

Data: noise photos for prepare, colour-field and cartoon-face datasets written through `data.manifest`,
and `shared_data_dir`, the one place tests look for the shared (never committed) real face photos.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from facesmith.models.single_file import clip_tokenizer, shipped_config

SIZE = 64  # pixels; latents are SIZE / 8
# Few steps keep every test fast; 64 px is the tiny models' native size.
FAST = {"steps": 2, "width": SIZE, "height": SIZE}


def _clip_config(family: str, component: str, hidden: int = 32):
    from transformers import CLIPTextConfig

    config = shipped_config(family, component)
    config.update(
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=1,
        projection_dim=32,
    )
    return CLIPTextConfig(**config)


def _vae(family: str):
    from diffusers import AutoencoderKL

    config = shipped_config(family, "vae")
    # Four levels keep the real 8x down-sampling; 32 channels keep it cheap.
    config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=SIZE)
    return AutoencoderKL.from_config(config)


def tiny_sd15(seed: int = 0):
    """A random-weight StableDiffusionPipeline in the SD1.5 layout."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from facesmith.samplers import make_scheduler

    torch.manual_seed(seed)
    unet_config = shipped_config("sd1", "unet")
    unet_config.update(
        block_out_channels=[32, 64],
        layers_per_block=1,
        sample_size=SIZE // 8,
        cross_attention_dim=32,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    )
    pipe = StableDiffusionPipeline(
        vae=_vae("sd1"),
        text_encoder=CLIPTextModel(_clip_config("sd1", "text_encoder")),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel.from_config(unet_config),
        scheduler=make_scheduler("DDIM", shipped_config("sd1", "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _randomize_norms(pipe)


def tiny_sdxl(seed: int = 0):
    """A random-weight StableDiffusionXLPipeline in the SDXL base layout (two text encoders)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from facesmith.samplers import make_scheduler

    torch.manual_seed(seed)
    unet_config = shipped_config("sdxl", "unet")
    unet_config.update(
        block_out_channels=[64, 128],
        attention_head_dim=[1, 2],
        layers_per_block=1,
        transformer_layers_per_block=[1, 2],
        sample_size=SIZE // 8,
        cross_attention_dim=64,  # 32 + 32 from the two text encoders
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae("sdxl"),
        text_encoder=CLIPTextModel(_clip_config("sdxl", "text_encoder")),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config("sdxl", "text_encoder_2")),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=UNet2DConditionModel.from_config(unet_config),
        scheduler=make_scheduler("Euler", shipped_config("sdxl", "scheduler")),
    )
    return _randomize_norms(pipe)


def save_folder(pipe, path: Path) -> Path:
    """Save `pipe` as a diffusers folder (model_index.json + one folder per component)."""
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def _randomize_norms(pipe):
    # Fresh LayerNorm/GroupNorm layers are the identity and zero-initialised output layers hide key
    # mix-ups; random values make any wrongly mapped tensor change the image.
    generator = torch.Generator().manual_seed(1234)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(
                    ("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "_norm.weight")
                ):
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
                elif name.endswith("bias"):
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return pipe


def kohya_lora(pipe, rank: int = 4, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A random LoRA in Kohya's format: `lora_unet_*` / `lora_te*_*` with `alpha` = rank / 2.

    Like Kohya's default it targets the attention projections of the UNet's transformer blocks and of
    every text encoder layer. SD1 files name UNet layers as diffusers does; SDXL files (two text
    encoders, `lora_te1_`/`lora_te2_`) use the original SGM names, e.g. `lora_unet_input_blocks_4_1_...`.
    """
    from facesmith.models.sd_layout import UNET_PREFIX, unet_to_original

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    unet_names = {}
    if sdxl:
        weights = {k: v for k, v in pipe.unet.state_dict().items() if k.endswith(".weight")}
        original = unet_to_original(weights, pipe.unet.config)
        unet_names = {
            d[: -len(".weight")]: o[len(UNET_PREFIX) : -len(".weight")]
            for d, o in zip(weights, original, strict=True)
        }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    attention = (
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
    )
    text = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    targets = [("lora_unet_", pipe.unet, attention)]
    if sdxl:
        targets += [
            ("lora_te1_text_model_", pipe.text_encoder, text),
            ("lora_te2_text_model_", pipe.text_encoder_2, text),
        ]
    else:
        targets += [("lora_te_text_model_", pipe.text_encoder, text)]
    for prefix, model, suffixes in targets:
        for name, layer in model.named_modules():
            if not name.endswith(suffixes):
                continue
            name = unet_names.get(name, name).removeprefix("text_model.")
            key = prefix + name.replace(".", "_")
            state[key + ".lora_down.weight"] = scale * torch.randn(
                rank, layer.in_features, generator=generator
            )
            state[key + ".lora_up.weight"] = scale * torch.randn(
                layer.out_features, rank, generator=generator
            )
            state[key + ".alpha"] = torch.tensor(rank / 2)
    return state


def same_named_loras(folder: Path) -> list[Path]:
    """Two different Kohya LoRAs both called lora.safetensors, in folder/runA and folder/runB (every
    training run used to write that name)."""
    from safetensors.torch import save_file

    paths = []
    for seed, run in enumerate(("runA", "runB")):
        (folder / run).mkdir(parents=True, exist_ok=True)
        save_file(kohya_lora(tiny_sd15(), seed=seed, scale=2.0), folder / run / "lora.safetensors")
        paths.append(folder / run / "lora.safetensors")
    return paths


def peft_lora(pipe, path: Path, rank: int = 4, seed: int = 0) -> Path:
    """A random UNet LoRA saved by diffusers in its peft format (`unet.*.lora_A.weight`)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    layers = get_peft_model_state_dict(unet)
    unet.delete_adapters("default")
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"


# ----------------------------------------------------------------------------------------------------------
# Photos and datasets.


def shared_data_dir() -> Path | None:
    """The shared real face photos: $FACESMITH_SHARED/data, else <repo>/../shared/data; None if absent."""
    for root in (os.environ.get("FACESMITH_SHARED"), Path(__file__).resolve().parents[1].parent / "shared"):
        if root and (Path(root) / "data").is_dir():
            return Path(root) / "data"
    return None


def photo(seed: int, size: tuple[int, int] = (48, 48), mode: str = "RGB"):
    """A sharp noise photo with its own perceptual hash per seed: it passes prepare's quality gates in
    --aligned mode (which needs no face); face detection is tested on the shared data."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.NEAREST)
    fine = rng.integers(-40, 40, (size[1], size[0], 3))
    image = Image.fromarray(np.uint8(np.clip(np.asarray(image, dtype=int) + fine, 0, 255)))
    return image if mode == "RGB" else image.convert(mode)


def save_photo(path: Path, seed: int, size: tuple[int, int] = (48, 48), **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed, size).save(path, **options)
    return path


def colour_field_dataset(
    directory: Path, count: int = 4, size=(40, 40), captions: list[str] | None = None
) -> Path:
    """A training dataset folder: `count` smooth random colour fields standing in for faces, all in the
    train split, plus one val row; `size` is one (w, h) or one per image."""
    import numpy as np
    from PIL import Image

    from facesmith.data.manifest import ManifestRow, image_name, write_manifest

    rng = np.random.default_rng(0)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        w, h = size if isinstance(size, tuple) else size[i]
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        name = image_name(i, "png")
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(directory / name)
        text = captions[i % len(captions)] if captions else f"a photo of a person, face {i}, smiling"
        attributes = {"Male": i % 2, "Smiling": 1, "age": 20 + i}
        rows.append(ManifestRow(name, text, attributes, "folder", name, "train", w, h))
    rows.append(dataclasses.replace(rows[0], split="val"))
    write_manifest(directory, rows)
    return directory


# ----------------------------------------------------------------------------------------------------------
# Evaluation fixtures: synthetic labelled faces and a tiny attribute classifier trained on them.


def synthetic_face(attributes: dict, seed: int, side: int = 64):
    """A cartoon face whose visible parts follow `attributes`: blond or black hair, glasses, a smile.

    Skin tone, background and face shape vary with `seed`, so no two faces are alike.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    s = side / 64
    skin = tuple(int(v) for v in rng.integers(120, 230, 3))
    w, h = rng.uniform(18, 24), rng.uniform(24, 30)
    draw.ellipse(((32 - w) * s, (36 - h) * s, (32 + w) * s, (36 + h) * s), fill=skin)
    hair = (235, 205, 90) if attributes.get("Blond_Hair") else (25, 20, 20)
    draw.chord(((32 - w) * s, (36 - h) * s, (32 + w) * s, (36 + h) * s), 180, 360, fill=hair)
    for x in (24, 40):
        draw.ellipse(((x - 3) * s, 33 * s, (x + 3) * s, 38 * s), fill=(30, 30, 60))
    if attributes.get("Eyeglasses"):
        for x in (24, 40):
            draw.rectangle(
                ((x - 6) * s, 31 * s, (x + 6) * s, 40 * s), outline=(0, 0, 0), width=max(1, int(2 * s))
            )
        draw.line((30 * s, 35 * s, 34 * s, 35 * s), fill=(0, 0, 0), width=max(1, int(2 * s)))
    if attributes.get("Smiling"):
        draw.chord((23 * s, 43 * s, 41 * s, 57 * s), 0, 180, fill=(250, 250, 250), outline=(120, 20, 20))
    else:
        draw.line((26 * s, 51 * s, 38 * s, 51 * s), fill=(120, 20, 20), width=max(1, int(2 * s)))
    noise = rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def synthetic_face_dataset(root: Path, count: int = 48, seed: int = 0, side: int = 64) -> Path:
    """A dataset folder in `facesmith prepare`'s layout (metadata.jsonl, images/), a quarter held out.

    Labels: Blond_Hair, Eyeglasses, Smiling (visible), Male (random, invisible); every third face also
    carries UTKFace-style age and ethnicity.
    """
    import random

    from facesmith.data.manifest import ManifestRow, write_manifest

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        attrs = {k: rng.randint(0, 1) for k in ("Blond_Hair", "Eyeglasses", "Smiling", "Male")}
        if i % 3 == 0:
            attrs.update(age=rng.choice([8, 30, 70]), ethnicity=rng.choice(["white", "Black"]))
        name = f"images/{i:05d}.png"
        synthetic_face(attrs, seed * 100_000 + i, side).save(root / name)
        split = "val" if i % 4 == 0 else "train"
        rows.append(ManifestRow(name, "a face", attrs, "folder", split=split, width=side, height=side))
    write_manifest(root, rows)
    return root


def tiny_attribute_classifier(out: Path, dataset: Path, epochs: int = 15) -> Path:
    """The real attribute classifier's heads, trained briefly at 64 px on a synthetic dataset."""
    from facesmith.evaluate.attributes import AttributeTrainConfig, train_attribute_classifier

    train_attribute_classifier(
        AttributeTrainConfig(
            datasets=[str(dataset)], out_dir=str(out), size=64, epochs=epochs, batch=16, lr=3e-3
        )
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# Command-line results


def one_line_error(result, fragment: str) -> None:
    """A CliRunner result that is a user mistake: exit status 2, no traceback, one `error:` line naming
    `fragment` on stderr."""
    assert result.exit_code == 2, result.output
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    # facesmith's own warnings may come first (a dataset's held-out share, a size far from native): they
    # are yellow lines of their own; the mistake itself is exactly one line.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if line.strip() and not line.startswith("warning: ")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
