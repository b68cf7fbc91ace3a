"""Textual inversion end to end on the tiny SD1.5 model: only the new tokens learn, the export is an A1111
embedding that diffusers and `generate --embedding` load to the same image, and a resume is bit-identical."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.trainer import run_train

TI = dict(
    resolution=64,
    batch_size=2,
    tensorboard=False,
    seed=3,
    mode="embedding",
    tokens=["<alice>"],
    num_vectors=2,
    learning_rate=5e-2,
)
PROMPT = dict(num_inference_steps=2, output_type="latent", width=64, height=64)


@pytest.fixture(scope="module")
def alice_data(tmp_path_factory):
    import factory

    return factory.colour_field_dataset(
        tmp_path_factory.mktemp("ti") / "alice", captions=["a photo of <alice>, smiling"]
    )


@pytest.fixture(scope="module")
def trained(alice_data, sd15_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("ti-run") / "alice"
    config = TrainConfig(**TI, dataset=str(alice_data), model=str(sd15_folder), output_dir=str(run))
    config.max_steps, config.save_every = 3, 2
    result = run_train(config)
    return run, result


def test_only_the_new_vectors_train_and_the_export_is_an_a1111_embedding(trained, sd15_folder):
    from transformers import CLIPTextModel, CLIPTokenizer

    run, result = trained
    assert result.exports == [run / "alice.safetensors"]
    with safe_open(str(result.exports[0]), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    vectors = load_file(result.exports[0])["emb_params"]
    assert keys == ["emb_params"] and vectors.shape == (2, 32)
    assert (metadata["name"], metadata["step"], metadata["sd_checkpoint_name"]) == (
        "<alice>",
        "3",
        sd15_folder.name,
    )
    # The checkpoint holds the new vectors only: the frozen vocabulary is not trained or saved.
    trainable = load_file(run / "checkpoints" / "step-000003" / "trainable.safetensors")
    assert {k: tuple(v.shape) for k, v in trainable.items()} == {
        "text_encoder.embeddings.token_embedding.vectors": (2, 32)
    }
    # Both vectors started as the init word's embedding ("face") and moved away from it.
    base = CLIPTextModel.from_pretrained(sd15_folder / "text_encoder").get_input_embeddings().weight
    face = CLIPTokenizer.from_pretrained(sd15_folder / "tokenizer")(
        "face", add_special_tokens=False
    ).input_ids
    start = base[face].mean(0)
    assert all((row - start).abs().max() > 1e-3 for row in vectors)
    # The per-step export, as LoRA runs leave one, with step 2's vectors.
    early = load_file(run / "alice-step00000002.safetensors")["emb_params"]
    assert early.shape == vectors.shape and not torch.equal(early, vectors)


def test_the_export_loads_in_diffusers_and_facesmith_to_the_trained_image(trained, sd15_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from facesmith.generate import FaceGenerator
    from facesmith.models.embeddings import apply_embeddings

    run, result = trained
    path = result.exports[0]
    # The trained pipeline itself, rebuilt: the base model with the run's vectors spliced in at the end.
    from facesmith.train.model import build_model

    config = TrainConfig(**TI, dataset="x", model=str(sd15_folder))
    model = build_model(config)
    spliced = model.pipe.text_encoder.get_input_embeddings()
    with torch.no_grad():
        spliced.vectors.copy_(load_file(path)["emb_params"])
    in_memory = model.pipe(prompt="a photo of <alice>", generator=torch.Generator().manual_seed(0), **PROMPT)

    diffusers_pipe = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None)
    diffusers_pipe.load_textual_inversion(str(path), token="<alice>")
    theirs = diffusers_pipe(prompt="a photo of <alice>", generator=torch.Generator().manual_seed(0), **PROMPT)
    torch.testing.assert_close(theirs.images, in_memory.images)

    ours = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None)
    loaded = apply_embeddings(ours, [str(path)])
    assert [(e.name, e.num_vectors) for e in loaded] == [("<alice>", 2)]  # the token the file names
    again = ours(prompt="a photo of <alice>", generator=torch.Generator().manual_seed(0), **PROMPT)
    torch.testing.assert_close(again.images, in_memory.images)
    plain = ours(prompt="a photo of a person", generator=torch.Generator().manual_seed(0), **PROMPT)
    assert not torch.allclose(plain.images, in_memory.images)

    generator = FaceGenerator.load(str(sd15_folder), embeddings=[str(path)], device="cpu", engine="eager")
    assert [e.name for e in generator.embeddings] == ["<alice>"]


def test_a_resumed_embedding_run_equals_a_straight_one(alice_data, sd15_folder, tmp_path):
    settings = dict(TI, dataset=str(alice_data), model=str(sd15_folder), max_steps=4, save_every=2)
    straight = tmp_path / "straight"
    run_train(TrainConfig(**settings, output_dir=str(straight)))

    class Stop(Exception):
        pass

    def stop_at_two(stage, done, total, **fields):
        if stage == "training" and done == 2:
            raise Stop

    halves = tmp_path / "halves"
    with pytest.raises(Stop):
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=stop_at_two)
    run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest"))
    name = "checkpoints/step-000004/trainable.safetensors"
    a, b = load_file(straight / name), load_file(halves / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert torch.equal(load_file(straight / "straight.safetensors")["emb_params"], next(iter(a.values())))


def test_captions_without_the_token_are_refused_unless_a_template_adds_it(
    make_dataset, sd15_folder, tmp_path
):
    data = make_dataset(tmp_path / "plain", captions=["a photo of a person"])
    settings = dict(TI, dataset=str(data), model=str(sd15_folder), max_steps=1)
    with pytest.raises(
        FacesmithError, match="has none of the tokens <alice>: add the token .* caption_template"
    ):
        run_train(TrainConfig(**settings, output_dir=str(tmp_path / "a")))
    result = run_train(
        TrainConfig(
            **settings, output_dir=str(tmp_path / "b"), caption_template="a photo of {token}, {caption}"
        )
    )
    assert result.steps == 1 and result.exports == [tmp_path / "b" / "b.safetensors"]


def test_settings_of_an_embedding_run_are_checked():
    with pytest.raises(FacesmithError, match="mode embedding needs the new tokens"):
        TrainConfig(dataset="d", mode="embedding").validate()
    with pytest.raises(FacesmithError, match="token 'my alice' must be one word"):
        TrainConfig(dataset="d", mode="embedding", tokens=["my alice"]).validate()
    with pytest.raises(FacesmithError, match="caption_template 'a photo' has no {token}"):
        TrainConfig(dataset="d", mode="embedding", tokens=["<a>"], caption_template="a photo").validate()
    with pytest.raises(FacesmithError, match="tokens are trained by mode embedding"):
        TrainConfig(dataset="d", mode="lora", tokens=["<a>"]).validate()


def test_a_token_that_is_already_a_word_is_refused(sd15_folder):
    from facesmith.train.model import build_model

    with pytest.raises(FacesmithError, match="token 'face' is already a word of this model's tokenizer"):
        build_model(
            TrainConfig(**dict(TI, tokens=["face"], num_vectors=1), dataset="x", model=str(sd15_folder))
        )


def test_the_default_model_trains_an_embedding_of_its_own_width(make_dataset, tmp_path):
    """The default model's MiniLM (BERT) text encoder takes new tokens as CLIP does; 384-wide vectors."""
    data = make_dataset(tmp_path / "d", captions=["<bob> smiling"])
    result = run_train(
        TrainConfig(
            **dict(TI, tokens=["<bob>"], num_vectors=1, resolution=64, batch_size=1),
            dataset=str(data),
            output_dir=str(tmp_path / "bob"),
            max_steps=1,
        )
    )
    assert load_file(result.exports[0])["emb_params"].shape == (1, 384)
