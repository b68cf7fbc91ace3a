"""The training loop end to end on the tiny SD1.5 model: resume equality, NaN guard, exports that load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import factory
from facesmith.errors import FacesmithError
from facesmith.train.config import TrainConfig
from facesmith.train.launch import TrainingInterrupted
from facesmith.train.trainer import run_train

# Few steps at 64 px keep each run to a few seconds on 2 CPU cores.
TINY = dict(resolution=64, batch_size=2, tensorboard=False, seed=3)


class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def _weights(run, step: int, name: str = "trainable") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:06d}" / f"{name}.safetensors")


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_a_straight_run(faces, sd15_folder, tmp_path):
    settings = dict(
        TINY,
        dataset=str(faces),
        model=str(sd15_folder),
        max_steps=4,
        save_every=2,
        gradient_accumulation=2,
        ema_decay=0.9,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        learning_rate=1e-3,
        caption_shuffle=True,
        caption_dropout=0.3,
        noise_offset=0.1,
        min_snr_gamma=5.0,
        flip=True,
    )
    straight = run_train(TrainConfig(**settings, output_dir=str(tmp_path / "straight")))
    assert straight.steps == 4

    def stop_at_half(stage, done, total, **fields):
        if stage != "training":
            return
        assert total == 4 and {"loss", "lr"} <= set(fields)
        if done == 2:
            raise Interrupted

    halves = tmp_path / "halves"
    with pytest.raises(Interrupted):
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=stop_at_half)
    assert not (halves / "checkpoints" / "step-000004").exists()
    changed = dict(settings, batch_size=4)
    with pytest.raises(FacesmithError, match="made with other settings \\(batch_size 2 -> 4\\)"):
        run_train(TrainConfig(**changed, output_dir=str(halves), resume="latest"))
    resumed = run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest"))
    assert resumed.steps == 4

    for name in ("trainable", "ema"):
        a, b = _weights(tmp_path / "straight", 4, name), _weights(halves, 4, name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    # ... and training did move the weights away from the base model.
    start = _weights(halves, 2)
    assert any(not torch.equal(start[k], a[k]) for k in a)


# ----------------------------------------------------------------------------
# Ctrl-C: a checkpoint at the last whole optimizer step, and a resume from it equal to a straight run.

INTERRUPTIBLE = dict(
    TINY,
    max_steps=4,
    save_every=100,  # the only checkpoint before the end is the one the interrupt writes
    gradient_accumulation=2,
    ema_decay=0.9,
    learning_rate=1e-3,
    caption_dropout=0.3,  # fixed captions: the text-encoder cache is on
    flip=True,
)


@pytest.fixture(scope="module")
def straight_run(faces, sd15_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_train(TrainConfig(**INTERRUPTIBLE, dataset=str(faces), model=str(sd15_folder), output_dir=str(out)))
    return out


def _resume_matches_straight_run(settings: dict, halves, straight_run) -> None:
    resumed = run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest"))
    assert resumed.steps == 4
    for name in ("trainable", "ema"):
        a, b = _weights(straight_run, 4, name), _weights(halves, 4, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name  # bit for bit


def test_ctrl_c_saves_the_last_whole_step_and_says_how_to_resume(faces, sd15_folder, tmp_path, straight_run):
    settings = dict(INTERRUPTIBLE, dataset=str(faces), model=str(sd15_folder))

    def ctrl_c_after_step_2(stage, done, total, **fields):
        if stage == "training" and done == 2:
            raise KeyboardInterrupt

    halves = tmp_path / "halves"
    with pytest.raises(TrainingInterrupted) as got:
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=ctrl_c_after_step_2)
    saved = halves / "checkpoints" / "step-000002"
    message = str(got.value)
    assert isinstance(got.value, KeyboardInterrupt) and isinstance(got.value, FacesmithError)
    assert str(saved) in message and "\n" not in message
    assert f"facesmith train --config {halves / 'train.toml'} --resume latest" in message
    assert sorted(p.name for p in saved.parent.iterdir()) == ["step-000002"]
    _resume_matches_straight_run(settings, halves, straight_run)


def test_ctrl_c_inside_an_accumulation_rewinds_to_the_last_whole_step(
    faces, sd15_folder, tmp_path, straight_run, monkeypatch
):
    from facesmith.train.cache import LatentSource

    settings = dict(INTERRUPTIBLE, dataset=str(faces), model=str(sd15_folder))
    real, calls = LatentSource.latents, []

    def ctrl_c_in_step_3(self, items):
        calls.append(len(items))
        if len(calls) == 6:  # step 3's second micro-batch: its first one drew noise and captions
            raise KeyboardInterrupt
        return real(self, items)

    halves = tmp_path / "halves"
    with monkeypatch.context() as patch:
        patch.setattr(LatentSource, "latents", ctrl_c_in_step_3)
        with pytest.raises(TrainingInterrupted, match="step-000002"):
            run_train(TrainConfig(**settings, output_dir=str(halves)))
    _resume_matches_straight_run(settings, halves, straight_run)


def test_progress_names_each_phase_with_counts(tmp_path, sd15_folder, make_dataset, capsys):
    data = make_dataset(tmp_path / "data", count=3)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a smiling face --s 1\na sad face --s 1\n")
    calls, losses = [], []

    def progress(stage, done, total, **fields):
        calls.append((stage, done, total))
        if stage == "training":
            losses.append((fields["loss"], fields["step_loss"], fields["avr_loss"]))

    run_train(
        TrainConfig(
            **dict(TINY, batch_size=1),
            dataset=str(data),
            model=str(sd15_folder),
            output_dir=str(tmp_path / "run"),
            max_steps=2,
            sample_every=1,
            sample_prompts=str(prompts),
            caption_dropout=0.1,
        ),
        progress=progress,
    )
    assert calls[:4] == [("caching latents", k, 3) for k in (1, 2, 3)] + [("encoding captions", 4, 4)]
    sampling = [("sampling", 1, 2), ("sampling", 2, 2)]  # after each step's bar moved, not before
    # Issue 16 bug 9: a grid at step 0 as well, to compare the trained ones with.
    assert calls[4:] == [*sampling, ("training", 1, 2), *sampling, ("training", 2, 2), *sampling]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        f"step-{n:06d}.png" for n in (0, 1, 2)
    ]
    # Issue 16 bug 8: the loss shown is the running average (Kohya's avr_loss), the step's is beside it.
    (first, step1, _), (shown, step2, average) = losses
    assert first == step1 and shown == average == pytest.approx((step1 + step2) / 2) and step2 != shown
    # Issue 16 bug 7: stderr is no terminal here, so plain lines say where the run is.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    assert "train: step 0: sampling 2 images" in lines
    assert any(line.startswith("train: step 2/2  avr_loss ") and "it/s  ETA 0s" in line for line in lines)


def test_a_truncated_training_image_is_one_line_naming_it(tmp_path, sd15_folder, make_dataset):
    data = make_dataset(tmp_path / "data", count=2)
    image = data / "images" / "000001.png"
    image.write_bytes(image.read_bytes()[:200])
    config = TrainConfig(**TINY, dataset=str(data), model=str(sd15_folder), output_dir=str(tmp_path / "r"))
    with pytest.raises(FacesmithError, match=f"cannot read training image {image} .*metadata.jsonl"):
        run_train(config)


def test_nan_loss_is_skipped_and_a_streak_stops_the_run_keeping_the_last_good_checkpoint(
    faces, sd15_folder, tmp_path
):
    # An absurd learning rate is the real-world way to get there: the weights overflow after one step.
    config = TrainConfig(
        **TINY,
        dataset=str(faces),
        model=str(sd15_folder),
        output_dir=str(tmp_path / "run"),
        learning_rate=1e36,
        max_grad_norm=0.0,
        max_steps=6,
        save_every=1,
        max_bad_steps=2,
    )
    with pytest.raises(FacesmithError, match="NaN or inf for 2 steps in a row.*learning rate.*step-000001"):
        run_train(config)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000001"]


def test_full_export_loads_as_single_file_in_facesmith_and_in_diffusers(faces, sd15_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from facesmith.models.loading import load_model

    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **TINY,
            dataset=str(faces),
            model=str(sd15_folder),
            output_dir=str(run),
            max_steps=2,
            prediction_type="v_prediction",
            learning_rate=1e-3,
            train_text_encoder=True,
        )
    )
    assert result.exports == [run / "model", run / "model.safetensors"]
    trained = _weights(run, 2)
    folder = load_model(run / "model").pipe
    single = load_model(run / "model.safetensors").pipe
    for key, tensor in folder.unet.state_dict().items():
        torch.testing.assert_close(single.unet.state_dict()[key], tensor)
        torch.testing.assert_close(trained[f"unet.{key}"], tensor)
    assert single.scheduler.config.prediction_type == "v_prediction"
    base = load_model(sd15_folder).pipe.text_encoder.state_dict()
    for key, tensor in folder.text_encoder.state_dict().items():
        torch.testing.assert_close(single.text_encoder.state_dict()[key], tensor)
    assert any(not torch.equal(base[k], t) for k, t in folder.text_encoder.state_dict().items())
    plain = StableDiffusionPipeline.from_single_file(
        str(run / "model.safetensors"), config=str(run / "model"), local_files_only=True, safety_checker=None
    )
    torch.testing.assert_close(plain.unet.state_dict()["conv_in.weight"], trained["unet.conv_in.weight"])
    folder_plain = StableDiffusionPipeline.from_pretrained(str(run / "model"), local_files_only=True)
    torch.testing.assert_close(
        folder_plain.unet.state_dict()["conv_in.weight"], trained["unet.conv_in.weight"]
    )
    # The run folder reproduces itself.
    assert TrainConfig.load(run / "train.toml") == TrainConfig(
        **TINY,
        dataset=str(faces),
        model=str(sd15_folder),
        output_dir=str(run),
        max_steps=2,
        prediction_type="v_prediction",
        learning_rate=1e-3,
        train_text_encoder=True,
    )


@pytest.mark.slow
def test_lora_export_is_kohya_format_and_loads_in_diffusers_and_facesmith(faces, sd15_folder, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from facesmith.models.loading import cached_sha256
    from facesmith.models.lora import LoraSpec, apply_loras

    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **TINY,
            dataset=str(faces),
            model=str(sd15_folder),
            output_dir=str(run),
            mode="lora",
            lora_rank=4,
            lora_alpha=2.0,
            lora_conv=True,
            train_text_encoder=True,
            learning_rate=1e-2,
            max_steps=2,
            save_every=1,
        )
    )
    path = result.exports[0]
    assert path == run / "run.safetensors"  # named after its run (issue 15 bug 7)
    with safe_open(path, "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    state = load_file(path)
    assert any(
        k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for k in keys
    )
    assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for k in keys)  # LoCon
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert all(state[k].item() == 2.0 for k in keys if k.endswith(".alpha"))
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_module"] == "networks.lora"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert (metadata["ss_output_name"], metadata["ss_sd_model_name"]) == ("run", sd15_folder.name)
    unet_files = sorted((sd15_folder / "unet").glob("*.safetensors"))
    assert metadata["ss_new_sd_model_hash"] == cached_sha256(unet_files)
    modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
    assert all(state[f"{m}.lora_up.weight"].abs().sum() > 0 for m in modules)  # trained away from zero

    pipe = StableDiffusionPipeline.from_pretrained(
        str(sd15_folder), safety_checker=None, local_files_only=True
    )
    prompt = dict(prompt="a face", num_inference_steps=2, output_type="latent", width=64, height=64)
    before = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(path))
    loaded_unet = sum("lora_A" in n for n, _ in pipe.unet.named_parameters())
    loaded_text = sum("lora_A" in n for n, _ in pipe.text_encoder.named_parameters())
    assert loaded_unet + loaded_text == len(modules)
    after = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert not torch.allclose(before, after)

    ours = StableDiffusionPipeline.from_pretrained(
        str(sd15_folder), safety_checker=None, local_files_only=True
    )
    apply_loras(ours, [LoraSpec(path, 1.0)])
    again = ours(**prompt, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(again, after)

    # Issue 16 bug 4: the save at step 1 left a LoRA of its own that --lora takes, with step 1's weights.
    early = run / "run-step00000001.safetensors"
    assert sorted(p.name for p in run.glob("*.safetensors")) == [early.name, path.name]
    with safe_open(early, "pt") as handle:
        assert (handle.metadata()["ss_steps"], handle.metadata()["ss_output_name"]) == ("1", early.stem)
    step_one = load_file(early)
    assert step_one.keys() == state.keys()
    assert any(not torch.equal(step_one[k], state[k]) for k in modules_keys(modules))
    first = StableDiffusionPipeline.from_pretrained(
        str(sd15_folder), safety_checker=None, local_files_only=True
    )
    apply_loras(first, [LoraSpec(early, 1.0)])
    early_image = first(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert not torch.allclose(early_image, after) and not torch.allclose(early_image, before)


def modules_keys(modules: set[str]) -> list[str]:
    return [f"{m}.lora_up.weight" for m in sorted(modules)]


def test_a_dataset_that_does_not_fit_the_model_fails_before_training(faces, sd15_folder, tmp_path):
    # The tiny UNet down-samples 8x latents once: sizes must be multiples of 16 px.
    config = TrainConfig(
        **dict(TINY, resolution=40),
        dataset=str(faces),
        model=str(sd15_folder),
        output_dir=str(tmp_path / "r"),
    )
    with pytest.raises(FacesmithError, match="40x40 is not a multiple of 16"):
        run_train(config)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_bucketed_non_square_data_samples_and_tensorboard(tmp_path, sd15_folder, make_dataset):
    data = make_dataset(tmp_path / "data", count=4, size=[(64, 32), (32, 64), (64, 32), (48, 48)])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# comment\na smiling face --n blurry --s 2 --d 7 --l 3\na sad face --s 2 --w 32 --h 64\n"
    )
    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            dataset=str(data),
            model=str(sd15_folder),
            output_dir=str(run),
            resolution=48,
            bucketing=True,
            bucket_step=16,
            min_bucket_side=32,
            max_bucket_side=64,
            batch_size=1,
            max_steps=2,
            sample_every=1,
            sample_prompts=str(prompts),
            tensorboard=True,
            cache_latents="disk",
        )
    )
    assert [p.name for p in result.samples] == ["step-000000.png", "step-000001.png", "step-000002.png"]
    from PIL import Image

    grid = Image.open(result.samples[0])
    assert grid.size == (2 * 48, 64 + 24)  # two cells, each as wide as the widest image, with a label
    assert list((run / "cache").glob("latents-*.safetensors"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(run / "logs" / "facesmith")).Reload().Tags()
    assert {"loss", "avr_loss", "lr", "grad_norm"} <= set(logged["scalars"]) and "samples" in logged["images"]
    losses = EventAccumulator(str(run / "logs" / "facesmith")).Reload().Scalars("loss")
    assert [event.step for event in losses] == [1, 2]  # every step's, not every 10th (issue 16 bug 8)


@pytest.mark.slow
def test_two_cpu_processes_agree_on_weights_and_split_each_global_batch(faces, sd15_folder, tmp_path):
    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **dict(TINY, batch_size=1),
            dataset=str(faces),
            model=str(sd15_folder),
            output_dir=str(run),
            max_steps=2,
            save_every=1,
            num_processes=2,
            cpu=True,
            export_single_file=False,
        )
    )
    assert result.steps == 2 and result.exports == [run / "model"]
    import json

    seen = []
    for step in (1, 2):
        folder = run / "checkpoints" / f"step-{step:06d}"
        views = [json.loads((folder / f"process-{r}.json").read_text()) for r in (0, 1)]
        assert views[0]["weights_sha256"] == views[1]["weights_sha256"]
        # Global batch 2 per step: each process trained on its own image of the pair.
        assert len(views[0]["images_seen"]) == len(views[1]["images_seen"]) == 1
        assert views[0]["images_seen"] != views[1]["images_seen"]
        seen += views[0]["images_seen"] + views[1]["images_seen"]
    assert sorted(seen) == [0, 1, 2, 3]  # one epoch of 4 images over 2 steps


@pytest.mark.slow
def test_preset_from_scratch_exports_in_the_default_model_layout(faces, tmp_path):
    from facesmith.models.default_model import build_default_pipeline
    from facesmith.train.presets import LATENT_SCALE

    run = tmp_path / "run"
    result = run_train(
        TrainConfig(
            **dict(TINY, resolution=32),
            dataset=str(faces),
            output_dir=str(run),
            preset="face-tiny",
            max_steps=2,
            caption_from_attributes=True,
            caption_dropout=0.1,
            min_snr_gamma=5.0,
            ema_decay=0.99,
            learning_rate=1e-3,
            save_every=1,
        )
    )
    assert result.exports == [run / "model"]
    # The save at step 1 exported the model as it was then (its EMA weights), loadable as --model.
    from facesmith.models.loading import load_model

    early = load_model(run / "run-step00000001").pipe.unet.state_dict()
    ema_one = _weights(run, 1, "ema")
    for key, tensor in early.items():
        torch.testing.assert_close(tensor, ema_one[f"unet.{key}"].half().float())
    pipe = build_default_pipeline(run / "model")
    assert pipe.unet.config.in_channels == 32 and pipe.unet.config.block_out_channels == [32, 32, 64]
    assert pipe.vae.config.scaling_factor == LATENT_SCALE
    ema = _weights(run, 2, "ema")
    for key, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(tensor, ema[f"unet.{key}"].half().float())


@pytest.mark.slow
def test_bf16_gradient_checkpointing_lion_and_epochs(faces, sd15_folder, tmp_path):
    result = run_train(
        TrainConfig(
            **dict(TINY, batch_size=4),
            dataset=str(faces),
            model=str(sd15_folder),
            output_dir=str(tmp_path / "run"),
            mode="lora",
            mixed_precision="bf16",
            gradient_checkpointing=True,
            optimizer="lion",
            learning_rate=1e-4,
            max_steps=0,
            max_epochs=2,  # 4 images, batch 4: one step per epoch
            cache_latents="none",
        )
    )
    assert result.steps == 2 and result.exports[0].is_file()
    import math

    assert math.isfinite(result.final_loss)


def test_fine_tune_on_faces_prepared_from_the_shared_data(prepared_celeba, sd15_folder, tmp_path):
    result = run_train(
        TrainConfig(
            **TINY,
            dataset=str(prepared_celeba),
            model=str(sd15_folder),
            output_dir=str(tmp_path / "run"),
            mode="lora",
            max_steps=2,
        )
    )
    assert result.steps == 2 and result.exports == [tmp_path / "run" / "run.safetensors"]


def test_compiled_training_is_refused_on_a_cpu(faces, sd15_folder, tmp_path):
    """inductor's CPU backward gave wrong UNet gradients (NOTES.md): no silent bad training."""
    settings = dict(TINY, dataset=str(faces), model=str(sd15_folder), max_steps=1, compile=True, cpu=True)
    with pytest.raises(FacesmithError, match="compile = true trains on CUDA only"):
        run_train(TrainConfig(**settings, output_dir=str(tmp_path / "run")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_unet_gradients_equal_eager_gradients_on_cuda():
    """What `compile = true` trains with: inductor's backward of the UNet against eager's, in fp32."""
    import copy

    from factory import tiny_sd15

    eager = tiny_sd15().unet.cuda().train()
    compiled_copy = copy.deepcopy(eager)
    compiled = torch.compile(compiled_copy)
    generator = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 4, 8, 8, device="cuda", generator=generator)
    states = torch.randn(2, 77, 32, device="cuda", generator=generator)
    t = torch.tensor([10, 700], device="cuda")
    eager(x, t, states).sample.pow(2).mean().backward()
    compiled(x, t, states).sample.pow(2).mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_copy.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6), name


