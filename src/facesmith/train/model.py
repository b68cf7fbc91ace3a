"""What gets trained: the base pipeline (pretrained or a preset), which parameters learn, and the fit check.

Full fine-tuning trains every UNet weight (and the text encoder's when asked). LoRA goes through peft
(`LoraConfig`, diffusers' `add_adapter`) on Kohya's default targets: every Linear and 1x1 Conv2d inside
the UNet's transformer blocks (`Transformer2DModel`) and the text encoder's attention and MLP layers;
with `lora_conv` also the layers of ResNet, down- and up-sampling blocks (Kohya's LoCon `conv_dim`);
Kohya's block weights and block_dims shape the UNet's LoRA per block (`blocks.py`).
SDXL trains as diffusers' `train_text_to_image_sdxl.py` / `train_text_to_image_lora_sdxl.py` and
Kohya's `sdxl_train.py` / `sdxl_train_network.py` do: `train_text_encoder` trains (or adds LoRA to) both
text encoders; its conditioning is `conditioning.py`'s.
The fit check runs before the first step so that a dataset or model mismatch never costs a training run.
Loading sources is `facesmith.models.loading`'s job; writing files is `export.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.train.blocks import block_layout, uses_blocks
from facesmith.train.config import TrainConfig

UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_BLOCKS = ("CLIPAttention", "CLIPMLP")


@dataclass
class TrainModel:
    pipe: Any  # StableDiffusion(XL)Pipeline; its unet/text_encoder(s) are the trained modules
    family: str  # "sd1", "sd2", "sdxl" or "preset:<name>"
    noise_scheduler: Any  # DDPMScheduler with the model's noise schedule and prediction type
    unet_lora: list[str]  # LoRA target module names (empty for full fine-tuning)
    text_lora: list[str]
    base_name: str = ""  # the model trained on, as A1111 names it ("facesmith-default", a file's stem)
    base_hash: str | None = None  # sha256 of its weight files (UNet shards or files); None from scratch
    default_sampler: str = "DDIM"  # what its sample grids use unless told (the model's own, as generate)
    default_cfg: float = 7.5
    text_lora_2: list[str] = field(default_factory=list)  # SDXL's text_encoder_2 LoRA targets
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # UNet LoRA module -> block lr weight

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        params = [(f"unet.{n}", p) for n, p in self.pipe.unet.named_parameters() if p.requires_grad]
        for part in ("text_encoder", "text_encoder_2"):
            encoder = getattr(self.pipe, part, None)
            if encoder is not None:
                params += [(f"{part}.{n}", p) for n, p in encoder.named_parameters() if p.requires_grad]
        return params


def build_model(config: TrainConfig) -> TrainModel:
    """Load or build the pipeline, set which weights learn, and the training noise schedule."""
    from diffusers import DDPMScheduler

    if config.preset is not None:
        from facesmith.train.presets import build_preset_pipeline

        torch.manual_seed(config.seed)  # the untrained UNet's weights
        pipe, family = build_preset_pipeline(config.preset), f"preset:{config.preset}"
        base_name, base_hash = f"{config.preset} (from scratch)", None
        from facesmith.models.default_model import DEFAULT_MODEL_CFG

        defaults = ("Euler a", DEFAULT_MODEL_CFG)  # the default model's layout samples as it does
    else:
        from facesmith.models.loading import cached_sha256, load_model
        from facesmith.models.sd_layout import pipeline_family
        from facesmith.models.taef2 import TAEF2

        loaded = load_model(config.model, allow_pickle=config.allow_pickle)
        pipe, base_name = loaded.pipe, loaded.name
        base_hash = cached_sha256(loaded.weight_files) if loaded.weight_files else None
        defaults = (loaded.default_sampler, loaded.default_cfg)
        # The embedded default model (MiniLM + TAEF2) is the face-small preset, trained further; a folder
        # in its layout that `train` exported names its own preset.
        family = (
            f"preset:{_preset_of(config.model)}" if isinstance(pipe.vae, TAEF2) else pipeline_family(pipe)
        )
        if family == "sdxl" and config.mode == "embedding":
            raise FacesmithError(
                "mode embedding trains SD 1.x / 2.x models here (SDXL's two text encoders each need their "
                "own vectors): use mode lora for an SDXL model"
            )
    if family.startswith("preset:") and config.train_text_encoder:
        raise FacesmithError(
            "train_text_encoder: the default model's layout keeps its MiniLM text encoder frozen (its export "
            "holds only the UNet), so a trained text encoder would be lost; set train_text_encoder = false"
        )
    schedule = dict(pipe.scheduler.config)
    if config.prediction_type is not None:
        schedule["prediction_type"] = config.prediction_type
    noise_scheduler = DDPMScheduler.from_config(schedule)

    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    pipe.vae.requires_grad_(False).eval()
    for encoder in encoders:
        encoder.requires_grad_(False).eval()
    pipe.unet.requires_grad_(False).train()
    unet_lora, text_loras, multipliers = [], [[], []], {}
    if config.mode == "full":
        pipe.unet.requires_grad_(True)
        if config.train_text_encoder:  # SDXL: both, as diffusers' and Kohya's SDXL scripts do
            for encoder in encoders:
                encoder.requires_grad_(True).train()
    elif config.mode == "embedding":
        from facesmith.train.embedding import add_training_tokens

        add_training_tokens(pipe, config.tokens, config.num_vectors, config.init_word)
    else:
        unet_lora = lora_targets(pipe.unet, UNET_BLOCKS + (UNET_CONV_BLOCKS if config.lora_conv else ()))
        patterns: tuple = ({}, {})
        if uses_blocks(config):  # Kohya's block weights and block_dims (blocks.py)
            unet_lora, *patterns, multipliers = block_layout(pipe.unet, unet_lora, config)
        pipe.unet.add_adapter(_lora_config(unet_lora, config, *patterns))
        for k, encoder in enumerate(encoders if config.train_text_encoder else []):
            text_loras[k] = lora_targets(encoder, TEXT_BLOCKS)
            if not text_loras[k]:
                raise FacesmithError(
                    f"the text encoder ({type(encoder).__name__}) has no CLIP layers for a LoRA: "
                    "set train_text_encoder = false"
                )
            from peft import inject_adapter_in_model

            # What diffusers' add_adapter does; transformers' own add_adapter needs a newer peft.
            lora = _lora_config(text_loras[k], config)
            encoder.peft_config = {"default": lora}
            inject_adapter_in_model(lora, encoder, "default")
            encoder.train()
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for encoder in encoders if config.train_text_encoder else []:
            encoder.gradient_checkpointing_enable()
    text_lora, text_lora_2 = text_loras
    return TrainModel(pipe, family, noise_scheduler, unet_lora, text_lora, base_name, base_hash, *defaults,
                      text_lora_2=text_lora_2, lr_multipliers=multipliers)  # fmt: skip


def _preset_of(source: str | None) -> str:
    """The preset a default-layout folder was trained as (`unet.json`'s "preset"), else face-small."""
    import json
    from pathlib import Path

    manifest = Path(source) / "unet.json" if source else None
    if manifest is not None and manifest.is_file():
        return str(json.loads(manifest.read_text()).get("preset", "face-small"))
    return "face-small"


def _lora_config(
    targets: list[str], config: TrainConfig, ranks: dict | None = None, alphas: dict | None = None
):
    """peft's config for `config.lora_type`: LoRA (with DoRA), or LyCORIS's LoHa / LoKr as peft has them.

    All start as a no-op, as Kohya's and LyCORIS's do: LoRA's up (B) is zero, LoHa's `hada_w2_a` and
    LoKr's `lokr_w2` are zero. `network_dropout` is peft's dropout on the adapter's input (Kohya's
    `network_dropout` drops the down projection's output instead; both regularise only the adapter path).
    """
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    patterns = dict(rank_pattern=ranks or {}, alpha_pattern=alphas or {})
    shared = dict(r=config.lora_rank, alpha=config.lora_alpha, target_modules=targets, **patterns)
    if config.lora_type == "loha":
        return LoHaConfig(**shared, module_dropout=0.0, rank_dropout=config.network_dropout)
    if config.lora_type == "lokr":
        return LoKrConfig(**shared, rank_dropout=config.network_dropout, decompose_factor=config.lokr_factor)
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=targets,
        init_lora_weights=True,
        use_dora=config.use_dora,
        lora_dropout=config.network_dropout,
        **patterns,
    )


