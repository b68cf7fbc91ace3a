"""Textual-inversion embeddings at generate time: the files A1111 and diffusers write, as new prompt words.

Formats read (the ones AUTOMATIC1111's `modules/textual_inversion/textual_inversion.py` reads):
- A1111 safetensors: `{"emb_params": (vectors, width)}` (what `facesmith train --mode embedding` writes);
- A1111's `.pt`: `{"string_to_param": {"*": tensor}, "name": ..., "step": ...}`, read by torch's
  weights-only unpickler (runs no code; a `.pt` holding other objects needs --allow-pickle);
- diffusers' `learned_embeds.safetensors`: `{"<token>": (width,) or (vectors, width)}`;
- SDXL pairs: `{"clip_l": ..., "clip_g": ...}` for the two text encoders.

The word a prompt uses is the file's stem, as A1111 names embeddings, unless the file names its token:
the `name` metadata our exports record, the `name` of a `.pt`, or a diffusers file's one key. The word and
its `_1`, `_2`, ... vector entries are added as diffusers' `load_textual_inversion` adds them, so the
pipeline's own `maybe_convert_prompt` widens the word in every prompt (CLIP and the default model's BERT
tokenizer alike); `add_word` says why the adding itself is done here. The width is checked first, with
both widths named (diffusers' message names neither).
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
        state = _read_pickle(path, allow_pickle)
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


def _read_pickle(path: Path, allow_pickle: bool) -> dict:
    """An A1111 `.pt`/`.bin`: tensors, strings and numbers only, which torch's weights-only unpickler reads
    without running code; anything else in it needs --allow-pickle, as other pickles do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if not allow_pickle:
            raise FacesmithError(
                f"embedding {path} holds more than tensors ({str(err).splitlines()[0][:80]}); loading it runs "
                "code from the file: pass --allow-pickle if you trust its source"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, torch.Tensor):
        state = {path.stem: state}
    if not isinstance(state, dict):
        raise FacesmithError(f"{path} holds a {type(state).__name__}, not a textual-inversion embedding")
    return state


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
            if tokenizer.tokenize(embedding.name) == [embedding.name]:
                raise FacesmithError(
                    f"embedding {embedding.path.name}: {embedding.name!r} is already a word of this model's "
                    "tokenizer, so the embedding would never be used: rename the file"
                )
            add_word(tokenizer, text_encoder, embedding.name, vectors)
        loaded.append(embedding)
    return loaded


def add_word(tokenizer, text_encoder, name: str, vectors: torch.Tensor) -> None:
    """Add `name` (and `name_1`, ... for more vectors) to the tokenizer, with `vectors` as their rows.

    This is diffusers' `load_textual_inversion` steps 5-7, done here because diffusers refuses any name in
    the vocabulary, CLIP's sub-word pieces included ("alice" without "</w>"), while A1111 files are named
    like that all the time and load there; an added token is matched before BPE, so such a name is safe.
    The rows are set without `mean_resizing`, which would draw from the global RNG and take seconds on
    a 49408-word vocabulary for rows that are overwritten at once.
    """
    names = [name] + [f"{name}_{i}" for i in range(1, vectors.shape[0])]
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = vectors.to(weight.device, weight.dtype)
