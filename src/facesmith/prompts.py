"""Prompt text: AUTOMATIC1111's attention syntax read into weights, and the weighted text embeddings.

Owns what facesmith does with a prompt's words before the UNet sees them: the 77-token limit and its
warning (`truncated_words`), A1111's emphasis grammar (`parse_weights`), the syntax facesmith still reads
literally (`unsupported_syntax`), and `weighted_embeddings`, the conditioning tensors for the diffusers
pipeline. Sampling itself is `generate.py`'s; training captions are never parsed here (Kohya trains on
literal captions, and so does `train/`).

The grammar is A1111's as its wiki ("Features > Attention/emphasis") and the doctests of its
modules/prompt_parser.py `parse_prompt_attention` describe it; this is our own implementation (A1111's
code is AGPL-3.0), a scanner with one stack per bracket kind:
- `(words)` multiplies the weight of `words` by 1.1, `[words]` divides it by 1.1, `(words:1.3)` multiplies
  it by 1.3; nested brackets multiply; `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters.
- A `)` closes the latest open `(` and a `]` the latest `[`, each kind on its own; a closing bracket with
  nothing open is a literal character; a bracket still open at the end applies to the rest of the prompt
  (`(unbalanced` is weighted 1.1). `:1.3)` is a weight only inside an open `(`, else plain text.
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk. Unlike A1111, where a BREAK
  inside brackets is multiplied into an ordinary word, a BREAK breaks wherever it stands.
- Neighbouring pieces of equal weight are merged, as A1111 returns them.
- Differences: A1111's weight pattern `[+-]?[.\\d]+` also takes `1.2.3` (and then fails); here a weight
  must be a number, and `(a:1.2.3)` is the text `a:1.2.3` at 1.1.

The embedding follows A1111's modules/sd_hijack_clip.py (`tokenize_line`, `process_tokens`): each weighted
piece is tokenized without special tokens, the tokens are laid into chunks of 75 (a chunk that fills up
within 20 tokens after a comma is cut after that comma, A1111's "comma padding backtrack" default), each
chunk gets the tokenizer's own start/end tokens and padding up to 77, is encoded by the text encoder
exactly as diffusers' `encode_prompt` encodes a string (last hidden state for SD 1.x/2.x and the default
model, with its attention mask; the penultimate hidden states of both encoders for SDXL, and the second
encoder's pooled output of the first chunk), then each token's state is multiplied by its weight and the
chunk rescaled by `original_mean / new_mean`, so its mean is the unweighted one. Chunks are concatenated
along the tokens. With every weight 1 and one chunk the result is diffusers' own encoding of the text.

Only prompts that use the syntax take this path (`uses_syntax`); a plain prompt goes to the pipeline as
a string, unchanged, truncated at 75 tokens with `PromptTruncatedWarning`. A weighted prompt is chunked
as in A1111 (nothing is cut); a plain text beside it (the other of prompt and negative prompt) keeps its
one truncated chunk, and the shorter side is padded with chunks of the empty prompt, as A1111 pads
cond/uncond to the same length.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

BREAK = ("BREAK", -1.0)  # the marker parse_weights returns for `BREAK`, as A1111 lists it
ROUND = 1.1  # `(words)`
SQUARE = 1 / 1.1  # `[words]`
CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20  # A1111's opts.comma_padding_backtrack default

_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_ESCAPABLE = "()[]\\"
# A1111 reads these before emphasis (modules/prompt_parser.py's lark grammar); facesmith does not (yet).
_EDITING = re.compile(r"\[[^\[\]]*:\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*\]")  # [from:to:when], [to:when]
_ALTERNATION = re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")  # [cat|dog]
_COMPOSABLE = re.compile(r"\bAND\b")  # composable diffusion: "a cat AND a dog"


class PromptTruncatedWarning(UserWarning):
    """The prompt is longer than the text encoder reads; the message names the words that were cut."""


class PromptWeightingWarning(UserWarning):
    """The prompt uses A1111 syntax that facesmith does not support (prompt editing, alternation, AND)."""


# ----------------------------------------------------------------------------------------------------------
# Text


def truncated_words(tokenizer, text: str) -> str:
    """The part of `text` past the tokenizer's limit (special tokens included), or '' if it all fits."""
    if not text:
        return ""
    limit = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    if len(ids) <= limit:
        return ""
    return tokenizer.decode(ids[limit:]).strip()


