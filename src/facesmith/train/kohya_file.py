"""A trained network as the file A1111, ComfyUI and sd-scripts read: Kohya's tensor names and metadata.

`kohya_lora_state` renames peft's LoRA / LoHa / LoKr / DoRA tensors to sd-scripts' `networks/lora.py`
names (`lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`; LyCORIS's
`hada_*` / `lokr_*` / `dora_scale`; `lora_te_`, or `lora_te1_`/`lora_te2_` for SDXL's two encoders, SDXL's
UNet in the original SGM layout), each module with its own alpha. `kohya_metadata` writes the `ss_*`
training keys and Stability AI's model-spec (`modelspec.*`) keys naming the real base model. Writing the
file (and refusing NaN/inf) is `export.py`'s.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import torch

from facesmith.train.config import TrainConfig
from facesmith.train.model import TrainModel

ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sdxl": "stable-diffusion-xl-v1-base",
}
BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}  # Kohya's ss_base_model_version


def architecture(family: str) -> tuple[str, str]:
    """(Kohya's ss_base_model_version, modelspec.architecture base) of a model family; a preset (the
    embedded default model is `preset:face-small`) is no Stable Diffusion and is named as itself."""
    if family.startswith("preset:"):
        preset = family.split(":", 1)[1]
        return f"facesmith_{preset}", f"facesmith-{preset}"
    return BASE_VERSIONS.get(family, family), ARCHITECTURES.get(family, family)


# peft's parameter names of each network type -> the LyCORIS / Kohya names A1111 and ComfyUI read.
LYCORIS_NAMES = {
    "lora": {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"},
    "loha": {n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    "lokr": {n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}


def kohya_lora_state(model: TrainModel, alpha: float, lora_type: str = "lora") -> dict[str, torch.Tensor]:
    """The adapter layers of the UNet (and text encoder) under Kohya's module names and LyCORIS's tensor
    names: `lora_down`/`lora_up` (+ `dora_scale`), `hada_w1_a`..., or `lokr_w1`/`lokr_w2_a`...; `alpha`.

    DoRA: peft keeps one magnitude per output feature (`lora_magnitude_vector`); it is written as
    LyCORIS's output-axis `dora_scale` of shape (out, 1) or (out, 1, 1, 1), which ComfyUI tells from the
    input-axis form by its first dimension and diffusers' Kohya converter maps back to peft's magnitude.
    LoKr with neither factor split: ComfyUI then applies no alpha / rank, so peft's scale is baked into
    `lokr_w1`.
    """
    from peft import get_peft_model_state_dict

    state = {}
    pipe, sdxl = model.pipe, model.family == "sdxl"
    parts = [("lora_unet_", pipe.unet, model.unet_lora)]
    if sdxl:  # Kohya's SDXL text encoder prefixes (sd-scripts networks/lora.py LORA_PREFIX_TEXT_ENCODER1/2)
        parts += [("lora_te1_", pipe.text_encoder, model.text_lora)]
        parts += [("lora_te2_", pipe.text_encoder_2, model.text_lora_2)]
    else:
        parts.append(("lora_te_", pipe.text_encoder, model.text_lora))
    names = LYCORIS_NAMES[lora_type]
    for prefix, module, targets in parts:
        if not targets:
            continue
        layers = get_peft_model_state_dict(module)
        # Kohya's SDXL UNet is the original SGM one (sdxl_original_unet.py): its LoRAs name UNet layers as
        # `input_blocks.4.1...`, where SD 1.x files use diffusers' module names.
        sgm = _sgm_names(pipe.unet, targets) if sdxl and prefix == "lora_unet_" else {}
        for name in targets:
            # Kohya names CLIP layers from `text_model.`, which transformers 5 models may not have.
            text = prefix.startswith("lora_te")
            written = f"text_model.{name.removeprefix('text_model.')}" if text else sgm.get(name, name)
            key = prefix + written.replace(".", "_")
            tensors = {
                ours: layers[f"{name}.{theirs}"]
                for theirs, ours in names.items()
                if f"{name}.{theirs}" in layers
            }
            own_alpha = _alpha_of(module, name, alpha)  # block_alphas give modules their own
            if lora_type == "lokr" and "lokr_w1" in tensors and "lokr_w2" in tensors:
                tensors["lokr_w1"] = tensors["lokr_w1"] * (own_alpha / _rank_of(module, name))
            magnitude = layers.get(f"{name}.lora_magnitude_vector")
            if magnitude is not None:
                out_features = tensors["lora_up.weight"].shape[0]
                tensors["dora_scale"] = magnitude.reshape(
                    out_features, *[1] * (tensors["lora_up.weight"].dim() - 1)
                )
            for suffix, tensor in tensors.items():
                state[f"{key}.{suffix}"] = tensor.detach().cpu().contiguous()
            state[f"{key}.alpha"] = torch.tensor(float(own_alpha))
    return state


def _sgm_names(unet, targets: list[str]) -> dict[str, str]:
    """diffusers UNet module names -> the original (SGM) layout's, through `sd_layout.unet_to_original`."""
    from facesmith.models.sd_layout import UNET_PREFIX, unet_to_original

    original = unet_to_original({f"{name}.weight": None for name in targets}, unet.config)
    return {
        name: key[len(UNET_PREFIX) : -len(".weight")] for name, key in zip(targets, original, strict=True)
    }


