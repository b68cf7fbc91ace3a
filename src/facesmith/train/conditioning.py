"""What the UNet is conditioned on in training: caption states from the text encoder(s), and SDXL's ids.

- SD 1.x / 2.x: one text encoder's states (`cache.encode_text`, with Kohya's long-caption chunks).
- SDXL (Podell et al. 2023): captions go through both text encoders exactly as diffusers'
  `StableDiffusionXLPipeline.encode_prompt` does them, so training and sampling agree: each tokenizer pads
  to its 77 tokens, the penultimate hidden states (`hidden_states[-2]`) of both are concatenated on the
  feature axis, and text_encoder_2's projected pooled output is the `text_embeds`. With the per-image
  `time_ids` (original size, crop top-left, target size: `dataset.crop_conditioning`, as diffusers'
  `train_text_to_image_sdxl.py` and Kohya's `sdxl_train.py` make them) they reach the UNet as
  `added_cond_kwargs` (`denoise`).

`Conditioner` is the trainer's one handle on the text side: it holds the text encoders (wrapped by
Accelerate when they train), encodes with or without gradients, and keeps the frozen-caption cache
(`cache.TextStateCache`). Latents are `cache.py`'s; the loss is `objective.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from facesmith.train.cache import TextStateCache, encode_text

States = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # SD: [B, T, D]; SDXL: (hidden, pooled)


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def encode_sdxl_text(tokenizers, text_encoders, captions: list[str], device: torch.device) -> States:
    """(hidden [B, 77, D1 + D2], pooled [B, P]) as `StableDiffusionXLPipeline.encode_prompt` (no clip
    skip): each encoder's hidden_states[-2], concatenated; the pooled output of the last encoder."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds (encode_prompt's test)
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def denoise(
    unet, noisy: torch.Tensor, timesteps: torch.Tensor, states: States, time_ids=None
) -> torch.Tensor:
    """The UNet's prediction for text `states`; SDXL's pooled embeds and `time_ids` go in as its
    `added_cond_kwargs` (`text_embeds`, `time_ids`), as the SDXL pipeline passes them."""
    if isinstance(states, tuple):
        hidden, pooled = states
        added = {"text_embeds": pooled, "time_ids": time_ids.to(hidden)}
        return unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
    return unet(noisy, timesteps, states).sample


class Conditioner:
    """The text encoder(s) of a training run and how their states are made at each step."""

    def __init__(self, pipe, device: torch.device, *, train_text: bool, long_length: int | None = None):
        self.pipe, self.device, self.train_text, self.long_length = pipe, device, train_text, long_length
        self.encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if is_sdxl(pipe) else [])
        self.cache: TextStateCache | None = None

    def to(self, dtype: torch.dtype) -> None:
        """Onto the training device: fp32 when they train (as diffusers' scripts keep trained weights)."""
        for encoder in self.encoders:
            encoder.to(self.device, torch.float32 if self.train_text else dtype)

    def prepare(self, accelerator) -> None:
        if self.train_text:
            self.encoders = [accelerator.prepare(encoder) for encoder in self.encoders]

    def unwrap_into(self, accelerator) -> None:
        """Put the trained (unwrapped) encoders back on the pipeline, for the export."""
        raw = [accelerator.unwrap_model(e, keep_torch_compile=False) for e in self.encoders]
        self.pipe.text_encoder = raw[0]
        if len(raw) == 2:
            self.pipe.text_encoder_2 = raw[1]

    def encode(self, captions: list[str], encoders=None) -> States:
        encoders = encoders or self.encoders
        if len(encoders) == 2:
            tokenizers = [self.pipe.tokenizer, self.pipe.tokenizer_2]
            return encode_sdxl_text(tokenizers, encoders, captions, self.device)
        return encode_text(self.pipe.tokenizer, encoders[0], captions, self.device, self.long_length)

    def fill_cache(self, captions: set[str], progress: Callable[[int, int], None] | None = None) -> None:
        """Encode the (fixed) captions once; every step then reads them (Kohya's cache_text_encoder_outputs)."""
        self.cache = TextStateCache(self.encode)
        self.cache.fill(captions, progress=progress)

    def __call__(self, captions: list[str]) -> States:
        """The states of a training step: from the cache, or encoded (with gradients when they train)."""
        if self.cache is not None:
            return self.cache(captions)
        if self.train_text:
            return self.encode(captions)
        with torch.no_grad():
            return self.encode(captions)

    def frozen(self, accelerator) -> Callable[[list[str]], States]:
        """States from the unwrapped encoders, for passes outside the step (validation)."""
        if self.cache is not None:
            return self.cache
        raw = [accelerator.unwrap_model(e) for e in self.encoders] if self.train_text else self.encoders
        return lambda captions: self.encode(captions, raw)

    def no_sync(self, accelerator, stack) -> None:
        """Enter DDP's no_sync for every trained encoder (all but the last micro-batch of a step)."""
        if self.train_text:
            for encoder in self.encoders:
                stack.enter_context(accelerator.no_sync(encoder))
