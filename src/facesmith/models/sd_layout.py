"""Key layouts: diffusers' module names <-> the original Stable Diffusion (CompVis/SGM) checkpoint layout.

A1111, ComfyUI and Kohya save one `.safetensors` with the original names, e.g.
`model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`; diffusers names the same
tensor `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`. The `*_from_original`
direction wraps diffusers' own converters (`diffusers.loaders.single_file_utils`); the `*_to_original`
direction mirrors them, as diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py` and
`convert_diffusers_to_original_sdxl.py` do, but derives the block numbering from the config so that any
`layers_per_block` works. Deciding what a file is, and building models from it, is `single_file.py`'s job.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}

_RESNET_RENAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
}


# ----------------------------------------------------------------------------------------------------------
# UNet


def _unet_block_prefixes(config: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """Map diffusers block prefixes to original ones; also return which prefixes are resnets."""
    n = config["layers_per_block"]
    mapping: dict[str, str] = {}
    resnets: set[str] = set()
    for i, _ in enumerate(config["block_out_channels"]):
        for j in range(n):
            mapping[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.0."
            mapping[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.1."
            resnets.add(f"down_blocks.{i}.resnets.{j}.")
        mapping[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{1 + i * (n + 1) + n}.0.op."
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(n + 1):
            mapping[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (n + 1) + j}.0."
            mapping[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (n + 1) + j}.1."
            resnets.add(f"up_blocks.{i}.resnets.{j}.")
        # The upsampler follows the attention in the last output block of a level, if there is one.
        mapping[f"up_blocks.{i}.upsamplers.0."] = (
            f"output_blocks.{i * (n + 1) + n}.{2 if has_attention else 1}."
        )
    mapping["mid_block.resnets.0."] = "middle_block.0."
    mapping["mid_block.attentions.0."] = "middle_block.1."
    mapping["mid_block.resnets.1."] = "middle_block.2."
    resnets |= {"mid_block.resnets.0.", "mid_block.resnets.1."}
    mapping.update(_UNET_TOP)
    return mapping, resnets


def unet_to_original(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel weights -> `model.diffusion_model.*` keys."""
    mapping, resnets = _unet_block_prefixes(config)
    out = {}
    for key, tensor in state_dict.items():
        prefix = _longest_prefix(key, mapping)
        if prefix is None:
            raise KeyError(f"no original-layout name for UNet weight {key}")
        rest = key[len(prefix) :]
        if prefix in resnets:
            for old, new in _RESNET_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
        out[UNET_PREFIX + mapping[prefix] + rest] = tensor
    return out