def _alpha_of(module: torch.nn.Module, name: str, default: float) -> float:
    """The alpha peft gave a layer (`alpha_pattern`), LoRA's `lora_alpha` or LyCORIS's `alpha`."""
    layer = module.get_submodule(name)
    alphas = getattr(layer, "lora_alpha", None) or getattr(layer, "alpha", None) or {}
    return float(alphas.get("default", default)) if isinstance(alphas, dict) else default


def _rank_of(module: torch.nn.Module, name: str) -> int:
    return int(module.get_submodule(name).r["default"])


def kohya_metadata(model: TrainModel, config: TrainConfig, info: dict[str, Any]) -> dict[str, str]:
    """Kohya's `ss_*` keys and the model-spec keys it writes (all values are strings)."""
    resolution = info.get("resolution", config.resolution)
    now = datetime.datetime.now(datetime.timezone.utc)
    v2 = model.family == "sd2"
    version, arch = architecture(model.family)
    name = info.get("name", "lora")
    metadata = {
        "ss_network_module": "networks.lora" if config.lora_type == "lora" else "lycoris.kohya",
        "ss_network_dim": str(config.lora_rank),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_network_args": network_args(config),
        "ss_network_dropout": str(config.network_dropout or None),
        "ss_base_model_version": version,
        "ss_v2": str(v2),
        "ss_v_parameterization": str(model.prediction_type == "v_prediction"),
        "ss_sd_model_name": model.base_name,
        "ss_new_sd_model_hash": str(model.base_hash),  # sha256, as Kohya's ss_new_sd_model_hash
        "ss_sd_model_hash": str(model.base_hash and model.base_hash[:10]),  # A1111's AutoV2 short hash
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(config.bucketing),
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.learning_rate),
        "ss_text_encoder_lr": str(config.learning_rate if config.train_text_encoder else 0),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": config.optimizer,
        "ss_max_train_steps": str(info.get("total_steps", config.max_steps)),
        "ss_steps": str(info.get("step", 0)),
        "ss_epoch": str(info.get("epoch", 0)),
        "ss_num_train_images": str(info.get("images", 0)),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_mixed_precision": str(info.get("mixed_precision", config.mixed_precision)),
        "ss_seed": str(config.seed),
        "ss_min_snr_gamma": str(config.min_snr_gamma or None),
        "ss_noise_offset": str(config.noise_offset or None),
        "ss_caption_dropout_rate": str(config.caption_dropout),
        "ss_shuffle_caption": str(config.caption_shuffle),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_flip_aug": str(config.flip),
        "ss_cache_latents": str(config.cache_latents != "none"),
        "ss_training_started_at": str(info.get("started_at", now.timestamp())),
        "ss_training_finished_at": str(now.timestamp()),
        "ss_output_name": name,
        "ss_training_comment": "facesmith train",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if model.prediction_type == "v_prediction" else "epsilon",
    }
    return metadata


def network_args(config: TrainConfig) -> str:
    """Kohya's `ss_network_args` JSON: LoCon's conv_dim, LyCORIS's algo (and LoKr factor), DoRA's dora_wd."""
    args: dict[str, Any] = {}
    if config.lora_type != "lora":
        args["algo"] = config.lora_type
        if config.lora_type == "lokr":
            args["factor"] = config.lokr_factor
    if config.lora_conv:
        args.update(conv_dim=config.lora_rank, conv_alpha=config.lora_alpha)
    if config.use_dora:
        args["dora_wd"] = True
    # Kohya's block network args, as its --network_args strings ("1,1,0.5,...").
    for name in ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_dims", "block_alphas"):
        value = getattr(config, name)
        if value is not None:
            args[name] = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
    return json.dumps(args) if args else "null"
