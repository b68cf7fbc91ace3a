"""Exports: they refuse weights that hold NaN or inf (such files load everywhere and make black images), and
the tokenizer folder of a full export opens in transformers 4 as well as 5."""

from __future__ import annotations

import json

import pytest
import torch

import factory
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.export import export_full, export_kohya_lora, write_bpe_files
from facesmith.train.model import build_model


def _spoil(model, name_part: str, value: float) -> str:
    name, param = next((n, p) for n, p in model.trainable() if name_part in n)
    with torch.no_grad():
        param.view(-1)[0] = value
    return name


def test_a_lora_with_nan_weights_is_not_written(sd15_folder, tmp_path):
    model = build_model(TrainConfig(model=str(sd15_folder), mode="lora", lora_rank=2))
    _spoil(model, "lora_B", float("nan"))
    path = tmp_path / "lora.safetensors"
    with pytest.raises(
        FacesmithError, match=r"NaN or inf in 1 tensors \(e.g. lora_unet_.*lora.safetensors was not"
    ):
        export_kohya_lora(model, TrainConfig(mode="lora", lora_rank=2), path, {})
    assert not path.exists()


def test_a_full_model_with_inf_weights_is_not_written(sd15_folder, tmp_path):
    config = TrainConfig(model=str(sd15_folder))
    model = build_model(config)
    name = _spoil(model, "conv_in.weight", float("inf"))
    with pytest.raises(FacesmithError, match=rf"e.g. {name}\), so {tmp_path / 'model'} was not written"):
        export_full(model, config, tmp_path, {})
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.safetensors").exists()


def test_a_preset_weight_past_fp16_range_is_not_written_as_inf(tmp_path):
    config = TrainConfig(preset="face-tiny", resolution=32)
    model = build_model(config)
    _spoil(model, "conv_in.weight", 1e6)  # finite in fp32, inf in the fp16 shards
    with pytest.raises(FacesmithError, match="NaN or inf in 1 tensors"):
        export_full(model, config, tmp_path, {"resolution": 32})
    assert not (tmp_path / "model").exists()


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


def test_lora_metadata_of_the_default_model_names_it_not_sd_v1():
    """Issue 15 bug 8: the embedded model's LoRA was tagged sd_v1 / stable-diffusion-v1 with no model name."""
    from facesmith.models.default_model import default_model_files
    from facesmith.models.loading import cached_sha256
    from facesmith.train.kohya_file import kohya_metadata

    config = TrainConfig(mode="lora", lora_rank=2)
    metadata = kohya_metadata(build_model(config), config, {"name": "alice"})
    assert metadata["ss_base_model_version"] == "facesmith_face-small"
    assert metadata["modelspec.architecture"] == "facesmith-face-small/lora"
    assert metadata["ss_sd_model_name"] == "facesmith-default"
    digest = cached_sha256(default_model_files())
    assert (metadata["ss_new_sd_model_hash"], metadata["ss_sd_model_hash"]) == (digest, digest[:10])
    assert (metadata["ss_output_name"], metadata["modelspec.title"]) == ("alice", "alice")


def test_lora_files_are_named_after_their_run(tmp_path):
    from facesmith.train.export import run_name, step_name

    assert run_name(tmp_path / "runs" / "alice") == "alice"
    assert step_name(tmp_path / "runs" / "alice", 600) == "alice-step00000600"


# ----------------------------------------------------------------------------------------------------------
# Network types (issue 16): DoRA, LoHa and LoKr exports under the tensor names A1111 and ComfyUI look up,
# and loaded back through `--lora` to the image of the trained in-memory model.

# The tensors ComfyUI's comfy/weight_adapter (lora.py, loha.py, lokr.py) and A1111's network_*.py read.
COMFY_NAMES = {
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
}


