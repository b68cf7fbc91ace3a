"""Full-model exports: the tokenizer folder opens in transformers 4 as well as 5."""

from __future__ import annotations

import json

import factory
from facesmith.train.export import write_bpe_files


def test_exported_tokenizer_has_the_slow_tokenizer_files_with_the_same_vocabulary(tmp_path):
    """transformers 5 writes only tokenizer.json; 4.x (and diffusers on it) need vocab.json and merges.txt."""
    from transformers import CLIPTokenizer

    tokenizer = factory.tiny_sd15().tokenizer
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    write_bpe_files(tokenizer, tmp_path / "tokenizer")
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == tokenizer.get_vocab()
    assert (
        (tmp_path / "tokenizer" / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\ni n\n")
    )
    # Opened from the two BPE files alone, as transformers 4 opens a CLIP tokenizer folder.
    (tmp_path / "tokenizer" / "tokenizer.json").unlink()
    rebuilt = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    prompt = "a photo of a smiling woman with purple hair"
    assert rebuilt(prompt).input_ids == tokenizer(prompt).input_ids
