"""Textual-inversion embeddings at generate time: the files A1111 and diffusers write, as new prompt words.

Formats read (the ones AUTOMATIC1111's `modules/textual_inversion/textual_inversion.py` reads):
- A1111 safetensors: `{"emb_params": (vectors, width)}` (what `facesmith train --mode embedding` writes);
- A1111's `.pt`: `{"string_to_param": {"*": tensor}, "name": ..., "step": ...}` (pickle: --allow-pickle);
- diffusers' `learned_embeds.safetensors`: `{"<token>": (width,) or (vectors, width)}`;
- SDXL pairs: `{"clip_l": ..., "clip_g": ...}` for the two text encoders.

The word a prompt uses is the file's stem, as A1111 names embeddings, unless the file names its token:
the `name` metadata our exports record, the `name` of a `.pt`, or a diffusers file's one key. Loading is
diffusers' `load_textual_inversion` (it adds the token and its `_1`, `_2`, ... vector entries to the
tokenizer and text encoder; the pipeline's `maybe_convert_prompt` widens the word in every prompt), which
works offline on tensors for CLIP and for the default model's BERT tokenizer alike. Before it, the width
is checked here: diffusers' own message for a mismatch names neither width.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from facesmith.errors import FacesmithError


@dataclass(frozen=True)
class Embedding:
    path: Path
    name: str  # the word that calls it in a prompt
    vectors: dict[str, torch.Tensor]  # text-encoder attribute -> (vectors, width)

    @property
    def short_hash(self) -> str:
        """A1111's `TI hashes` value: the first 10 hex digits of the file's sha256 (its AutoV2 hash)."""
        return file_sha256(self.path)[:10]

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_embedding(path: str | Path, *, allow_pickle: bool = False) -> Embedding:
    """One embedding file -> its word and vectors; FacesmithError for a missing or foreign file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FacesmithError(f"embedding file {path} does not exist or is not a file")
    name, metadata = path.stem, {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    else:
        from facesmith.models.single_file import read_checkpoint

        state = read_checkpoint(path, allow_pickle=allow_pickle)
    if "string_to_param" in state:  # A1111 .pt
        vectors = {"text_encoder": next(iter(state["string_to_param"].values()))}
        name = str(state.get("name") or name)
    elif "emb_params" in state:
        vectors = {"text_encoder": state["emb_params"]}
        name = metadata.get("name") or name
    elif "clip_l" in state and "clip_g" in state:
        vectors = {"text_encoder": state["clip_l"], "text_encoder_2": state["clip_g"]}
    elif len(state) == 1 and isinstance(next(iter(state.values())), torch.Tensor):
        name, tensor = next(iter(state.items()))  # diffusers' learned_embeds: {token: tensor}
        vectors = {"text_encoder": tensor}
    else:
        keys = ", ".join(list(state)[:3]) or "no tensors"
        raise FacesmithError(
            f"{path} is not a textual-inversion embedding in A1111 or diffusers form (keys: {keys})"
        )
    vectors = {part: v.detach().float().reshape(-1, v.shape[-1]) for part, v in vectors.items()}
    from facesmith.models.loading import non_finite

    if non_finite(vectors):
        raise FacesmithError(f"embedding {path} holds NaN or inf: the file is corrupt")
    return Embedding(path, name, vectors)


def apply_embeddings(
    pipe, paths: list[str] | tuple[str, ...], *, allow_pickle: bool = False
) -> list[Embedding]:
    """Add each embedding's word to `pipe`'s tokenizer(s) and text encoder(s); returns what was loaded."""
    loaded: list[Embedding] = []
    for spec in paths:
        embedding = read_embedding(spec, allow_pickle=allow_pickle)
        clash = next((e for e in loaded if e.name == embedding.name), None)
        if clash is not None:
            raise FacesmithError(
                f"two embeddings are called {embedding.name!r} ({clash.path.name}, {embedding.path.name}): "
                "rename one file"
            )
        if len(embedding.vectors) == 1 and getattr(pipe, "text_encoder_2", None) is not None:
            raise FacesmithError(
                f"embedding {embedding.path.name} has vectors for one text encoder; this SDXL model needs "
                "clip_l and clip_g: use an SDXL embedding"
            )
        for part, vectors in embedding.vectors.items():
            text_encoder = getattr(pipe, part, None)
            tokenizer = getattr(pipe, part.replace("text_encoder", "tokenizer"), None)
            if text_encoder is None or tokenizer is None:
                raise FacesmithError(
                    f"embedding {embedding.path.name} is for a model with two text encoders (SDXL); this model "
                    "has one"
                )
            width = text_encoder.get_input_embeddings().weight.shape[-1]
            if vectors.shape[-1] != width:
                raise FacesmithError(
                    f"embedding {embedding.path.name} has {vectors.shape[-1]}-wide vectors but this model's text "
                    f"encoder takes {width}-wide ones: use an embedding trained for this model"
                )
            if embedding.name in tokenizer.get_vocab():
                raise FacesmithError(
                    f"embedding {embedding.path.name}: {embedding.name!r} is already a word of this model's "
                    "tokenizer, so the embedding would never be used: rename the file"
                )
            dtype = text_encoder.get_input_embeddings().weight.dtype
            pipe.load_textual_inversion(
                vectors.to(dtype), token=embedding.name, tokenizer=tokenizer, text_encoder=text_encoder
            )
        loaded.append(embedding)
    return loaded
