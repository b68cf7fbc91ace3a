"""Engines: ONNX Runtime and torch.compile give eager's images; the loaded pipeline stays as loaded;
batched generation matches single images; `auto` picks per device; bad choices are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import facesmith
from facesmith.engines import cache_root, resolve_engine
from facesmith.errors import FacesmithError
from facesmith.generate import FaceGenerator
from facesmith.models.loading import LoadedModel
from factory import FAST, save_folder, tiny_sd15

onnx = pytest.importorskip("onnxruntime")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_onnx_engine_draws_eager_images_and_reuses_its_export(sd15_folder):
    eager = facesmith.load(sd15_folder, engine="eager")
    fast = facesmith.load(sd15_folder, engine="onnx")
    assert (eager.engine, fast.engine) == ("eager", "onnx")
    for sampler in ("DDIM", "Euler a"):
        a = eager.generate("a face", seed=3, sampler=sampler, steps=4)[0]
        b = fast.generate("a face", seed=3, sampler=sampler, steps=4)[0]
        assert np.abs(pixels(a) - pixels(b)).max() <= 2, sampler
    exports = sorted((cache_root() / "onnx").glob("*.onnx"))
    again = facesmith.load(sd15_folder, engine="onnx")
    assert sorted((cache_root() / "onnx").glob("*.onnx")) == exports  # same weights: no new export
    c = again.generate("a face", seed=3, sampler="Euler a", steps=4)[0]
    assert np.array_equal(pixels(b), pixels(c))


def test_the_loaded_pipeline_stays_a_torch_model(sd15_folder):
    from diffusers import UNet2DConditionModel

    fast = facesmith.load(sd15_folder, engine="onnx")
    assert isinstance(fast.pipe.unet, UNet2DConditionModel)
    assert (
        isinstance(fast.pipe.vae.decoder, torch.nn.Module)
        and fast.runner.vae.decoder is not fast.pipe.vae.decoder
    )
    assert type(fast.runner.unet).__name__ == "OnnxUNet"


def test_other_weights_get_their_own_export(sd15_folder, kohya_file):
    base = facesmith.load(sd15_folder, engine="onnx")
    styled = facesmith.load(sd15_folder, engine="onnx", loras=[f"{kohya_file}:1"])
    a = base.generate("a face", seed=1, **FAST)[0]
    b = styled.generate("a face", seed=1, **FAST)[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1


def test_a_lora_s_weight_reaches_the_onnx_engine(sd15_folder, kohya_file):
    """`--lora F:1` and `F:3` gave byte-identical images from one cached export (issue 15.2). LoRAs fixed at
    load are fused into the weights, so each weight is its own export, and each matches eager torch."""
    images = {}
    for weight in (1, 3):
        onnx = facesmith.load(sd15_folder, engine="onnx", loras=[f"{kohya_file}:{weight}"])
        assert getattr(onnx.pipe.unet, "peft_config", None) is None  # fused: plain layers
        eager = facesmith.load(
            sd15_folder, engine="eager", loras=[f"{kohya_file}:{weight}"], fuse_loras=False
        )
        images[weight] = pixels(onnx.generate("a face", seed=1, **FAST)[0])
        assert np.abs(images[weight] - pixels(eager.generate("a face", seed=1, **FAST)[0])).max() <= 3
    assert np.abs(images[1] - images[3]).mean() > 1


def test_unfused_lora_scales_are_part_of_the_export_key(sd15_folder, kohya_file):
    from facesmith.engines import weights_digest

    one = facesmith.load(sd15_folder, engine="eager", loras=[f"{kohya_file}:1"], fuse_loras=False)
    key = weights_digest(one.pipe.unet)
    one.pipe.set_adapters(["lora0"], adapter_weights=[3.0])
    assert weights_digest(one.pipe.unet) != key


def test_auto_picks_onnx_on_a_cpu_but_not_with_unfused_loras_or_sdxl(sd15_folder, sdxl_folder, kohya_file):
    assert facesmith.load(sd15_folder).engine == "onnx"
    assert facesmith.load(sd15_folder, loras=[str(kohya_file)]).engine == "onnx"  # fused at load
    unfused = facesmith.load(sd15_folder, loras=[str(kohya_file)], fuse_loras=False)
    assert unfused.engine == "eager"  # the server sets LoRA weights per request
    assert facesmith.load(sdxl_folder).engine == "eager"  # SDXL's added conditions


def test_bad_engine_choices_name_the_fix(sdxl_folder):
    pipe = tiny_sd15()
    cpu = torch.device("cpu")
    with pytest.raises(FacesmithError, match="--engine warp is unknown"):
        resolve_engine("warp", pipe, cpu, torch.float32)
    with pytest.raises(FacesmithError, match="runs on the CPU in fp32"):
        resolve_engine("onnx", pipe, cpu, torch.bfloat16)
    with pytest.raises(FacesmithError, match="--engine eager"):
        facesmith.load(sdxl_folder, engine="onnx")


def test_engine_is_chosen_at_load():
    generator = FaceGenerator(LoadedModel(tiny_sd15(), "tiny", None, []), engine="eager")
    with pytest.raises(FacesmithError, match="engine are chosen when loading"):
        generator.generate("a face", engine="onnx", **FAST)


def test_cli_rejects_an_unknown_engine_in_one_line(sd15_folder, tmp_path):
    from typer.testing import CliRunner

    from facesmith.cli import app

    result = CliRunner().invoke(
        app, ["generate", "a face", "--model", str(sd15_folder), "--engine", "warp", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--engine warp is unknown" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_batched_images_match_single_images(sd15, sampler):
    batch = sd15.generate("a face", seed=40, count=3, batch_size=2, sampler=sampler, **FAST)
    assert len(batch) == 3
    for i, image in enumerate(batch):
        single = sd15.generate("a face", seed=40 + i, sampler=sampler, **FAST)[0]
        assert np.abs(pixels(image) - pixels(single)).max() <= 2, i


def test_batched_trace_has_one_strip_per_image(sd15):
    from facesmith.config import GenerateConfig

    settings = {"prompt": "a face", "trace": True, "trace_frames": 2, **FAST}
    result = sd15.run(GenerateConfig(count=3, batch_size=2, seed=6, **settings))
    assert len(result.trace) == 3 and all(len(frames) == 2 for frames in result.trace)
    single = sd15.run(GenerateConfig(count=1, seed=8, **settings))
    for batched, alone in zip(result.trace[2], single.trace[0], strict=True):
        assert np.abs(pixels(batched) - pixels(alone)).max() <= 2


@pytest.mark.slow
def test_compile_engine_draws_eager_images_on_a_cpu():
    eager = FaceGenerator(LoadedModel(tiny_sd15(), "tiny", None, []), engine="eager")
    compiled = FaceGenerator(LoadedModel(tiny_sd15(), "tiny", None, []), engine="compile")
    a = eager.generate("a face", seed=5, steps=3)[0]
    b = compiled.generate("a face", seed=5, steps=3)[0]
    assert np.abs(pixels(a) - pixels(b)).max() <= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fast_path_matches_stock_diffusers_within_bf16_tolerance():
    """The compiled CUDA-graph path against diffusers' own pipeline call, same weights, seed and dtype."""
    generator = FaceGenerator(LoadedModel(tiny_sd15(), "tiny", None, []), device="cuda", dtype="bf16")
    assert generator.engine == "compile"
    fast = generator.generate("a face", seed=9, sampler="DDIM", steps=10)[0]
    from diffusers import DDIMScheduler, PNDMScheduler

    pipe = generator.pipe
    pipe.scheduler = DDIMScheduler.from_config(generator.base_scheduler_config)
    with torch.inference_mode():
        stock = pipe(
            "a face",
            num_inference_steps=10,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(9),
        ).images[0]
    assert np.abs(pixels(fast) - pixels(stock)).mean() <= 2
    # Without CFG the sampler keeps the UNet's raw output across steps: CUDA-graph buffers must not leak.
    pipe.scheduler = PNDMScheduler.from_config(generator.base_scheduler_config, skip_prk_steps=True)
    with torch.inference_mode():
        stock = pipe(
            "a face",
            num_inference_steps=6,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(4),
        )
    fast = generator.generate("a face", seed=4, sampler="PNDM", steps=6, cfg=1.0)[0]
    assert np.abs(pixels(fast) - pixels(stock.images[0])).mean() <= 2


