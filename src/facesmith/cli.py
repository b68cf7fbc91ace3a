"""The `facesmith` command line: parse, build a config, call a stage, print.

Every command is thin: `_settings` makes its config dataclass (a TOML or the defaults, then the options
that were given: every option defaults to None, so the dataclass holds the only default), one stage
function validates it and does the work, and the result is printed. What reaches the terminal (progress
bars, one-line errors and warnings) is `terminal.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

# Config dataclasses only, so `--help` stays fast and can quote their defaults.
from facesmith.config import MAX_STEPS, GenerateConfig, NoiseConfig, StageConfig, flag_summary, parse_flags
from facesmith.errors import FacesmithError
from facesmith.serve.config import ServeConfig
from facesmith.terminal import Bars, err, guarded, out
from facesmith.train.config import TrainConfig

app = typer.Typer(
    rich_markup_mode=None,  # help text is plain: "[default: 50]" must not be read as rich markup
    add_completion=False,
    no_args_is_help=True,
    help="Generate faces with Stable Diffusion, offline. Run `facesmith COMMAND --help` for details.",
)


def main() -> None:
    app()


def _settings(cls: type[StageConfig], toml: Path | None, given: dict[str, Any], base=None):
    """`base` (else the TOML at `toml`, else `cls`'s defaults) with the `given` options on top; an option
    given as None was not given (every option's default), so the dataclass keeps its own default."""
    if base is None:
        base = cls.load(toml) if toml is not None else cls()
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


# ----------------------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw, e.g. 'a photo of a smiling woman'.")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="What to steer away from.")] = None,
    steps: Annotated[
        int | None, typer.Option(help=f"Denoising steps, 1-{MAX_STEPS} [default: {GenerateConfig.steps}].")
    ] = None,
    cfg: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale [default: the model's, 7.5 for SD].")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="A1111 sampler name, see `facesmith samplers`.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="A1111 1.9's schedule type: automatic or karras (DPM++ 2M + karras).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first image; image i uses seed+i; -1 draws one.")
    ] = None,
    count: Annotated[int | None, typer.Option("-n", "--count", help="Number of images [default: 1].")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per pipeline call; >1 is faster on a GPU [default: 1].")
    ] = None,
    width: Annotated[int | None, typer.Option(help="Multiple of 8 [default: the model's size].")] = None,
    height: Annotated[int | None, typer.Option(help="Multiple of 8 [default: the model's size].")] = None,
    model: Annotated[str | None, typer.Option(help="Diffusers folder or .safetensors file.")] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA FILE[:WEIGHT]; repeat to stack.")] = None,
    vae: Annotated[
        str | None, typer.Option(help="Decode with this diffusers VAE folder (e.g. TAESD, a fast preview).")
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("-o", "--out", help="Output folder [default: outputs].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... [default: cuda if present].")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16 [default: fp32 on CPU].")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="auto, eager, onnx (CPU) or compile [default: auto: compile on CUDA, onnx on CPU]."
        ),
    ] = None,
    trace: Annotated[bool | None, typer.Option("--trace", help="Also save a strip of predicted x0.")] = None,
    allow_pickle: Annotated[
        bool | None, typer.Option("--allow-pickle", help="Allow .ckpt/.pt pickles (they can run code).")
    ] = None,
    from_image: Annotated[
        Path | None, typer.Option("--from", help="Reproduce a PNG made by facesmith or A1111.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a generate.toml.")] = None,
    init: Annotated[
        Path | None, typer.Option("--init", help="img2img: start from this image instead of noise.")
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(help=f"img2img denoising strength, (0, 1] [default: {GenerateConfig.strength}]."),
    ] = None,
    resize_mode: Annotated[
        str | None,
        typer.Option(
            help="just resize, crop and resize, or resize and fill (A1111's) [default: just resize]."
        ),
    ] = None,
    mask: Annotated[
        str | None,
        typer.Option(
            help="Inpaint: a mask image (white = repaint), or face, hair, mouth or eyes (detected)."
        ),
    ] = None,
    mask_blur: Annotated[
        int | None, typer.Option(help=f"Feather of the mask edge, px [default: {GenerateConfig.mask_blur}].")
    ] = None,
    invert_mask: Annotated[
        bool | None, typer.Option("--invert-mask", help="Repaint what the mask leaves black.")
    ] = None,
    only_masked: Annotated[
        bool | None,
        typer.Option("--only-masked", help="Repaint a crop around the mask at full size, paste it back."),
    ] = None,
    padding: Annotated[
        int | None,
        typer.Option(
            help=f"--only-masked: pixels around the mask [default: {GenerateConfig.inpaint_full_res_padding}]."
        ),
    ] = None,
    masked_content: Annotated[
        str | None,
        typer.Option(help="What the masked area starts from: original or latent noise [default: original]."),
    ] = None,
) -> None:
    """Generate face images from a text prompt, or from an image (--init) and a mask (--mask); each PNG
    carries its recipe."""

    def work():
        from facesmith.generate import run_generate
        from facesmith.metadata import config_from_png, model_hash_from_png
        from facesmith.samplers import check_sampler

        if scheduler is not None and sampler is None:
            raise FacesmithError(f"--scheduler {scheduler} changes a sampler: give --sampler too")
        chosen = check_sampler(sampler, scheduler).name if sampler is not None else None

        def _absolute(path) -> str | None:
            # The recipe (PNG JSON, generate.toml) names the init image and mask so --from finds them anywhere.
            return str(Path(path).expanduser().resolve()) if path is not None else None

        given = {
            "prompt": prompt, "negative": negative, "steps": steps, "cfg": cfg, "sampler": chosen,
            "seed": seed, "count": count, "batch_size": batch_size, "engine": engine, "width": width, "height": height, "model": model,
            "loras": lora or None, "vae": vae, "out_dir": out_dir, "device": device, "dtype": dtype, "trace": trace,
            "allow_pickle": allow_pickle, "init_image": _absolute(init), "strength": strength,
            "resize_mode": resize_mode, "mask": _absolute(mask) if mask and Path(mask).is_file() else mask,
            "mask_blur": mask_blur,
            "mask_invert": invert_mask, "inpaint_full_res": only_masked, "inpaint_full_res_padding": padding,
            "masked_content": masked_content,
        }  # fmt: skip
        base = config_from_png(from_image) if from_image is not None else None
        made_with = model_hash_from_png(from_image) if from_image is not None else None
        settings = _settings(GenerateConfig, config, given, base=base)
        with Bars() as bars:
            paths = run_generate(settings, progress=bars, made_with=made_with)
        for path in paths:
            out.print(str(path), highlight=False)

    guarded(work)