def parse_weights(text: str) -> list[tuple[str, float]]:
    """`text` as [(piece, weight)] by A1111's attention grammar (module docstring); `BREAK` is `BREAK`."""
    pieces: list[list] = []  # [text, weight]; BREAK markers are [BREAK[0], None] until the end
    round_open: list[int] = []  # index in `pieces` where each open `(` starts
    square_open: list[int] = []
    literal: list[str] = []

    def flush() -> None:
        if not literal:
            return
        for i, part in enumerate(_BREAK_WORD.split("".join(literal))):
            if i:
                pieces.append([BREAK[0], None])
            if part:
                pieces.append([part, 1.0])
        literal.clear()

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[1] is not None:
                piece[1] *= factor

    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            # An escaped bracket or backslash is that character; a lone backslash is dropped (as in A1111).
            if i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
                literal.append(text[i + 1])
                i += 1
        elif char in "([":
            flush()
            (round_open if char == "(" else square_open).append(len(pieces))
        elif char == ":" and round_open and (weight := _WEIGHT.match(text, i)):
            flush()
            scale(round_open.pop(), float(weight.group(1)))
            i = weight.end() - 1
        elif char == ")" and round_open:
            flush()
            scale(round_open.pop(), ROUND)
        elif char == "]" and square_open:
            flush()
            scale(square_open.pop(), SQUARE)
        else:
            literal.append(char)
        i += 1
    flush()
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if weight is None:
            merged.append(BREAK)
        elif merged and merged[-1] != BREAK and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def uses_syntax(text: str) -> bool:
    """Whether A1111's grammar reads `text` as anything but itself at weight 1 (brackets, BREAK, escapes)."""
    return parse_weights(text) != [(text, 1.0)]


def unsupported_syntax(text: str) -> str | None:
    """The first A1111 construct in `text` that facesmith reads literally, or None."""
    for pattern in (_EDITING, _ALTERNATION, _COMPOSABLE):
        found = pattern.search(text)
        if found:
            return found.group(0)
    return None


