"""prompts.py: A1111's emphasis grammar, weighted embeddings on every model family, and their warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import facesmith
from facesmith.prompts import (
    BREAK,
    PromptTruncatedWarning,
    PromptWeightingWarning,
    parse_weights,
    uses_syntax,
    weighted_embeddings,
)
from factory import FAST

W = 1.1
# Rows from A1111's wiki (Features > Attention/emphasis) and the doctests of its prompt_parser.py
# parse_prompt_attention, and what its rules imply for nesting, escapes and unbalanced brackets.
TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", W), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", W)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", W)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * W * W),
            (" ", W),
            ("on", 1.0),
            (" a ", W),
            ("hill", 0.55),
            (", sun, ", W),
            ("sky", W**4),
            (".", W),
        ],
    ),  # fmt: skip
    ("a ((word))", [("a ", 1.0), ("word", W * W)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / W)]),
    ("a [[word]]", [("a ", 1.0), ("word", 1 / W / W)]),
    ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    ("a (word: 1.5 )", [("a ", 1.0), ("word", 1.5)]),
    ("a (word:.5)", [("a ", 1.0), ("word", 0.5)]),
    ("((word:1.5))", [("word", 1.5 * W)]),
    ("(a (b) c:2)", [("a ", 2.0), ("b", 2.0 * W), (" c", 2.0)]),
    ("([word])", [("word", 1.0)]),
    (r"a \(word\)", [("a (word)", 1.0)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    ("a word)", [("a word)", 1.0)]),  # nothing open: a literal bracket
    ("a word]", [("a word]", 1.0)]),
    ("a [word", [("a ", 1.0), ("word", 1 / W)]),  # unclosed [ applies to the rest
    ("a :1.5) word", [("a :1.5) word", 1.0)]),  # a weight outside ( is text
    ("(a:b)", [("a:b", W)]),  # a colon without a number is text
    ("a (word:1.2.3)", [("a ", 1.0), ("word:1.2.3", W)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("(a BREAK b)", [("a", W), BREAK, ("b", W)]),
    ("BREAKFAST", [("BREAKFAST", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", TABLE)
def test_parser_reads_a1111_s_emphasis_grammar(prompt, expected):
    parsed = parse_weights(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_only_prompts_with_the_syntax_take_the_weighted_path():
    assert not uses_syntax("a smiling woman, 30 years old: portrait")
    assert not uses_syntax("a face)")  # a lone closing bracket is the same text
    assert uses_syntax("a (face:1.0)") and uses_syntax("a [face]") and uses_syntax("a BREAK b")
    assert uses_syntax(r"a \(face\)")  # the escapes are dropped, as A1111 drops them


# ----------------------------------------------------------------------------------------------------------
# Embeddings


@pytest.fixture(scope="module")
def eager(sd15_folder):
    return facesmith.load(sd15_folder, engine="eager")


def differs(image, other, by: float = 0.2) -> bool:
    """Whether two images differ by more than `by` levels of 255 on average (the tiny random models'
    text conditioning is weak: a weight of 1.8 on one word moves their pixels by about one level)."""
    return np.abs(np.asarray(image, np.int16) - np.asarray(other, np.int16)).mean() > by


def plain_embeddings(pipe, prompt: str, negative: str = ""):
    """diffusers' own encoding of the strings (the reference weighting must reduce to)."""
    with torch.no_grad():
        if getattr(pipe, "text_encoder_2", None) is not None:
            return pipe.encode_prompt(prompt, device=pipe.device, negative_prompt=negative or None)
        return pipe.encode_prompt(prompt, pipe.device, 1, True, negative_prompt=negative or None)


