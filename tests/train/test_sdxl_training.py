"""SDXL training end to end on the tiny SDXL model: LoRA and full exports that load, resumes bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import factory
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.launch import TrainingInterrupted
from facesmith.train.trainer import run_train

TINY = dict(resolution=64, batch_size=2, tensorboard=False, seed=5, learning_rate=1e-2)
PROMPT = dict(prompt="a face", num_inference_steps=2, output_type="latent", width=64, height=64)


@pytest.fixture(scope="module")
def mixed_faces(tmp_path_factory):
    """Non-square faces, so that buckets (and SDXL's size and crop ids) differ between images."""
    sizes = [(64, 32), (32, 64), (64, 32), (48, 48)]
    return factory.colour_field_dataset(tmp_path_factory.mktemp("data") / "faces", size=sizes)


def _weights(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors")


def _image(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(**PROMPT, generator=torch.Generator().manual_seed(0)).images


def _trained_in_memory(run, step: int):
    """The model under training as it was at `step`: built as the trainer builds it, with its weights."""
    from facesmith.train.model import build_model

    model = build_model(TrainConfig.load(run / "train.toml"))
    saved = _weights(run, step)
    with torch.no_grad():
        for name, param in model.trainable():
            param.copy_(saved[name])
    model.pipe.unet.eval()
    return model.pipe


def test_sdxl_lora_exports_in_kohya_names_and_loads_to_the_trained_image(mixed_faces, sdxl_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from facesmith.models.lora import LoraSpec, apply_loras

    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **TINY,
            dataset=str(mixed_faces),
            model=str(sdxl_folder),
            output_dir=str(run),
            mode="lora",
            lora_rank=4,
            lora_alpha=2.0,
            train_text_encoder=True,
            bucketing=True,
            bucket_step=16,
            max_steps=2,
        )  # fmt: skip
    )
    path = result.exports[0]
    with safe_open(path, "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    # sd-scripts' SDXL names: the UNet in the original SGM layout, two text encoders as te1 and te2.
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in keys
    assert not any(k.startswith(("lora_te_", "lora_unet_down_blocks")) for k in keys)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    trained = _image(_trained_in_memory(run, 2))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    before = _image(pipe)
    pipe.load_lora_weights(str(path))
    loaded = sum("lora_A" in n for c in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                 for n, _ in c.named_parameters())  # fmt: skip
    assert loaded == sum(k.endswith(".lora_down.weight") for k in keys)  # every module, none dropped
    after = _image(pipe)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-4)
    ours = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    apply_loras(ours, [LoraSpec(path, 1.0)])
    torch.testing.assert_close(_image(ours), trained, rtol=1e-4, atol=1e-4)


def test_sdxl_full_export_loads_in_diffusers_and_as_a_single_file(faces, sdxl_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from facesmith.generate import FaceGenerator
    from facesmith.models.loading import load_model

    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **TINY,
            dataset=str(faces),
            model=str(sdxl_folder),
            output_dir=str(run),
            train_text_encoder=True,
            max_steps=2,
        )  # fmt: skip
    )
    assert result.exports == [run / "model", run / "model.safetensors"]
    trained = _weights(run, 2)
    assert any(k.startswith("text_encoder_2.") for k in trained)
    folder = StableDiffusionXLPipeline.from_pretrained(str(run / "model"), local_files_only=True)
    single = load_model(run / "model.safetensors").pipe
    base = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        exported, base_state = getattr(folder, part).state_dict(), getattr(base, part).state_dict()
        for key, tensor in exported.items():
            torch.testing.assert_close(trained[f"{part}.{key}"], tensor)
        assert any(not torch.equal(base_state[k], t) for k, t in exported.items()), part
    for key, tensor in folder.unet.state_dict().items():
        torch.testing.assert_close(single.unet.state_dict()[key], tensor)
    torch.testing.assert_close(_image(folder), _image(_trained_in_memory(run, 2)), rtol=1e-4, atol=1e-4)
    image = FaceGenerator.load(str(run / "model")).generate("a face", steps=2, seed=0, width=64, height=64)
    assert image[0].size == (64, 64)


def test_sdxl_lora_resumes_bit_for_bit_with_validation_and_sdxl_sample_grids(
    mixed_faces, sdxl_folder, tmp_path
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a smiling face --s 2\na face --s 2 --w 64 --h 32\n")
    settings = dict(
        TINY, dataset=str(mixed_faces), model=str(sdxl_folder), mode="lora", lora_rank=2,
        train_text_encoder=True, bucketing=True, bucket_step=16, flip=True, max_steps=4, save_every=100,
        gradient_accumulation=2, validate_every=2, sample_every=2, sample_prompts=str(prompts),
        sample_at_first=False,
    )  # fmt: skip
    straight = run_train(TrainConfig(**settings, output_dir=str(tmp_path / "straight")))
    assert [p.name for p in straight.samples] == ["step-000002.png", "step-000004.png"]

    def ctrl_c_after_step_2(stage, done, total, **fields):
        if stage == "training" and done == 2:
            raise KeyboardInterrupt

    halves = tmp_path / "halves"
    with pytest.raises(TrainingInterrupted):
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=ctrl_c_after_step_2)
    assert run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest")).steps == 4
    a, b = _weights(tmp_path / "straight", 4), _weights(halves, 4)
    assert a.keys() == b.keys() and any(k.startswith("text_encoder_2.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert (halves / "validation.csv").read_text() == (tmp_path / "straight" / "validation.csv").read_text()


def test_sdxl_settings_it_cannot_train_are_refused_before_training(faces, sdxl_folder, tmp_path):
    base = dict(TINY, dataset=str(faces), model=str(sdxl_folder), output_dir=str(tmp_path / "r"))
    with pytest.raises(FacesmithError, match="max_token_length 150: SDXL captions are read as 75 tokens"):
        run_train(TrainConfig(**base, max_token_length=150))
    with pytest.raises(FacesmithError, match="mode embedding trains SD 1.x / 2.x models"):
        run_train(TrainConfig(**base, mode="embedding", tokens=["<alice>"], caption_template="{token}"))
    assert not (tmp_path / "r" / "checkpoints").exists()