def test_a_tiny_preview_vae_decodes_instead_of_the_models_own(sd15_folder, tmp_path):
    from diffusers import AutoencoderTiny

    small = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8))
    small.update(num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    torch.manual_seed(0)
    AutoencoderTiny(**small).save_pretrained(tmp_path / "taesd")
    own = facesmith.load(sd15_folder, engine="eager").generate("a face", seed=2, **FAST)[0]
    preview = facesmith.load(sd15_folder, engine="eager", vae=str(tmp_path / "taesd"))
    image = preview.generate("a face", seed=2, **FAST)[0]
    assert type(preview.pipe.vae).__name__ == "AutoencoderTiny"
    assert image.size == own.size and np.abs(pixels(image) - pixels(own)).mean() > 1

    AutoencoderTiny(**dict(small, latent_channels=16)).save_pretrained(tmp_path / "wide")
    with pytest.raises(FacesmithError, match="works on 16 latent channels but this model's UNet makes 4"):
        facesmith.load(sd15_folder, vae=str(tmp_path / "wide"))
    with pytest.raises(FacesmithError, match="not a diffusers VAE folder"):
        facesmith.load(sd15_folder, vae=str(tmp_path))


def test_an_unwritable_cache_falls_back_to_eager_under_auto_and_stops_an_explicit_onnx(
    sd15_folder, tmp_path, monkeypatch
):
    from facesmith.generate import EngineFallbackWarning

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FACESMITH_CACHE_DIR", str(blocker))
    with pytest.warns(EngineFallbackWarning, match="sampling with eager torch"):
        generator = facesmith.load(sd15_folder)
    assert generator.engine == "eager" and generator.generate("a face", seed=1, **FAST)
    with pytest.raises(FacesmithError, match="set FACESMITH_CACHE_DIR to a writable folder"):
        facesmith.load(sd15_folder, engine="onnx")


def test_a_first_onnx_export_is_announced_and_a_cached_one_is_not(tmp_path, monkeypatch):
    """The first run showed ~14 s of "loading model 0/?" while the export ran, saying nothing (15.27)."""
    monkeypatch.setenv("FACESMITH_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    save_folder(tiny_sd15(seed=5), folder)  # weights no other test exported
    heard: list[tuple[str, int | None]] = []
    facesmith.load(
        folder, engine="onnx", progress=lambda stage, done, total, **_: heard.append((stage, total))
    )
    assert heard == [
        ("exporting the UNet for ONNX Runtime (once per model)", None),
        ("exporting the decoder for ONNX Runtime (once per model)", None),
    ]
    heard.clear()
    facesmith.load(
        folder, engine="onnx", progress=lambda stage, done, total, **_: heard.append((stage, total))
    )
    assert heard == []
