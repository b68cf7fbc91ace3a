"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"): train new tokens, nothing else.

Each of `config.tokens` is added to the tokenizer with `num_vectors` vectors, named as diffusers'
`examples/textual_inversion/textual_inversion.py` and `load_textual_inversion` name them: `<alice>`,
`<alice>_1`, `<alice>_2`, ..., so that a prompt's `<alice>` is widened to all of them by the pipeline's own
`maybe_convert_prompt` (in training captions here, in sample grids and in `generate` alike). Every vector
starts as `init_word`'s embedding (the mean of its sub-word rows, as A1111's "initialization text").

What learns is one small parameter, `TokenVectors.vectors` (tokens x vectors, width), spliced into the
text encoder's input embedding in its forward pass, rather than diffusers' example's whole embedding
matrix with the other rows restored after each step: the same result (only the new rows ever change),
but the optimizer state, the checkpoints and the weight decay cover the new rows only, and the frozen
matrix stays exactly the base model's. It works for any text encoder with `get/set_input_embeddings`
(CLIP, and the default model's MiniLM/BERT).

Captions: with `caption_template` each caption becomes the template with `{token}` (all tokens, space
separated) and `{caption}` (the image's own caption, which may be empty), before caption dropout and
shuffling; without one every training caption must already contain a token, checked before the first
step.
Attribute captions (`caption_from_attributes`) are refused: they are made fresh each step, without tokens. The export (A1111 / diffusers embedding files)
is `export.py`'s; loading them to generate is `facesmith.models.embeddings`'.
"""

from __future__ import annotations

import torch

from facesmith.errors import FacesmithError


class TokenVectors(torch.nn.Module):
    """The text encoder's input embedding with the rows of the new token ids taken from `vectors`.

    The new ids are contiguous from `first_id` (the tokenizer appends added tokens), so a row is
    `vectors[id - first_id]` for ids at or past `first_id` and the frozen `base` row otherwise.
    """

    def __init__(self, base: torch.nn.Embedding, first_id: int, vectors: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_id = first_id
        self.vectors = torch.nn.Parameter(vectors.clone())

    @property
    def weight(self) -> torch.Tensor:
        # What code that reads `get_input_embeddings().weight` (shapes, dtypes) expects: the whole matrix.
        return torch.cat([self.base.weight[: self.first_id], self.vectors.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_id
        rows = self.base(ids.clamp(max=self.first_id - 1))
        if not bool(new.any()):
            return rows
        ours = self.vectors.to(rows.dtype)[(ids - self.first_id).clamp(min=0)]
        return torch.where(new.unsqueeze(-1), ours, rows)


def placeholder_names(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of one token: `<alice>`, `<alice>_1`, ... (diffusers' multi-vector names)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_training_tokens(pipe, tokens: list[str], num_vectors: int, init_word: str) -> TokenVectors:
    """Add the new tokens to `pipe`'s tokenizer and put a trainable `TokenVectors` into its text encoder."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    vocabulary = tokenizer.get_vocab()
    taken = [t for token in tokens for t in placeholder_names(token, num_vectors) if t in vocabulary]
    if taken:
        raise FacesmithError(
            f'token {taken[0]!r} is already a word of this model\'s tokenizer: pick a new one, e.g. "<{taken[0].strip("<>")}x>"'
        )
    base = text_encoder.get_input_embeddings()
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise FacesmithError(f'init_word {init_word!r} gives no tokens: pick an ordinary word, e.g. "face"')
    start = base.weight[init_ids].detach().float().mean(0)
    names = [name for token in tokens for name in placeholder_names(token, num_vectors)]
    first_id = len(tokenizer)
    if first_id > base.num_embeddings:
        raise FacesmithError(
            f"the tokenizer has {first_id} entries but the text encoder only {base.num_embeddings} rows: "
            "use the tokenizer the model was trained with"
        )
    added = tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if added != len(names) or ids != list(range(first_id, first_id + len(names))):
        raise FacesmithError(f"the tokenizer did not take the new tokens {names} as new entries")
    # Ids past the base matrix are all new tokens; a base with spare rows (padded vocabularies) is cut to
    # the tokenizer's size so the new ids start right after it.
    if first_id < base.num_embeddings:
        base = torch.nn.Embedding.from_pretrained(base.weight[:first_id].detach(), freeze=True)
    vectors = start.to(base.weight.dtype).repeat(len(names), 1)
    spliced = TokenVectors(base, first_id, vectors)
    text_encoder.set_input_embeddings(spliced)
    return spliced


def trained_tokens(pipe, tokens: list[str], num_vectors: int) -> dict[str, torch.Tensor]:
    """{token: (num_vectors, width) tensor} of a text encoder trained by `add_training_tokens`."""
    spliced = pipe.text_encoder.get_input_embeddings()
    if not isinstance(spliced, TokenVectors):
        raise FacesmithError("this model has no trained tokens to export (mode embedding adds them)")
    vectors = spliced.vectors.detach().float().cpu()
    return {
        token: vectors[i * num_vectors : (i + 1) * num_vectors].contiguous() for i, token in enumerate(tokens)
    }


def widened(captions: list[str], pipe) -> list[str]:
    """Captions with each multi-vector token widened to all its entries (`<alice>` -> `<alice> <alice>_1`),
    by diffusers' `maybe_convert_prompt`, as the pipeline does at generation."""
    return [
        pipe.maybe_convert_prompt(caption, pipe.tokenizer) if caption else caption for caption in captions
    ]


def token_captions(images: list, config) -> list:
    """The dataset's images with `caption_template` filled in (before dropout and shuffle see them);
    FacesmithError when a caption would hold none of the tokens."""
    import dataclasses

    if config.caption_from_attributes:
        raise FacesmithError(
            "caption_from_attributes makes new captions each step, without the tokens: set it to false "
            'and use caption_template, e.g. "a photo of {token}, {caption}"'
        )
    if config.caption_template is not None:
        token = " ".join(config.tokens)
        fill = config.caption_template.format
        return [dataclasses.replace(i, text=fill(token=token, caption=i.text).strip(" ,")) for i in images]
    for image in images:
        if not any(token in image.text for token in config.tokens):
            raise FacesmithError(
                f"the caption of {image.path.name} ({image.text[:60]!r}) has none of the tokens "
                f"{', '.join(config.tokens)}: add the token to the captions, or set caption_template, "
                'e.g. "a photo of {token}"'
            )
    return images