def warn_about(label: str, text: str, tokenizer) -> None:
    """The warnings a prompt (or negative prompt, `label`) earns: unsupported syntax, words cut off."""
    construct = unsupported_syntax(text)
    if construct:
        warnings.warn(
            f"the {label} uses A1111 syntax facesmith does not support ({construct}: prompt editing, "
            "alternation or AND); it is read as words, with brackets as emphasis",
            PromptWeightingWarning,
            stacklevel=3,
        )
    if uses_syntax(text):
        return  # weighted prompts are chunked, not cut
    cut = truncated_words(tokenizer, text)
    if cut:
        warnings.warn(
            f"the {label} is longer than the {tokenizer.model_max_length}-token limit; "
            f"these words were cut: {cut}",
            PromptTruncatedWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------------------
# Tokens


def token_chunks(
    tokenizer, text: str, weighted: bool, convert: Callable[[str], str] | None = None
) -> list[tuple[list[int], list[float]]]:
    """`text` as chunks of (token ids, weights), special tokens not yet added.

    `weighted`: A1111's grammar and 75-token chunks; otherwise the text as it is, cut to one chunk as
    diffusers' tokenizer call cuts it. `convert`: the pipeline's `maybe_convert_prompt`, which widens a
    textual-inversion word into its vector tokens (`models/embeddings.py`); each piece goes through it, so
    an embedding's vectors all take the weight of the brackets around its word, as in A1111."""
    size = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    convert = convert or (lambda piece: piece)
    if not weighted:
        ids = tokenizer(convert(text), add_special_tokens=False, truncation=False).input_ids[:size]
        return [(ids, [1.0] * len(ids))]
    comma = tokenizer(",", add_special_tokens=False).input_ids
    comma = comma[0] if len(comma) == 1 else None
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1
    for piece, weight in parse_weights(text):
        if (piece, weight) == BREAK:
            chunks.append((ids, weights))
            ids, weights, last_comma = [], [], -1
            continue
        tokens = (
            tokenizer(convert(piece), add_special_tokens=False, truncation=False).input_ids if piece else []
        )
        for token in tokens:
            if len(ids) == size:
                # A full chunk whose last comma is near its end is cut after the comma, so the words
                # after it start the next chunk together (A1111's comma padding backtrack).
                cut = last_comma + 1 if last_comma >= 0 and size - last_comma <= COMMA_BACKTRACK else size
                chunks.append((ids[:cut], weights[:cut]))
                ids, weights, last_comma = ids[cut:], weights[cut:], -1
            if token == comma:
                last_comma = len(ids)
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


def chunk_tensors(tokenizer, ids: list[int], weights: list[float]):
    """(input_ids, attention_mask, weights) of one chunk, each (1, model_max_length): the tokenizer's
    own special tokens around `ids`, then its pad token, as `tokenizer(..., padding="max_length")` does."""
    import torch

    # The tokenizer's own frame (CLIP: start and end of text; BERT: [CLS] and [SEP]), from the empty text.
    frame = tokenizer("").input_ids
    full = frame[:1] + ids + frame[1:]
    laid = [1.0] + list(weights) + [1.0] * (len(frame) - 1)
    pad = tokenizer.model_max_length - len(full)
    input_ids = torch.tensor([full + [tokenizer.pad_token_id] * pad])
    mask = torch.tensor([[1] * len(full) + [0] * pad])
    return input_ids, mask, torch.tensor(laid + [1.0] * pad)


# ----------------------------------------------------------------------------------------------------------
# Embeddings


def emphasize(states, weights):
    """Token states (1, T, D) scaled by their weights (T,), rescaled to the unweighted mean (A1111's
    `z * (original_mean / new_mean)`)."""
    z = states.float()
    original = z.mean()
    z = z * weights.to(z.device)[None, :, None]
    new = z.mean()
    if new != 0:
        z = z * (original / new)
    return z.to(states.dtype)


def _encode_chunks(pipe, text: str, weighted: bool) -> tuple[Any, Any]:
    """(token states (1, 77 x chunks, D), pooled output of the first chunk or None) of `text`."""
    import torch

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if sdxl:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    per_encoder, pooled = [], None
    for tokenizer, encoder in pairs:
        chunks = []
        convert = getattr(pipe, "maybe_convert_prompt", None)
        convert = (lambda piece, tok=tokenizer: pipe.maybe_convert_prompt(piece, tok)) if convert else None
        for ids, weights in token_chunks(tokenizer, text, weighted, convert):
            input_ids, mask, laid = chunk_tensors(tokenizer, ids, weights)
            device = encoder.device
            if sdxl:
                # diffusers' SDXL encode_prompt: penultimate hidden states, no mask; pooled from the encoder
                # whose first output is 2-D (the projection one).
                out = encoder(input_ids.to(device), output_hidden_states=True)
                if pooled is None and out[0].ndim == 2 and not chunks:
                    pooled = out[0]
                states = out.hidden_states[-2]
            else:
                use_mask = getattr(encoder.config, "use_attention_mask", False)
                states = encoder(input_ids.to(device), attention_mask=mask.to(device) if use_mask else None)[
                    0
                ]
            chunks.append(emphasize(states, laid))
        per_encoder.append(torch.cat(chunks, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def _padded(states, empty, tokens: int):
    """`states` made `tokens` long with chunks of the empty prompt's states (A1111 pads cond/uncond so)."""
    import torch

    while states.shape[1] < tokens:
        states = torch.cat([states, empty], dim=1)
    return states


def weighted_embeddings(pipe, prompt: str, negative: str = "") -> dict[str, Any]:
    """The pipeline keywords that stand for `prompt` and `negative` (prompt_embeds, negative_prompt_embeds,
    and for SDXL the pooled pair), weighted by A1111's syntax where a text uses it (module docstring).

    An empty negative on SDXL is zeros, as diffusers' `force_zeros_for_empty_prompt` makes it."""
    import torch

    with torch.no_grad():
        cond, pooled = _encode_chunks(pipe, prompt, uses_syntax(prompt))
        zeros = not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
        if zeros:
            uncond, uncond_pooled = (
                torch.zeros_like(cond),
                None if pooled is None else torch.zeros_like(pooled),
            )
        else:
            uncond, uncond_pooled = _encode_chunks(pipe, negative, uses_syntax(negative))
        tokens = max(cond.shape[1], uncond.shape[1])
        if cond.shape[1] != uncond.shape[1]:
            empty = _encode_chunks(pipe, "", False)[0]
            cond = _padded(cond, empty, tokens)
            uncond = _padded(uncond, torch.zeros_like(empty) if zeros else empty, tokens)
    dtype = (getattr(pipe, "text_encoder_2", None) or pipe.text_encoder).dtype
    call = {"prompt_embeds": cond.to(dtype), "negative_prompt_embeds": uncond.to(dtype)}
    if pooled is not None:
        call["pooled_prompt_embeds"] = pooled.to(dtype)
        call["negative_pooled_prompt_embeds"] = uncond_pooled.to(dtype)
    return call