def _trained_network(sd15_folder, **settings):
    """A network of the given type with random (non-zero) adapter weights, as training leaves it."""
    config = TrainConfig(model=str(sd15_folder), mode="lora", lora_rank=2, lora_alpha=1.0, lora_conv=True,
                         train_text_encoder=True, **settings)  # fmt: skip
    model = build_model(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, param in model.trainable():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return config, model


def _latents(pipe):
    pipe.unet.eval()
    return pipe(prompt="a face", num_inference_steps=2, output_type="latent", width=64, height=64,
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip


@pytest.mark.parametrize(
    "settings, kind",
    [(dict(use_dora=True), "dora"), (dict(lora_type="loha"), "loha"), (dict(lora_type="lokr"), "lokr")],
)
def test_network_exports_use_lycoris_names_and_load_back_to_the_trained_image(
    sd15_folder, tmp_path, settings, kind
):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    from facesmith.models.lora import LoraSpec, apply_loras

    config, model = _trained_network(sd15_folder, **settings)
    path = export_kohya_lora(model, config, tmp_path / "net.safetensors", {})
    state = load_file(path)
    modules = {k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in state}
    unet_names = {"lora_unet_" + n.replace(".", "_") for n, _ in model.pipe.unet.named_modules()}
    text_names = {"lora_te_text_model_" + n.removeprefix("text_model.").replace(".", "_")
                  for n, _ in model.pipe.text_encoder.named_modules()}  # fmt: skip
    assert modules <= unet_names | text_names
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in modules and any(
        m.startswith("lora_te_") for m in modules
    )
    for module in modules:
        names = {k[len(module) + 1 :] for k in state if k.startswith(module + ".")}
        assert names <= COMFY_NAMES[kind] and "alpha" in names, (module, names)
    if kind == "dora":  # output-axis dora_scale: (out, 1) for Linear, (out, 1, 1, 1) for Conv2d
        q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        assert state[f"{q}.dora_scale"].shape == (state[f"{q}.lora_up.weight"].shape[0], 1)
        assert state["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"].dim() == 4
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    expected_module = "networks.lora" if kind == "dora" else "lycoris.kohya"
    assert metadata["ss_network_module"] == expected_module
    assert (kind == "dora") == ('"dora_wd": true' in metadata["ss_network_args"])

    trained = _latents(model.pipe)
    loaded = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None)
    apply_loras(loaded, [LoraSpec(path, 1.0)])
    torch.testing.assert_close(_latents(loaded), trained, rtol=1e-4, atol=1e-4)
    base = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None)
    assert not torch.allclose(_latents(base), trained, atol=1e-3)


def test_a_zero_terminal_snr_run_exports_and_samples_its_grids_with_the_rescaled_schedule(
    faces, sd15_folder, tmp_path
):
    from facesmith.models.loading import load_model
    from facesmith.samplers import make_scheduler
    from facesmith.train.sampling import labelled_grid, read_prompt_file, sample_images
    from facesmith.train.trainer import run_train

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a face --s 3 --d 1\n")
    settings = dict(dataset=str(faces), model=str(sd15_folder), resolution=64, batch_size=2, max_steps=1,
                    tensorboard=False, prediction_type="v_prediction", sample_prompts=str(prompts),
                    sample_sampler="DDIM")  # fmt: skip
    run = tmp_path / "zsnr"
    result = run_train(TrainConfig(**settings, output_dir=str(run), zero_terminal_snr=True))
    saved = json.loads((run / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["rescale_betas_zero_snr"] is True and saved["timestep_spacing"] == "trailing"
    assert saved["prediction_type"] == "v_prediction"
    # Loaded back, its sampler starts at SNR 0, from the last timestep.
    sampler = make_scheduler("DDIM", load_model(run / "model").pipe.scheduler.config)
    sampler.set_timesteps(3)
    assert sampler.alphas_cumprod[-1] == 0 and sampler.timesteps[0] == 999
    # The step-0 grid is the base weights sampled under the rescaled schedule, not under the plain one.
    loaded = load_model(sd15_folder)
    base, cpu, cfg = loaded.pipe, torch.device("cpu"), loaded.default_cfg
    plain = sample_images(base, read_prompt_file(prompts), "DDIM", 64, cpu, cfg=cfg)
    base.scheduler.register_to_config(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    rescaled = sample_images(base, read_prompt_file(prompts), "DDIM", 64, cpu, cfg=cfg)
    grid = lambda images: list(labelled_grid(images, read_prompt_file(prompts)).getdata())  # noqa: E731
    from PIL import Image

    first = list(Image.open(result.samples[0]).convert("RGB").getdata())
    assert first == grid(rescaled) and first != grid(plain)