def unet_from_original(
    checkpoint: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """`model.diffusion_model.*` keys -> diffusers UNet2DConditionModel weights (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(checkpoint, dict(config))


# ----------------------------------------------------------------------------------------------------------
# VAE


def vae_to_original(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> `first_stage_model.*` keys (mid attention as 1x1 convs)."""
    levels = len(config["block_out_channels"])
    mapping = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for part in ("encoder", "decoder"):
        mapping[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        mapping[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        mapping[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(levels):
        mapping[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        mapping[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        mapping[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        mapping[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    attention_renames = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out = {}
    for key, tensor in state_dict.items():
        prefix = _longest_prefix(key, mapping)
        new_key = key if prefix is None else mapping[prefix] + key[len(prefix) :]
        if prefix is not None and prefix.endswith("attentions.0."):
            rest = key[len(prefix) :]
            for old, new in attention_renames.items():
                if rest.startswith(old):
                    new_key = mapping[prefix] + new + rest[len(old) :]
            if tensor.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                tensor = tensor[:, :, None, None]
        new_key = new_key.replace("conv_shortcut.", "nin_shortcut.")
        out[VAE_PREFIX + new_key] = tensor
    return out


def vae_from_original(checkpoint: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(checkpoint, dict(config))


# ----------------------------------------------------------------------------------------------------------
# Text encoders: OpenAI CLIP (kept in transformers naming) and OpenCLIP (its own naming)


def clip_to_original(state_dict: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel weights -> SD1 `cond_stage_model.transformer.*` / SDXL embedder 0."""
    return {CLIP_PREFIX[family] + key: tensor for key, tensor in _with_text_model_prefix(state_dict).items()}


def clip_from_original(
    checkpoint: dict[str, torch.Tensor], family: str, text_model
) -> dict[str, torch.Tensor]:
    prefix = CLIP_PREFIX[family]
    weights = {key[len(prefix) :]: tensor for key, tensor in checkpoint.items() if key.startswith(prefix)}
    return match_text_model_keys(weights, text_model)


def _with_text_model_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers 5 dropped the `text_model.` level inside CLIPTextModel; checkpoints keep it.
    return {
        key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key: tensor
        for key, tensor in state_dict.items()
    }


def match_text_model_keys(weights: dict[str, torch.Tensor], text_model) -> dict[str, torch.Tensor]:
    """Rename checkpoint-style `text_model.*` keys to what this transformers version's model expects."""
    expected = set(text_model.state_dict())
    out = {}
    for key, tensor in weights.items():
        if key not in expected and key.startswith("text_model.") and key[len("text_model.") :] in expected:
            key = key[len("text_model.") :]
        out[key] = tensor
    return out


_OPEN_CLIP_LAYER_RENAMES = [
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
]


def open_clip_to_original(state_dict: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel(WithProjection) weights -> OpenCLIP names (SD2, SDXL embedder 1).

    OpenCLIP keeps q, k and v in one `in_proj` matrix and stores `text_projection` transposed.
    """
    prefix = OPEN_CLIP_PREFIX[family]
    out: dict[str, torch.Tensor] = {}
    layer_prefix = "text_model.encoder.layers."
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _with_text_model_prefix(state_dict).items():
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
        elif key.startswith(layer_prefix):
            index, rest = key[len(layer_prefix) :].split(".", 1)
            block = f"{prefix}transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = rest.rsplit(".", 1)[1]  # weight or bias
                qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[rest.split(".")[1]] = tensor
                continue
            for old, new in _OPEN_CLIP_LAYER_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            out[block + rest] = tensor
        else:
            raise KeyError(f"no OpenCLIP name for text encoder weight {key}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def open_clip_from_original(
    checkpoint: dict[str, torch.Tensor], family: str, text_model
) -> dict[str, torch.Tensor]:
    """OpenCLIP names -> transformers CLIPTextModel(WithProjection) weights (diffusers' converter).

    Layers past `text_model`'s depth are dropped: diffusers' SD2 text encoder stops one layer short of
    OpenCLIP's, because SD2 conditions on the penultimate layer.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prefix = OPEN_CLIP_PREFIX[family]
    depth = text_model.config.num_hidden_layers
    kept = {}
    for key, tensor in checkpoint.items():
        resblock = key.startswith(prefix + "transformer.resblocks.")
        if resblock and int(key[len(prefix + "transformer.resblocks.") :].split(".")[0]) >= depth:
            continue
        if key.startswith(prefix):
            kept[key] = tensor
    return match_text_model_keys(convert_open_clip_checkpoint(text_model, kept, prefix=prefix), text_model)


# ----------------------------------------------------------------------------------------------------------
# Whole pipelines


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """A diffusers SD1.x or SDXL pipeline -> one original-layout state dict, as A1111 saves it.

    SD2 is left out on purpose: diffusers' SD2 text encoder has already dropped OpenCLIP's last layer, so
    the original file cannot be rebuilt from it.
    """
    from facesmith.errors import FacesmithError

    family = pipeline_family(pipe)
    if family == "sd2":
        raise FacesmithError("exporting SD2 models to the original layout is not supported")
    out = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    out.update(clip_to_original(pipe.text_encoder.state_dict(), family))
    if family == "sdxl":
        out.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), family))
    return {key: tensor.detach().contiguous() for key, tensor in out.items()}


def save_original(pipe, path, *, v_prediction: bool | None = None) -> None:
    """Save `pipe` as a single original-layout `.safetensors` file.

    A `v_pred` marker tensor is added for v-prediction models, the convention ComfyUI reads.
    """
    from safetensors.torch import save_file

    state = pipeline_to_original(pipe)
    if v_prediction is None:
        v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    if v_prediction:
        state["v_pred"] = torch.tensor([])
    save_file(state, str(path), metadata={"format": "pt"})


def pipeline_family(pipe) -> str:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    # SD2 conditions on OpenCLIP (GELU), SD1 on OpenAI CLIP (quick GELU).
    return "sd2" if pipe.text_encoder.config.hidden_act == "gelu" else "sd1"


def _longest_prefix(key: str, mapping: dict[str, str]) -> str | None:
    best = None
    for prefix in mapping:
        if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best