@pytest.mark.slow
def test_a_preset_export_loads_wherever_a_model_is_taken(faces, tmp_path):
    """Issue 16 bug 1: `model/` in the default model's layout is a `--model` for generate, evaluate,
    serve (all through `load_model`) and for train itself."""
    from typer.testing import CliRunner

    from facesmith.cli import app
    from facesmith.generate import FaceGenerator
    from facesmith.models.loading import load_model

    base = dict(TINY, resolution=32, dataset=str(faces), max_steps=1)
    run = tmp_path / "scratch"
    run_train(TrainConfig(**base, output_dir=str(run), preset="face-tiny"))
    loaded = load_model(run / "model")
    assert (loaded.name, loaded.default_sampler, loaded.default_cfg) == ("model", "Euler a", 2.0)
    assert loaded.pipe.unet.config.block_out_channels == [32, 32, 64] and loaded.model_hash()
    image = FaceGenerator.load(str(run / "model")).generate("a face", steps=2, seed=0)[0]
    assert image.size == (32, 32)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "a face",
            "--model",
            str(run / "model"),
            "--steps",
            "1",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "png"),
            "--engine",
            "eager",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 1
    # ... and trains further, as its own preset.
    again = tmp_path / "again"
    result = run_train(TrainConfig(**base, output_dir=str(again), model=str(run / "model")))
    assert result.exports == [again / "model"]
    assert load_model(again / "model").pipe.unet.config.block_out_channels == [32, 32, 64]


