"""Latent caching: reused when nothing changed, never when the VAE, size or images did."""

from __future__ import annotations

import torch

from facesmith.train.cache import (
    LatentSource,
    TextStateCache,
    encode_text,
    latent_cache_key,
    model_fingerprint,
)
from facesmith.train.dataset import BatchItem, read_dataset


def _source(images, vae, tmp_path, size=32, mode="disk", flip=True):
    sizes = dict.fromkeys(range(len(images)), (size, size))
    return LatentSource(
        images, sizes, vae, mode=mode, flip=flip, device=torch.device("cpu"), cache_dir=tmp_path
    )


def test_disk_cache_is_keyed_on_vae_size_and_images(faces, sd15, tmp_path):
    vae, images = sd15.pipe.vae, read_dataset(faces)
    first = _source(images, vae, tmp_path)
    assert first.cache_file.is_file() and len(first.rows) == 2 * len(images)
    again = _source(images, vae, tmp_path)
    assert again.cache_file == first.cache_file
    items = [BatchItem(1, False), BatchItem(1, True)]
    torch.testing.assert_close(again.latents(items), first.latents(items))
    # Cached latents are what encoding on every step gives.
    torch.testing.assert_close(
        _source(images, vae, tmp_path, mode="none").latents(items), first.latents(items)
    )
    assert not torch.equal(*first.latents(items))  # the mirror image is its own latent
    # Any change of VAE weights, size, dtype or image set gives another file name.
    key = first.cache_file.name.removeprefix("latents-").removesuffix(".safetensors")
    sizes = dict.fromkeys(range(len(images)), (32, 32))
    assert latent_cache_key(model_fingerprint(vae), sizes, torch.float32, True, images) == key
    changed = type(vae).from_config(vae.config)
    others = [
        latent_cache_key(model_fingerprint(changed), sizes, torch.float32, True, images),
        latent_cache_key(model_fingerprint(vae), dict.fromkeys(sizes, (64, 64)), torch.float32, True, images),
        latent_cache_key(model_fingerprint(vae), sizes, torch.bfloat16, True, images),
        latent_cache_key(
            model_fingerprint(vae), dict.fromkeys(range(2), (32, 32)), torch.float32, True, images[:2]
        ),
    ]
    assert key not in others and len(set(others)) == len(others)


def test_text_state_cache_matches_encoding_each_time(sd15):
    pipe = sd15.pipe
    cache = TextStateCache(lambda c: encode_text(pipe.tokenizer, pipe.text_encoder, c, torch.device("cpu")))
    states = cache(["a face", "", "a face"])
    assert len(cache.states) == 2
    with torch.no_grad():
        direct = encode_text(pipe.tokenizer, pipe.text_encoder, ["a face", "", "a face"], torch.device("cpu"))
    torch.testing.assert_close(states, direct)


LONG = "a photo of a person, " + ", ".join(f"detail number {i}" for i in range(22))


def test_long_captions_are_encoded_in_chunks_and_their_tails_reach_the_states(sd15):
    """Issue 16 bug 5: captions over 77 tokens were cut; Kohya's max_token_length reads 150 or 225."""
    from facesmith.train.cache import overlong_captions

    pipe, cpu = sd15.pipe, torch.device("cpu")
    with torch.no_grad():
        short = encode_text(pipe.tokenizer, pipe.text_encoder, ["a face"], cpu)
        chunked = encode_text(pipe.tokenizer, pipe.text_encoder, ["a face", LONG, LONG + " zebra"], cpu, 150)
        cut = encode_text(pipe.tokenizer, pipe.text_encoder, [LONG, LONG + " zebra"], cpu)
    assert chunked.shape[:2] == (3, 152) and short.shape[1] == 77
    torch.testing.assert_close(chunked[0, :76], short[0, :76])  # a short caption reads as before
    torch.testing.assert_close(cut[0], cut[1])  # at 77 tokens the tail is lost...
    assert not torch.allclose(chunked[1], chunked[2])  # ...in chunks it is not
    assert len(pipe.tokenizer(LONG).input_ids) - 2 > 75
    assert overlong_captions(pipe.tokenizer, {"a face", LONG}, None) == [LONG]
    assert overlong_captions(pipe.tokenizer, {"a face", LONG}, 150) == []