@app.command()
def prepare(
    sources: Annotated[list[Path] | None, typer.Argument(help="Folders of face photos.")] = None,
    out_dir: Annotated[str | None, typer.Option("-o", "--out", help="Dataset folder to write.")] = None,
    size: Annotated[
        int | None, typer.Option(help="Side of the square crops in pixels [default: 512].")
    ] = None,
    aligned: Annotated[
        bool | None, typer.Option("--aligned", help="Faces are already aligned: centre-crop, no detection.")
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="auto, celeba, utkface, kohya, imagefolder or folder [default: auto].")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes [default: one per CPU core].")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a prepare.toml.")] = None,
) -> None:
    """Turn face photos into an aligned, captioned dataset folder (metadata.jsonl, report.md)."""

    def work():
        from facesmith.data.config import PrepareConfig
        from facesmith.data.prepare import run_prepare

        given = {
            "sources": [str(s) for s in sources] if sources else None, "out_dir": out_dir, "size": size,
            "aligned": aligned, "format": format, "workers": workers,
        }  # fmt: skip
        with Bars() as bars:
            folder = run_prepare(_settings(PrepareConfig, config, given), progress=bars)
        summary = json.loads((folder / "report.json").read_text())
        advice = f"; {summary['advice']}" if summary.get("advice") else ""
        out.print(
            f"{folder}: kept {summary['kept']} of {summary['total']}{advice}; see {folder / 'report.md'}"
        )

    guarded(work, models=False)


@app.command()
def samplers() -> None:
    """List the sampler names (AUTOMATIC1111's) and the diffusers schedulers behind them."""
    from rich.table import Table

    from facesmith.samplers import SAMPLERS

    table = Table("name", "diffusers scheduler", "settings", "what it is")
    for s in SAMPLERS.values():
        table.add_row(s.name, s.scheduler, ", ".join(f"{k}={v}" for k, v in s.kwargs) or "-", s.note)
    out.print(table)


@app.command()
def info(image: Annotated[Path, typer.Argument(help="A PNG written by facesmith or A1111.")]) -> None:
    """Print the generation parameters stored in a PNG."""

    def work():
        from facesmith.metadata import read_png

        parameters, settings = read_png(image)
        if parameters is None and settings is None:
            raise FacesmithError(
                f"{image} carries no generation metadata (no `parameters` or `facesmith` chunk)"
            )
        if parameters is not None:
            out.rule("parameters (A1111)")
            out.print(parameters, highlight=False, markup=False, soft_wrap=True)
        if settings is not None:
            out.rule("facesmith")
            out.print_json(json.dumps(settings))

    guarded(work, models=False)


