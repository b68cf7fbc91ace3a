"""Single-file checkpoints in the original Stable Diffusion layout (A1111, ComfyUI, Kohya), offline.

A file is read (safetensors; pickles only with `allow_pickle`), its family is recognised from its keys
(SD 1.x, SD 2.x, SDXL base), and diffusers models are built from it. Nothing is fetched: the configs of
the real families ship in `models/configs/<family>/`, and every size that the tensors themselves reveal
(channels, depths, vocabulary) is read from their shapes, so fine-tunes with other sizes load too. What
shapes cannot reveal follows each family's convention: SD1 has 8 attention heads, SD2/SDXL 64-dim heads.
SD2 v-prediction is read from a `v_pred` marker key (ComfyUI's) or, failing that, by A1111's probe of the
UNet at t=999 (`modules/sd_models_config.py`, `is_using_v_parameterization_for_sd2`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.models import sd_layout
from facesmith.models.sd_layout import OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

CONFIG_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = Path(__file__).parent.parent / "weights" / "clip_tokenizer"
SAFE_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


def shipped_config(family: str, component: str) -> dict[str, Any]:
    """The config of `component` (unet, vae, text_encoder, text_encoder_2, scheduler) for a real family."""
    return json.loads((CONFIG_DIR / family / f"{component}.json").read_text())


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors in a `.safetensors` file, or in a pickle when `allow_pickle` is set."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise FacesmithError(
                f"{path} is a pickle checkpoint ({suffix}); loading one runs arbitrary code from the file, so "
                "facesmith refuses it: use a .safetensors copy, or pass --allow-pickle if you trust its source"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # unpickling can fail in any way the file's author chose
            raise FacesmithError(f"cannot unpickle {path}: {err}") from err
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise FacesmithError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if suffix not in SAFE_SUFFIXES:
        raise FacesmithError(
            f"{path}: unknown model format '{suffix}': expected a diffusers folder or a .safetensors file"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise FacesmithError(f"{path} is not a readable .safetensors file: {err}") from err


def detect_family(state: dict[str, torch.Tensor], name: str = "checkpoint") -> str:
    """'sd1', 'sd2' or 'sdxl' from the key names; FacesmithError saying what was found otherwise."""
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise FacesmithError(
            f"{name} is not a Stable Diffusion checkpoint: no UNet ({UNET_PREFIX}*) among its "
            f"{len(state)} tensors; found {_prefix_summary(state)}"
        )
    if conv_in.shape[1] != 4:
        raise FacesmithError(
            f"{name} has a UNet with {conv_in.shape[1]} input channels (an inpainting or other variant); "
            "facesmith loads text-to-image models with 4 latent channels"
        )
    if not any(k.startswith(VAE_PREFIX) for k in state):
        raise FacesmithError(f"{name} has a UNet but no VAE ({VAE_PREFIX}*); found {_prefix_summary(state)}")

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise FacesmithError(f"{name} is an SDXL refiner, which cannot generate from a prompt alone")
    if has(OPEN_CLIP_PREFIX["sd2"]):
        return "sd2"
    if has(sd_layout.CLIP_PREFIX["sd1"]):
        return "sd1"
    raise FacesmithError(
        f"{name} has a UNet and VAE but no text encoder facesmith recognises; found {_prefix_summary(state)}"
    )


# ----------------------------------------------------------------------------------------------------------
# Configs from shapes


def infer_unet_config(state: dict[str, torch.Tensor], family: str) -> dict[str, Any]:
    """The UNet2DConditionModel config of the UNet in `state`, from the family's config and the shapes."""
    shapes = {k[len(UNET_PREFIX) :]: tuple(v.shape) for k, v in state.items() if k.startswith(UNET_PREFIX)}
    config = shipped_config(family, "unet")
    levels: list[list[tuple[int, int]]] = [[]]
    i = 1
    while f"input_blocks.{i}.0.op.weight" in shapes or f"input_blocks.{i}.0.out_layers.3.weight" in shapes:
        if f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            depth = _count_indices(shapes, f"input_blocks.{i}.1.transformer_blocks.")
            levels[-1].append((shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0], depth))
        i += 1
    if not levels[0] or len({len(level) for level in levels}) != 1:
        raise FacesmithError(
            f"unrecognised UNet layout: resnets per level {[len(level) for level in levels]}"
        )
    channels = [level[0][0] for level in levels]
    depths = [level[0][1] for level in levels]
    cross_keys = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    proj_in = [k for k in shapes if k.endswith("proj_in.weight")]
    config.update(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=len(levels[0]),
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        transformer_layers_per_block=[max(d, 1) for d in depths],
        cross_attention_dim=shapes[cross_keys[0]][1] if cross_keys else config["cross_attention_dim"],
        use_linear_projection=bool(proj_in) and len(shapes[proj_in[0]]) == 2,
        attention_head_dim=8 if family == "sd1" else [max(1, c // 64) for c in channels],
    )
    if family == "sdxl":
        adm_in = shapes["label_emb.0.0.weight"][1]
        pooled = state[OPEN_CLIP_PREFIX["sdxl"] + "text_projection"].shape[1]
        # SDXL's added conditioning is the pooled text embedding plus six Fourier-embedded sizes.
        config.update(
            projection_class_embeddings_input_dim=adm_in, addition_time_embed_dim=(adm_in - pooled) // 6
        )
    return config


def infer_vae_config(state: dict[str, torch.Tensor], family: str) -> dict[str, Any]:
    shapes = {k[len(VAE_PREFIX) :]: tuple(v.shape) for k, v in state.items() if k.startswith(VAE_PREFIX)}
    levels = _count_indices(shapes, "encoder.down.")
    config = shipped_config(family, "vae")
    config.update(
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_channels=shapes["decoder.conv_out.weight"][0],
        latent_channels=shapes["decoder.conv_in.weight"][1],
        block_out_channels=[shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)],
        layers_per_block=_count_indices(shapes, "encoder.down.0.block."),
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    return config


def infer_clip_config(state: dict[str, torch.Tensor], family: str, component: str) -> dict[str, Any]:
    """CLIPTextConfig values for OpenAI CLIP (transformers names) or OpenCLIP text towers in `state`."""
    config = shipped_config(family, component)
    open_clip = component == "text_encoder_2" or family == "sd2"
    if open_clip:
        prefix = OPEN_CLIP_PREFIX[family]
        vocab, hidden = state[prefix + "token_embedding.weight"].shape
        layers = _count_indices(state, prefix + "transformer.resblocks.")
        intermediate = state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        positions = state[prefix + "positional_embedding"].shape[0]
        if family == "sd2" and prefix + "text_projection" in state:
            # A whole OpenCLIP tower (Stability's files, and Kohya's conversion, which pads one): SD2
            # conditions on the penultimate layer, so diffusers' encoder stops one block short. Files
            # written from a diffusers folder (diffusers' convert_diffusers_to_original_stable_diffusion.py)
            # hold only the blocks that folder has, and no projection: all of them are used.
            layers -= 1
        if prefix + "text_projection" in state:
            config["projection_dim"] = state[prefix + "text_projection"].shape[1]
    else:
        prefix = sd_layout.CLIP_PREFIX[family]
        vocab, hidden = state[prefix + "text_model.embeddings.token_embedding.weight"].shape
        layers = _count_indices(state, prefix + "text_model.encoder.layers.")
        intermediate = state[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        positions = state[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
    config.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        num_attention_heads=max(1, hidden // 64),  # CLIP and OpenCLIP text towers use 64-dim heads
    )
    return config


# ----------------------------------------------------------------------------------------------------------
# Building the pipeline


def load_single_file(path: str | Path, *, allow_pickle: bool = False):
    """A StableDiffusionPipeline or StableDiffusionXLPipeline built from one original-layout file."""
    path = Path(path)
    state = read_checkpoint(path, allow_pickle=allow_pickle)
    return pipeline_from_original(state, name=path.name)


def pipeline_from_original(state: dict[str, torch.Tensor], name: str = "checkpoint"):
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from facesmith.samplers import make_scheduler

    family = detect_family(state, name)
    state = _with_text_model_level(state)
    unet_config = infer_unet_config(state, family)
    unet = _build(
        UNet2DConditionModel.from_config, unet_config, sd_layout.unet_from_original(state, unet_config), name
    )
    vae_config = infer_vae_config(state, family)
    vae = _build(AutoencoderKL.from_config, vae_config, sd_layout.vae_from_original(state, vae_config), name)

    def text_model(component: str, cls):
        config = CLIPTextConfig(**infer_clip_config(state, family, component))
        if component == "text_encoder_2" or family == "sd2":
            with _empty_weights():
                model = cls(config)
            return _fill(model, sd_layout.open_clip_from_original(state, family, model), name)
        with _empty_weights():
            model = cls(config)
        return _fill(model, sd_layout.clip_from_original(state, family, model), name)

    scheduler_config = shipped_config(family, "scheduler")
    if _is_v_prediction(state, family, unet):
        scheduler_config["prediction_type"] = "v_prediction"
    scheduler = make_scheduler("DDIM", scheduler_config)
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_model("text_encoder", CLIPTextModel),
            text_encoder_2=text_model("text_encoder_2", CLIPTextModelWithProjection),
            tokenizer=clip_tokenizer(pad_token="<|endoftext|>"),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_model("text_encoder", CLIPTextModel),
        # OpenCLIP pads with "!" (id 0), OpenAI CLIP with its end token; SD2's diffusers tokenizer follows it.
        tokenizer=clip_tokenizer(pad_token="!" if family == "sd2" else "<|endoftext|>"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer shipped in `weights/clip_tokenizer` (MIT), 77 tokens."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)


def _is_v_prediction(state: dict[str, torch.Tensor], family: str, unet) -> bool:
    if "v_pred" in state:
        return True
    if family != "sd2":
        return False
    # A1111's probe: at t=999 an epsilon model predicts roughly its input (pure noise), a v model roughly
    # minus it, so the mean of (output - input) is clearly negative only for v-prediction.
    probe = unet.to(torch.float32)
    with torch.no_grad():
        x = torch.full((1, probe.config.in_channels, 8, 8), 0.5)
        cond = torch.full((1, 2, probe.config.cross_attention_dim), 0.5)
        out = probe(x, torch.tensor([999]), encoder_hidden_states=cond).sample
    return (out - x).mean().item() < -1


class _empty_weights:
    """Create modules with parameters on the meta device (buffers stay real), so no time goes to random init."""

    def __enter__(self):
        from accelerate import init_empty_weights

        self._context = init_empty_weights(include_buffers=False)
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def _build(factory, config, weights: dict[str, torch.Tensor], name: str):
    with _empty_weights():
        model = factory(config)
    return _fill(model, weights, name)


# Tensors some checkpoints carry that the diffusers/transformers models have no place for.
_IGNORABLE = ("position_ids", "logit_scale")


def _fill(model, weights: dict[str, torch.Tensor], name: str):
    expected = model.state_dict()
    weights = {k: v for k, v in weights.items() if not k.endswith(_IGNORABLE)}
    if "text_projection.weight" not in expected:  # SD2's OpenCLIP projection; a CLIPTextModel has none
        weights.pop("text_projection.weight", None)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(
        k for k in set(weights) & set(expected) if tuple(weights[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise FacesmithError(
            f"{name}: the {type(model).__name__} tensors don't fit the architecture read from it: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of wrong shape (e.g. {example})"
        )
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def _with_text_model_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Early SD1 checkpoints were saved by a transformers without CLIPTextModel's `text_model.` level."""
    prefix = sd_layout.CLIP_PREFIX["sd1"]
    if not any(k.startswith(prefix + "embeddings.") for k in state):
        return state
    return {
        prefix + "text_model." + k[len(prefix) :]
        if k.startswith(prefix) and not k.startswith(prefix + "text_model.")
        else k: v
        for k, v in state.items()
    }


def _count_indices(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _prefix_summary(state: dict[str, torch.Tensor]) -> str:
    counts = Counter(".".join(k.split(".")[:2]) for k in state)
    top = ", ".join(f"{prefix}.* ({n})" for prefix, n in counts.most_common(5))
    return top or "no tensors"