def test_weight_one_is_diffusers_own_embedding_and_a_weight_moves_only_its_tokens(eager):
    pipe = eager.pipe
    cond, uncond = plain_embeddings(pipe, "a face", "blurry")
    same = weighted_embeddings(pipe, "a (face:1.0)", "blurry")
    assert torch.equal(same["prompt_embeds"], cond) and torch.equal(same["negative_prompt_embeds"], uncond)

    heavy = weighted_embeddings(pipe, "a (face:1.5)", "blurry")["prompt_embeds"]
    # A1111 rescales to the unweighted mean; the start token, "a" and the padding only move by that factor.
    assert heavy.mean().item() == pytest.approx(cond.mean().item(), rel=1e-5)
    ratio = heavy[0, 0] / cond[0, 0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
    face = 2  # <start> a face <end>
    assert torch.allclose(heavy[0, face], 1.5 * cond[0, face] * ratio[0], rtol=1e-4)


def test_weighting_changes_the_image_and_weight_one_does_not(sd15, eager):
    """The sd15 fixture samples on the ONNX engine (auto on a CPU), `eager` on plain torch."""
    for generator in (sd15, eager):
        plain = generator.generate("a face", seed=3, **FAST)[0]
        assert np.array_equal(
            np.asarray(generator.generate("a (face:1.0)", seed=3, **FAST)[0]), np.asarray(plain)
        )
        assert differs(generator.generate("a (face:1.8)", seed=3, **FAST)[0], plain)
    assert sd15.engine == "onnx"


def test_plain_prompts_reach_diffusers_as_strings_bit_for_bit(eager):
    """An unweighted prompt makes exactly the image diffusers makes from the string."""
    from facesmith.latents import decode_latents, to_pil
    from facesmith.samplers import make_scheduler

    image = eager.generate("a face", negative="blurry", seed=4, **FAST)[0]
    pipe = eager.pipe
    pipe.scheduler = make_scheduler("DDIM", eager.base_scheduler_config)
    with torch.inference_mode():
        latents = pipe(
            prompt="a face", negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5, width=64,
            height=64, generator=[torch.Generator("cpu").manual_seed(4)], output_type="latent",
        ).images  # fmt: skip
        reference = to_pil(decode_latents(pipe.vae, latents))[0]
    assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_the_negative_prompt_is_weighted_too(eager):
    plain = eager.generate("a face", negative="blurry", seed=5, **FAST)[0]
    one = eager.generate("a face", negative="(blurry:1.0)", seed=5, **FAST)[0]
    assert np.array_equal(np.asarray(one), np.asarray(plain))
    assert differs(eager.generate("a face", negative="(blurry:1.8)", seed=5, **FAST)[0], plain)


def test_break_and_long_weighted_prompts_are_chunked_and_the_other_side_padded(eager):
    pipe = eager.pipe
    call = weighted_embeddings(pipe, "a (face) BREAK smiling", "blurry")
    assert call["prompt_embeds"].shape[1] == call["negative_prompt_embeds"].shape[1] == 154
    empty = plain_embeddings(pipe, "")[0]
    # The negative's second chunk is the empty prompt's (A1111's padding of uncond).
    assert torch.equal(call["negative_prompt_embeds"][:, 77:], empty)
    long = "(a face), " + "smiling, " * 60 + "purple eyebrows"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        images = eager.generate(long, seed=1, **FAST)
    assert len(images) == 1 and not [w for w in seen if issubclass(w.category, PromptTruncatedWarning)]
    with pytest.warns(PromptTruncatedWarning, match="purple eyebrows"):
        eager.generate(long.replace("(a face)", "a face"), seed=1, **FAST)  # plain: cut, as before


def test_unsupported_a1111_syntax_is_warned_about(eager):
    for prompt in ("a [smiling:sad:0.5] face", "a [smiling|sad] face", "a cat AND a dog"):
        with pytest.warns(PromptWeightingWarning, match="does not support"):
            eager.generate(prompt, seed=1, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWeightingWarning)
        eager.generate("a (smiling:1.2) face", seed=1, **FAST)


def test_sdxl_weights_both_encoders_and_keeps_the_pooled_output(sdxl_folder):
    generator = facesmith.load(sdxl_folder)
    pipe = generator.pipe
    cond, uncond, pooled, uncond_pooled = plain_embeddings(pipe, "a face")
    same = weighted_embeddings(pipe, "a (face:1.0)")
    assert torch.equal(same["prompt_embeds"], cond) and torch.equal(same["pooled_prompt_embeds"], pooled)
    # An empty negative is zeros on SDXL (force_zeros_for_empty_prompt), as diffusers makes it.
    assert torch.equal(same["negative_prompt_embeds"], uncond) and not uncond_pooled.any()
    heavy = weighted_embeddings(pipe, "a (face:1.5) BREAK smiling", "(blurry:0.5)")
    assert heavy["prompt_embeds"].shape[1] == heavy["negative_prompt_embeds"].shape[1] == 154
    plain = generator.generate("a face", seed=2, **FAST)[0]
    assert differs(generator.generate("a (face:1.8)", seed=2, **FAST)[0], plain)


def test_the_default_model_s_own_encoder_is_weighted_with_its_attention_mask():
    generator = facesmith.load(engine="eager")
    pipe = generator.pipe
    cond, uncond = plain_embeddings(pipe, "a smiling woman", "blurry")
    same = weighted_embeddings(pipe, "a (smiling:1.0) woman", "blurry")
    assert torch.equal(same["prompt_embeds"], cond) and torch.equal(same["negative_prompt_embeds"], uncond)
    plain = generator.generate("a smiling woman", seed=1, steps=2)[0]
    assert differs(generator.generate("a (smiling:1.8) woman", seed=1, steps=2)[0], plain, by=1)


def test_serve_jobs_weight_prompts_and_record_them_as_written(sd15):
    """The server's queue samples through FaceGenerator.sample too; its PNG keeps the brackets."""
    import io

    from PIL import Image

    from facesmith.config import GenerateConfig
    from facesmith.serve.jobs import JobQueue

    queue = JobQueue(sd15)
    try:
        jobs = {
            prompt: queue.submit(GenerateConfig(prompt=prompt, seed=3, **FAST)).future.result(timeout=120)[0]
            for prompt in ("a face", "a (face:1.0)", "a (face:1.8)")
        }
    finally:
        queue.close()
    pictures = {
        prompt: Image.open(io.BytesIO(picture.png)).convert("RGB") for prompt, picture in jobs.items()
    }
    assert np.array_equal(np.asarray(pictures["a (face:1.0)"]), np.asarray(pictures["a face"]))
    assert differs(pictures["a (face:1.8)"], pictures["a face"])
    assert jobs["a (face:1.8)"].parameters.startswith("a (face:1.8)\n")


def test_img2img_takes_weighted_prompts(eager, tmp_path):
    import factory

    start = factory.save_photo(tmp_path / "start.png", seed=1, size=(64, 64))
    settings = dict(init_image=str(start), strength=0.5, seed=2, steps=4)
    plain = eager.generate("a face", **settings)[0]
    assert np.array_equal(np.asarray(eager.generate("a (face:1.0)", **settings)[0]), np.asarray(plain))
    assert differs(eager.generate("a (face:1.8) BREAK old", **settings)[0], plain)


def test_textual_inversion_words_are_widened_and_weighted(sd15_folder, tmp_path):
    """A two-vector embedding's word stands for both vectors on the weighted path too (diffusers'
    maybe_convert_prompt), so at weight 1 it is exactly the plain prompt's embedding."""
    from safetensors.torch import save_file

    save_file(
        {"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
        tmp_path / "alice.safetensors",
    )
    generator = facesmith.load(sd15_folder, embeddings=[str(tmp_path / "alice.safetensors")], engine="eager")
    pipe = generator.pipe
    cond, _ = plain_embeddings(pipe, "a photo of alice")
    same = weighted_embeddings(pipe, "a photo of (alice:1.0)")["prompt_embeds"]
    assert torch.equal(same, cond)
    heavy = weighted_embeddings(pipe, "a photo of (alice:1.5)")["prompt_embeds"]
    ratio = heavy[0, 0, 0] / cond[0, 0, 0]
    for position in (4, 5):  # <start> a photo of alice alice_1 <end>
        assert torch.allclose(heavy[0, position], 1.5 * cond[0, position] * ratio, rtol=1e-4)