@app.command()
def noise(
    image: Annotated[Path, typer.Argument(help="The image to push through the forward process.")],
    steps: Annotated[int | None, typer.Option(help=f"Noised slices [default: {NoiseConfig.steps}].")] = None,
    model: Annotated[str | None, typer.Option(help="Diffusers folder or .safetensors file.")] = None,
    seed: Annotated[
        int | None, typer.Option(help=f"Seed of the noise [default: {NoiseConfig.seed}].")
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("-o", "--out", help="Output folder [default: outputs].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    allow_pickle: Annotated[
        bool | None, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")
    ] = None,
) -> None:
    """Save the forward (noising) process of IMAGE: encoded, noised in slices, each slice decoded."""

    def work():
        from facesmith.generate import run_noise

        given = {
            "image": str(image), "steps": steps, "model": model, "seed": seed, "out_dir": out_dir,
            "device": device, "dtype": dtype, "allow_pickle": allow_pickle,
        }  # fmt: skip
        with Bars() as bars:
            path = run_noise(_settings(NoiseConfig, None, given), progress=bars)
        out.print(str(path), highlight=False)

    guarded(work)


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="Diffusers folder or .safetensors [default: the built-in model].")
    ] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA FILE[:WEIGHT] to offer; repeat.")] = None,
    host: Annotated[
        str | None, typer.Option(help=f"0.0.0.0 opens it to the network [default: {ServeConfig.host}].")
    ] = None,
    port: Annotated[int | None, typer.Option(help=f"TCP port [default: {ServeConfig.port}].")] = None,
    api_auth: Annotated[str | None, typer.Option(help="user:pass[,user2:pass2]: HTTP Basic auth.")] = None,
    max_batch: Annotated[
        int | None, typer.Option(help=f"Most images per request [default: {ServeConfig.max_batch}].")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help=f"Most steps per image [default: {ServeConfig.max_steps}].")
    ] = None,
    max_size: Annotated[
        int | None, typer.Option(help=f"Most pixels per side [default: {ServeConfig.max_size}].")
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(help=f"Most jobs waiting; more get HTTP 503 [default: {ServeConfig.max_queue}]."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    allow_pickle: Annotated[
        bool | None, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a serve.toml.")] = None,
) -> None:
    """Serve a web page and an AUTOMATIC1111-compatible API (/sdapi/v1) for one model."""

    def work():
        from facesmith.serve import run_serve

        given = {
            "model": model, "loras": lora or None, "device": device, "dtype": dtype, "allow_pickle": allow_pickle,
            "host": host, "port": port, "api_auth": api_auth, "max_batch": max_batch, "max_steps": max_steps,
            "max_size": max_size, "max_queue": max_queue,
        }  # fmt: skip
        settings = _settings(ServeConfig, config, given)
        run_serve(
            settings, announce=lambda line: err.print(line, highlight=False, soft_wrap=True, markup=False)
        )

    guarded(work)


@app.command()
def evaluate(
    model: Annotated[
        str | None, typer.Argument(help="Model source or a folder of images [default: the built-in model].")
    ] = None,
    real: Annotated[str | None, typer.Option(help="Real faces: `facesmith prepare` folder or .npz.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Text file, one prompt (one image) per line.")] = None,
    auto: Annotated[
        int | None, typer.Option(help="N images from the built-in prompts [default: 40 without --prompts].")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of image 0; image i uses seed+i.")] = None,
    out_dir: Annotated[
        str | None, typer.Option("-o", "--out", help="Report folder [default: evaluation].")
    ] = None,
    real_count: Annotated[
        int | None, typer.Option(help="Real faces per reference set [default: 500].")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps [default: 30].")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="A1111 sampler name [default: the model's own: Euler a for the default model, DDIM otherwise]."
        ),
    ] = None,
    classifier: Annotated[str | None, typer.Option(help="Attribute classifier folder.")] = None,
    lora: Annotated[
        list[str] | None, typer.Option(help="LoRA FILE[:WEIGHT] on the model; repeat to stack.")
    ] = None,
    audit: Annotated[
        str | None,
        typer.Option(help="Memorization reference: sample or all training faces [default: sample]."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from an evaluate.toml.")] = None,
) -> None:
    """Score a model (or image folder): realism, attribute faithfulness, diversity, memorization."""

    def work():
        from facesmith.evaluate.evaluation import EvaluateConfig, run_evaluate

        given = {
            "model": model, "real": real, "prompts": prompts, "auto": auto, "seed": seed, "out_dir": out_dir,
            "real_count": real_count, "steps": steps, "sampler": sampler, "classifier": classifier,
            "loras": lora or None, "audit": audit, "device": device,
        }  # fmt: skip
        settings = _settings(EvaluateConfig, config, given)
        with Bars() as bars:
            metrics = run_evaluate(settings, progress=bars)
        model_set = metrics["sets"]["model"]
        out.print(
            f"{metrics['feature_space']}: FD {model_set['fd']:.2f}, precision {model_set['precision']:.3f}, "
            f"recall {model_set['recall']:.3f}; face rate {model_set['face_rate']:.3f}; "
            f"near-copies {model_set['near_copy_share']:.3f}",
            highlight=False,
        )
        out.print(str(Path(settings.out_dir) / "report.md"), highlight=False)

    guarded(work)


attributes_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="The face attribute classifier: train, predict."
)
app.add_typer(attributes_app, name="attributes")


@attributes_app.command("train")
def attributes_train(
    datasets: Annotated[list[str], typer.Argument(help="`facesmith prepare` folders or packed .npz files.")],
    out_dir: Annotated[
        str | None, typer.Option("-o", "--out", help="Classifier folder [default: attribute-classifier].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training faces [default: 10].")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many faces per dataset.")] = None,
    cache: Annotated[
        str | None, typer.Option(help="Reuse/keep the frozen feature maps in this .npy.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the heads and the batch order [default: 0].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
) -> None:
    """Train the attribute heads; print held-out accuracy per attribute (majority rate beside it)."""

    def work():
        from rich.table import Table

        from facesmith.evaluate.attributes import AttributeTrainConfig, train_attribute_classifier

        given = {
            "datasets": datasets, "out_dir": out_dir, "epochs": epochs, "limit": limit, "cache": cache,
            "seed": seed, "device": device,
        }  # fmt: skip
        config = _settings(AttributeTrainConfig, None, given)
        with Bars() as bars:
            info = train_attribute_classifier(config, progress=bars)
        table = Table("attribute", "held-out accuracy", "balanced", "TPR", "TNR", "majority", "faces")
        for name, s in info["held_out"].items():
            rates = [
                f"{s[k]:.3f}" if s.get(k) is not None else "-" for k in ("balanced_accuracy", "tpr", "tnr")
            ]
            table.add_row(name, f"{s['accuracy']:.3f}", *rates, f"{s['majority']:.3f}", str(s["count"]))
        out.print(table)
        out.print(config.out_dir, highlight=False)

    guarded(work, models=False)


@attributes_app.command("predict")
def attributes_predict(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    classifier: Annotated[str | None, typer.Option(help="Classifier folder [default: shipped].")] = None,
    caption: Annotated[bool, typer.Option("--caption", help="Add a caption written from them.")] = False,
) -> None:
    """Print one JSON line per image: its predicted attributes (and a caption with --caption)."""

    def work():
        from facesmith.evaluate.attributes import AttributePredictConfig, run_attributes_predict

        settings = AttributePredictConfig(
            images=[str(p) for p in images], classifier=classifier, caption=caption
        )
        for row in run_attributes_predict(settings):
            out.print(json.dumps(row), highlight=False, soft_wrap=True)

    guarded(work, models=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Every setting is also a flag (--flip / --no-flip for switches; see the README's Training "
    "section). Settings and defaults:  " + flag_summary(TrainConfig),
)
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="Start from a train.toml (a run folder has one).")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Start from a named recipe, e.g. face-small (the default model).")
    ] = None,
) -> None:
    """Fine-tune (full or LoRA) or train a preset from scratch on a dataset folder; flags override the TOML."""

    def work():
        from facesmith.train.presets import RECIPES
        from facesmith.train.trainer import run_train

        if recipe is not None and recipe not in RECIPES:
            raise FacesmithError(f"unknown recipe {recipe!r}: pick one of {', '.join(RECIPES)}")
        base = TrainConfig(**RECIPES[recipe]) if recipe is not None and config is None else None
        settings = _settings(TrainConfig, config, {}, base=base)
        # Flags are given values even when they say "none" (`--resolution none`), so they go on as they are.
        settings = dataclasses.replace(settings, **parse_flags(TrainConfig, list(ctx.args)))
        # Under a multi-process launch only the first process draws the bar and names the files.
        quiet = os.environ.get("RANK", "0") != "0"
        with Bars(disable=quiet) as bars:
            result = run_train(settings, progress=bars)
        if not quiet:
            loss = "" if math.isnan(result.final_loss) else f", last loss {result.final_loss:.4f}"
            err.print(f"trained {result.steps} steps{loss}", highlight=False, markup=False)
        for path in [] if quiet else result.exports:
            out.print(str(path), highlight=False, soft_wrap=True)

    guarded(work)


if __name__ == "__main__":
    main()