@pytest.mark.slow
def test_long_captions_warn_once_with_a_count_and_max_token_length_trains_on_them(
    tmp_path, sd15_folder, make_dataset
):
    import warnings

    from facesmith.generate import PromptTruncatedWarning

    long = "a photo of a person, " + ", ".join(f"detail number {i}" for i in range(22))
    data = make_dataset(tmp_path / "d", count=2, captions=[long, long + " smiling"])
    base = dict(TINY, dataset=str(data), model=str(sd15_folder), max_steps=1, mode="lora", lora_rank=2)
    with pytest.warns(PromptTruncatedWarning) as caught:
        run_train(TrainConfig(**base, output_dir=str(tmp_path / "cut")))
    cut = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert len(cut) == 1 and cut[0].startswith("2 of 2 captions are longer than the 75 tokens")
    assert "max_token_length = 150 or 225" in cut[0]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = run_train(TrainConfig(**base, output_dir=str(tmp_path / "long"), max_token_length=150))
    assert not [w for w in seen if issubclass(w.category, PromptTruncatedWarning)]
    assert result.steps == 1


# ----------------------------------------------------------------------------
# Issue 16's options: validation loss, masked loss, prior preservation, per-part learning rates, noise and
# loss options, all at once, and still resumed bit for bit.


