"""Kohya's per-step caption operations: caption dropout, tag dropout, shuffle with keep-tokens.

Owns: ``process_caption``, the transformation Kohya sd-scripts applies to a finished caption each time an
image is drawn for training (``library/train_util.py``, ``BaseDataset.process_caption``). Writing captions
from attributes is ``captions``; the training loop decides when to call this (every draw, as Kohya does), so
a prepared dataset stores the full caption and stays reproducible.

Semantics, matching Kohya:
- ``dropout_rate``: with this probability the whole caption becomes "" (trains the unconditional branch);
  ``dropout_every_n_epochs`` drops it on every epoch divisible by n as well.
- Tokens are the caption split on ``separator`` (","), stripped. The first ``keep_tokens`` stay in place; or,
  when ``keep_tokens_separator`` (e.g. "|||") occurs, the part before it is kept in front and a part after
  a second separator is kept at the end.
- ``shuffle``: the other tokens are shuffled; then ``tag_dropout_rate`` drops each of them independently.
- The result is joined with ", ".
"""

from __future__ import annotations

import random


def process_caption(
    caption: str,
    rng: random.Random,
    *,
    dropout_rate: float = 0.0,
    dropout_every_n_epochs: int = 0,
    epoch: int = 0,
    tag_dropout_rate: float = 0.0,
    shuffle: bool = False,
    keep_tokens: int = 0,
    separator: str = ",",
    keep_tokens_separator: str = "",
) -> str:
    """The caption as Kohya would feed it to the text encoder on this draw (see the module docstring)."""
    dropped = dropout_rate > 0 and rng.random() < dropout_rate
    dropped = dropped or (dropout_every_n_epochs > 0 and epoch % dropout_every_n_epochs == 0)
    if dropped:
        return ""
    if not (shuffle or tag_dropout_rate > 0):
        return caption

    def split(text: str) -> list[str]:
        return [t.strip() for t in text.split(separator) if t.strip()]

    suffix: list[str] = []
    if keep_tokens_separator and keep_tokens_separator in caption:
        fixed_part, flex_part = caption.split(keep_tokens_separator, 1)
        if keep_tokens_separator in flex_part:
            flex_part, suffix_part = flex_part.split(keep_tokens_separator, 1)
            suffix = split(suffix_part)
        fixed, flex = split(fixed_part), split(flex_part)
    else:
        tokens = [t.strip() for t in caption.strip().split(separator)]
        fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]
    if shuffle:
        rng.shuffle(flex)
    if tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= tag_dropout_rate]
    return ", ".join(fixed + flex + suffix)
