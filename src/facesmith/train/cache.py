"""The UNet's inputs from a batch: image latents and text-encoder states, computed or cached.

Latent caching (Kohya's `--cache_latents` / `--cache_latents_to_disk`): every image (and its mirror
image when flipping is on) is encoded once, in memory or into one `.safetensors` file on disk. The
cache is keyed on a hash of the VAE's weights, the bucket sizes, the crop mode, the dtype and the image
files' paths, sizes and mtimes, so a cache made under any other setting or for changed images is never
read; it is simply not found. Text-encoder states are cached only when the text encoder is frozen and
the captions never vary (no shuffle, tag dropout or attribute captions). Scaling latents is `facesmith.latents`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from facesmith.errors import FacesmithError
from facesmith.latents import encode_image
from facesmith.train.dataset import BatchItem, FaceImage, crop_conditioning, load_pixels

CROP = "center"


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's tensors in name order: the same weights give the same key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latent_cache_key(
    vae_hash: str, sizes: dict[int, tuple[int, int]], dtype: torch.dtype, flip: bool, images: list[FaceImage]
) -> str:
    parts = {
        "vae": vae_hash,
        "sizes": sorted(set(sizes.values())),
        "crop": CROP,
        "dtype": str(dtype),
        "flip": flip,
        "images": [[str(i.path.resolve()), i.path.stat().st_size, i.path.stat().st_mtime_ns] for i in images],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


class LatentSource:
    """Latents for batch items: encoded on every step (`none`), or once into memory or a disk file."""

    def __init__(
        self,
        images: list[FaceImage],
        sizes: dict[int, tuple[int, int]],  # image index -> (width, height) of its bucket
        vae,
        *,
        mode: str,
        flip: bool,
        device: torch.device,
        cache_dir: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        self.images, self.sizes, self.vae, self.device = images, sizes, vae, device
        self.dtype = next(vae.parameters()).dtype
        self.cached: dict[tuple[int, bool], torch.Tensor] = {}
        self.rows: dict[tuple[int, bool], tuple[tuple[int, ...], int]] = {}  # -> (table shape, row)
        self.tables: dict[tuple[int, ...], torch.Tensor] = {}
        self.cache_file: Path | None = None
        if mode == "none":
            return
        key = latent_cache_key(model_fingerprint(vae), sizes, self.dtype, flip, images)
        if mode == "disk":
            self.cache_file = Path(cache_dir or ".") / f"latents-{key}.safetensors"
            if self.cache_file.is_file():
                from safetensors.torch import load_file

                for name, tensor in load_file(self.cache_file).items():
                    index, side = name.split(":")
                    self.cached[(int(index), side == "flip")] = tensor
                self._pack()
                return
        wanted = [(i, f) for i in range(len(images)) for f in ((False, True) if flip else (False,))]
        for done, (index, flipped) in enumerate(wanted, 1):
            self.cached[(index, flipped)] = self._encode([BatchItem(index, flipped)])[0].cpu()
            if progress is not None:
                progress(done, len(wanted))
        if self.cache_file is not None:
            from safetensors.torch import save_file

            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f"{self.cache_file.name}.tmp-{os.getpid()}")
            tensors = {f"{i}:{'flip' if f else 'plain'}": t.contiguous() for (i, f), t in self.cached.items()}
            save_file(tensors, tmp, metadata={"key": key, "crop": CROP, "dtype": str(self.dtype)})
            os.replace(tmp, self.cache_file)
        self._pack()

    def _pack(self) -> None:
        """One [N, C, h, w] table per latent shape, so a batch is one index_select and one copy.

        On CUDA the tables live on the GPU when they take under a quarter of its free memory (SD1.5 at
        512 px: 64 KiB a latent, 50k faces in 3.2 GB), else in pinned host memory, copied without
        blocking: either way the step never waits on a pageable host-to-device copy.
        """
        by_shape: dict[tuple[int, ...], list[tuple[int, bool]]] = {}
        for key, tensor in self.cached.items():
            by_shape.setdefault(tuple(tensor.shape), []).append(key)
        total = sum(t.numel() * t.element_size() for t in self.cached.values())
        on_gpu = self.device.type == "cuda" and total < torch.cuda.mem_get_info(self.device)[0] / 4
        self.rows, self.tables = {}, {}
        for shape, keys in by_shape.items():
            table = torch.stack([self.cached[k] for k in keys])
            if on_gpu:
                table = table.to(self.device)
            elif self.device.type == "cuda":
                table = table.pin_memory()
            self.tables[shape] = table
            self.rows.update({k: (shape, row) for row, k in enumerate(keys)})
        self.cached.clear()

    @torch.no_grad()
    def _encode(self, items: list[BatchItem]) -> torch.Tensor:
        pixels = []
        for item in items:
            path = self.images[item.index].path
            try:
                x = load_pixels(path, self.sizes[item.index])
            except OSError as error:  # Pillow names no file: "image file is truncated"
                raise FacesmithError(
                    f"cannot read training image {path} ({error}): replace it, or remove its line from the "
                    "dataset's metadata.jsonl"
                ) from None
            pixels.append(x.flip(-1) if item.flip else x)
        x = torch.stack(pixels).to(self.device, self.dtype)
        return encode_image(self.vae, x).float()

    def time_ids(self, items: list[BatchItem]) -> torch.Tensor:
        """SDXL's [B, 6] size and crop conditioning of the items (`dataset.crop_conditioning`), which the
        latents of those items were made under; float32 on the training device."""
        rows = [crop_conditioning(self.images[i.index].size, self.sizes[i.index], i.flip) for i in items]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def latents(self, items: list[BatchItem]) -> torch.Tensor:
        """float32 scaled latents [B, C, h, w] on the training device."""
        if self.rows:
            places = [self.rows[(i.index, i.flip)] for i in items]
            table = self.tables[places[0][0]]  # a batch comes from one bucket: one shape
            rows = torch.tensor([row for _, row in places]).to(table.device)
            return table.index_select(0, rows).to(self.device, non_blocking=True).float()
        return self._encode(items)


def encode_text(
    tokenizer, text_encoder, captions: list[str], device: torch.device, max_length: int | None = None
) -> torch.Tensor:
    """Token states [B, tokens, dim] as diffusers' pipelines encode a prompt (padded to the max length).

    The attention mask goes in only when the text encoder's config asks for it (`use_attention_mask`),
    exactly as `StableDiffusionPipeline.encode_prompt` does, so training and sampling agree. A
    `max_length` of 150 or 225 encodes CLIP captions in 75-token chunks (`encode_long_text`).
    """
    if max_length is not None and max_length + 2 > tokenizer.model_max_length:
        return encode_long_text(tokenizer, text_encoder, captions, device, max_length)
    tokens = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = None
    config = getattr(text_encoder, "module", text_encoder).config  # DDP wraps a trained text encoder
    if getattr(config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def encode_long_text(
    tokenizer, text_encoder, captions: list[str], device: torch.device, max_length: int
) -> torch.Tensor:
    """[B, max_length + 2, dim]: Kohya's `max_token_length` (sd-scripts `train_util.get_hidden_states`).

    The caption is tokenized to max_length + 2 tokens (BOS, max_length tokens, EOS/padding) and cut into
    chunks of model_max_length - 2; each chunk is encoded as BOS + chunk + EOS, and the states are joined
    as the first chunk's BOS, every chunk's inner states, and the last chunk's final state.
    """
    inner = tokenizer.model_max_length - 2
    ids = tokenizer(
        captions, padding="max_length", max_length=max_length + 2, truncation=True, return_tensors="pt"
    ).input_ids
    bos, last = ids[:, :1], ids[:, -1:]
    chunks = [
        torch.cat([bos, ids[:, start : start + inner], last], dim=1)
        for start in range(1, max_length + 1, inner)
    ]
    states = text_encoder(torch.cat(chunks).to(device))[0].chunk(len(chunks))
    pieces = [states[0][:, :1]] + [s[:, 1:-1] for s in states] + [states[-1][:, -1:]]
    return torch.cat(pieces, dim=1)


def warn_overlong_captions(pipe, captions: set[str], long_length: int | None) -> None:
    """One PromptTruncatedWarning counting the captions the text encoder cuts, with the fix for CLIP."""
    import warnings

    from facesmith.generate import PromptTruncatedWarning

    overlong = overlong_captions(pipe.tokenizer, captions, long_length)
    if not overlong:
        return
    limit = long_length or pipe.tokenizer.model_max_length - 2
    clip = type(pipe.text_encoder).__name__ == "CLIPTextModel"
    hint = "; max_token_length = 150 or 225 reads more (CLIP)" if long_length != 225 and clip else ""
    warnings.warn(
        f"{len(overlong)} of {len(captions)} captions are longer than the "
        f"{limit} tokens the text encoder reads and are cut there, so their ends train as nothing "
        f"(e.g. {overlong[0][:60]!r}...){hint}",
        PromptTruncatedWarning,
        stacklevel=3,
    )


def overlong_captions(tokenizer, captions: set[str], max_length: int | None) -> list[str]:
    """The captions longer than the text encoder reads (max_length, else model_max_length - 2 tokens)."""
    limit = max_length or tokenizer.model_max_length - 2
    ordered = sorted(captions)
    lengths = [len(ids) - 2 for ids in tokenizer(ordered, truncation=False).input_ids] if ordered else []
    return [c for c, n in zip(ordered, lengths, strict=True) if n > limit]


class TextStateCache:
    """Frozen text-encoder states by caption (captions must not vary): encoded ahead of training by
    `fill`, and any caption it did not know on first use. `encode(captions)` gives the states of a list
    of captions: one [B, T, D] tensor, or a tuple of tensors (SDXL's hidden states and pooled embeds)."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor | tuple[torch.Tensor, ...]]):
        self.encode = encode
        self.states: dict[str, torch.Tensor | tuple[torch.Tensor, ...]] = {}

    def _add(self, captions: list[str]) -> None:
        encoded = self.encode(captions)
        if isinstance(encoded, tuple):
            self.states.update(zip(captions, zip(*encoded, strict=True), strict=True))
        else:
            self.states.update(zip(captions, encoded, strict=True))

    @torch.no_grad()
    def fill(
        self, captions: set[str], progress: Callable[[int, int], None] | None = None, batch: int = 64
    ) -> None:
        """Encode `captions` ahead of training, `batch` at a time, in sorted order (so a resumed run holds
        the same states as a straight one); `progress(done, total)` after each batch."""
        todo = sorted(set(captions) - set(self.states))
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            self._add(chunk)
            if progress is not None:
                progress(start + len(chunk), len(todo))

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        missing = sorted({c for c in captions if c not in self.states})
        if missing:
            self._add(missing)
        rows = [self.states[c] for c in captions]
        if isinstance(rows[0], tuple):
            return tuple(torch.stack(part) for part in zip(*rows, strict=True))
        return torch.stack(rows)