def _issue16_settings(tmp_path, faces, sd15_folder) -> dict:
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    for k, image in enumerate(sorted((faces / "images").glob("*.png"))):
        mask = Image.new("L", (40, 40), 0)
        mask.paste(255, (0, 0, 20 + 4 * k, 40))  # the left part, a different width for each image
        mask.save(masks / image.name)
    reg = tmp_path / "reg" / "3_person"
    for k in range(3):
        factory.save_photo(reg / f"{k}.png", seed=100 + k, size=(40, 40))
    return dict(
        INTERRUPTIBLE,
        dataset=str(faces),
        model=str(sd15_folder),
        mode="lora",
        lora_rank=2,
        train_text_encoder=True,
        unet_lr=2e-3,
        text_encoder_lr=5e-4,
        validate_every=2,
        validation_seed=7,
        mask_dir=str(masks),
        reg_dir=str(tmp_path / "reg"),
        prior_loss_weight=0.5,
        multires_noise_iterations=3,
        min_timestep=100,
        max_timestep=900,
        loss_type="huber",
        zero_terminal_snr=True,
        prediction_type="v_prediction",
    )


def test_issue16_options_train_validate_and_resume_bit_for_bit(faces, sd15_folder, tmp_path, capsys):
    import csv
    import json

    settings = _issue16_settings(tmp_path, faces, sd15_folder)
    shown = []

    def progress(stage, done, total, **fields):
        if stage == "validating" and done == 1:
            shown.append((fields["step"], fields["val_loss"]))

    straight = run_train(TrainConfig(**settings, output_dir=str(tmp_path / "straight")), progress=progress)
    assert straight.steps == 4 and [step for step, _ in shown] == [2, 4]
    rows = list(csv.DictReader((tmp_path / "straight" / "validation.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    summary = json.loads((tmp_path / "straight" / "validation.json").read_text())
    assert summary["timesteps"] == [10, 350, 500, 650, 990] and summary["images"] == 1
    losses = {int(k): v for k, v in summary["losses"].items()}
    assert summary["best_step"] == min(losses, key=losses.get) and straight.validation == summary
    assert [round(v, 4) for v in losses.values()] == [round(v, 4) for _, v in shown]
    err = capsys.readouterr().err
    assert f"train: best step {summary['best_step']} (val_loss " in err and "train: step 2: val_loss " in err

    def ctrl_c_after_step_2(stage, done, total, **fields):
        if stage == "training" and done == 2:
            raise KeyboardInterrupt

    halves = tmp_path / "halves"
    with pytest.raises(TrainingInterrupted):
        run_train(TrainConfig(**settings, output_dir=str(halves)), progress=ctrl_c_after_step_2)
    resumed = run_train(TrainConfig(**settings, output_dir=str(halves), resume="latest"))
    assert resumed.steps == 4
    a, b = _weights(tmp_path / "straight", 4), _weights(halves, 4)
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    # The validation of the resumed run is the straight run's, step for step.
    assert (halves / "validation.csv").read_text() == (tmp_path / "straight" / "validation.csv").read_text()
    assert TrainConfig.load(halves / "train.toml") == TrainConfig(
        **settings, output_dir=str(halves), resume="latest"
    )


def test_validation_needs_held_out_rows_and_reg_dir_needs_images(tmp_path, sd15_folder, make_dataset):
    import dataclasses

    from facesmith.data.manifest import read_manifest, write_manifest

    data = make_dataset(tmp_path / "data", count=2)
    write_manifest(data, [dataclasses.replace(r, split="train") for r in read_manifest(data)])
    base = dict(TINY, dataset=str(data), model=str(sd15_folder), max_steps=1, output_dir=str(tmp_path / "r"))
    with pytest.raises(FacesmithError, match="validate_every 1 needs held-out images.*--val-fraction"):
        run_train(TrainConfig(**base, validate_every=1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacesmithError, match="reg_dir .*empty has no images") as got:
        run_train(TrainConfig(**base, reg_dir=str(tmp_path / "empty")))
    assert "\n" not in str(got.value)


def test_class_images_are_generated_once_into_the_run_folder_and_trained_beside(faces, sd15_folder, tmp_path):
    base = dict(TINY, dataset=str(faces), model=str(sd15_folder), batch_size=1, save_every=1,
                class_prompt="a photo of a person", num_class_images=2, class_image_steps=1)  # fmt: skip
    run = tmp_path / "run"
    stages = []
    result = run_train(TrainConfig(**base, output_dir=str(run), max_steps=1),
                       progress=lambda stage, done, total, **f: stages.append((stage, done, total)))  # fmt: skip
    assert result.steps == 1 and ("generating class images", 2, 2) in stages
    made = sorted(p.name for p in (run / "class_images").iterdir())
    assert made == ["000000.png", "000000.txt", "000001.png", "000001.txt"]
    stamps = [p.stat().st_mtime_ns for p in sorted((run / "class_images").glob("*.png"))]
    stages.clear()
    again = run_train(TrainConfig(**base, output_dir=str(run), max_steps=2, resume="latest"),
                      progress=lambda stage, done, total, **f: stages.append((stage, done, total)))  # fmt: skip
    assert again.steps == 2 and not [s for s in stages if s[0] == "generating class images"]
    assert stamps == [p.stat().st_mtime_ns for p in sorted((run / "class_images").glob("*.png"))]
