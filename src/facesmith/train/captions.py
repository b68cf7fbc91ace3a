"""Caption augmentation at training time: dropout, tag shuffle, tag dropout, keep-tokens (Kohya semantics).

Matches `BaseDataset.process_caption` of Kohya's sd-scripts: with probability `dropout` the whole caption
becomes "" (the unconditional input classifier-free guidance needs); otherwise the caption is split into
comma-separated tags, the first `keep_tokens` tags stay in front, and the rest are shuffled and each
dropped with probability `tag_dropout`, then joined with ", ". Writing captions from face attributes is
`facesmith.data.captions`'s job.
"""

from __future__ import annotations

import random


def augment_caption(
    caption: str,
    rng: random.Random,
    *,
    dropout: float = 0.0,
    shuffle: bool = False,
    keep_tokens: int = 0,
    tag_dropout: float = 0.0,
) -> str:
    """One training-time variant of `caption`; `rng` is the run's caption RNG (saved in checkpoints)."""
    if dropout > 0 and rng.random() < dropout:
        return ""
    if not shuffle and tag_dropout <= 0:
        return caption
    tags = [tag.strip() for tag in caption.strip().split(",")]
    fixed, flexible = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(flexible)
    if tag_dropout > 0:
        flexible = [tag for tag in flexible if rng.random() >= tag_dropout]
    return ", ".join(fixed + flexible)


def captions_vary(*, dropout: float, shuffle: bool, tag_dropout: float, from_attributes: bool) -> bool:
    """Whether one image can get different captions on different steps (then text outputs can't be cached).

    Whole-caption dropout alone does not count: "" is one more fixed caption.
    """
    return shuffle or tag_dropout > 0 or from_attributes