def lora_targets(model: torch.nn.Module, block_types: tuple[str, ...]) -> list[str]:
    """Full names of the Linear and Conv2d layers inside modules of `block_types` (Kohya's selection).

    3x3 convolutions count only inside UNET_CONV_BLOCKS, as Kohya adds them only with `conv_dim`.
    """
    targets = []
    for name, module in model.named_modules():
        if type(module).__name__ not in block_types:
            continue
        conv_block = type(module).__name__ in UNET_CONV_BLOCKS
        for child_name, child in module.named_modules():
            if isinstance(child, torch.nn.Linear) or (
                isinstance(child, torch.nn.Conv2d) and (child.kernel_size == (1, 1) or conv_block)
            ):
                targets.append(f"{name}.{child_name}" if name else child_name)
    return sorted(set(targets))


def check_fits(model: TrainModel, sizes: set[tuple[int, int]], max_token_length: int | None = None) -> None:
    """FacesmithError before the first step if the data or the parts of the model don't fit together."""
    pipe = model.pipe
    unet = pipe.unet.config
    latent_channels = getattr(pipe.vae.config, "latent_channels", None)
    if latent_channels is not None and latent_channels != unet.in_channels:
        raise FacesmithError(
            f"the VAE makes {latent_channels}-channel latents but the UNet takes {unet.in_channels}: "
            "use a VAE and UNet from the same model"
        )
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if model.family == "sdxl" else [])
    width = sum(encoder.config.hidden_size for encoder in encoders)  # SDXL concatenates both
    if width != unet.cross_attention_dim:
        raise FacesmithError(
            f"the text encoder gives {width}-d states but the UNet cross-attends to {unet.cross_attention_dim}-d: "
            "use the text encoder the model was trained with"
        )
    if model.family == "sdxl":
        _check_sdxl_fits(pipe, max_token_length)
    elif max_token_length not in (None, 75) and type(pipe.text_encoder).__name__ != "CLIPTextModel":
        raise FacesmithError(
            f"max_token_length {max_token_length} chunks CLIP text encoders only; this model's is a "
            f"{type(pipe.text_encoder).__name__}: leave max_token_length unset"
        )
    factor = pipe.vae_scale_factor * 2 ** (len(unet.block_out_channels) - 1)
    for w, h in sorted(sizes):
        if w % factor or h % factor:
            raise FacesmithError(
                f"training size {w}x{h} is not a multiple of {factor} px, which this UNet's "
                f"{len(unet.block_out_channels) - 1} down-samplings of {pipe.vae_scale_factor}x latents need: "
                "change resolution (or bucket_step)"
            )


def _check_sdxl_fits(pipe, max_token_length: int | None) -> None:
    """SDXL's added conditioning: the pooled text embeds and six size/crop ids make the UNet's
    `add_embedding` input (`StableDiffusionXLPipeline._get_add_time_ids`' check, made before training)."""
    unet = pipe.unet.config
    pooled = pipe.text_encoder_2.config.projection_dim
    wanted = unet.projection_class_embeddings_input_dim
    if unet.addition_embed_type != "text_time" or pooled + 6 * unet.addition_time_embed_dim != wanted:
        raise FacesmithError(
            f"this SDXL UNet's added conditioning ({unet.addition_embed_type}, {wanted} inputs) does not take "
            f"text_encoder_2's {pooled}-d pooled embeds and six size ids: use the text encoders it was made with"
        )
    if max_token_length not in (None, 75):
        raise FacesmithError(
            f"max_token_length {max_token_length}: SDXL captions are read as 75 tokens, as its pipeline "
            "reads prompts; leave max_token_length unset"
        )
