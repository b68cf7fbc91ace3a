"""The `facesmith` command line: parse, build a config, call a stage, print.

Every command is thin: options become a config dataclass (or a path), one stage function does the work,
and the result is printed. A FacesmithError becomes one red line on stderr and exit status 2; facesmith's
own warnings (a cut prompt, a NaN VAE decode) become yellow lines. Library chatter is silenced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from facesmith.errors import FacesmithError
from facesmith.train.config import flag_summary  # dataclasses only: keeps `--help` fast

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Generate faces with Stable Diffusion, offline. Run `facesmith COMMAND --help` for details.",
)
out = Console()
err = Console(stderr=True)


def main() -> None:
    app()


def _guarded(work: Callable[[], Any], models: bool = True) -> Any:
    """Run `work`, turning user mistakes into one red line and exit status 2."""
    _quiet_libraries(models)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.showwarning = _show_warning
            for category in _facesmith_warnings():
                warnings.simplefilter("always", category)
            return work()
    except FacesmithError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _facesmith_warnings() -> list[type[Warning]]:
    from facesmith.generate import PromptTruncatedWarning
    from facesmith.latents import VaeUpcastWarning

    return [PromptTruncatedWarning, VaeUpcastWarning]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _quiet_libraries(models: bool = True) -> None:
    """Keep library logs and their own progress bars off the terminal; facesmith shows its own."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers", "transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if models:
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


# ----------------------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw, e.g. 'a photo of a smiling woman'.")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="What to steer away from.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps, 1-1000 [default: 50].")] = None,
    cfg: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale [default: the model's, 7.5 for SD].")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="A1111 sampler name, see `facesmith samplers`.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first image; image i uses seed+i.")] = None,
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
        bool, typer.Option("--allow-pickle", help="Allow .ckpt/.pt pickles (they can run code).")
    ] = False,
    from_image: Annotated[
        Path | None, typer.Option("--from", help="Reproduce a PNG made by facesmith or A1111.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a generate.toml.")] = None,
) -> None:
    """Generate face images from a text prompt; each PNG carries its recipe."""

    def work():
        from facesmith.config import GenerateConfig, load_generate_config
        from facesmith.generate import run_generate
        from facesmith.metadata import config_from_png

        if from_image is not None:
            base = config_from_png(from_image)
        elif config is not None:
            base = load_generate_config(config)
        else:
            base = GenerateConfig()
        given = {
            "prompt": prompt, "negative": negative, "steps": steps, "cfg": cfg, "sampler": sampler,
            "seed": seed, "count": count, "batch_size": batch_size, "engine": engine, "width": width, "height": height, "model": model,
            "loras": lora or None, "vae": vae, "out_dir": out_dir, "device": device, "dtype": dtype, "trace": trace,
        }  # fmt: skip
        settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        settings.allow_pickle = allow_pickle or base.allow_pickle
        settings.validate()
        with _progress() as bar:
            task = bar.add_task("loading model", total=None)

            def progress(step: int, total: int) -> None:
                bar.update(task, description="sampling", completed=step, total=total)

            paths = run_generate(settings, progress=progress)
        for path in paths:
            out.print(str(path), highlight=False)

    _guarded(work)


@app.command()
def prepare(
    sources: Annotated[list[Path] | None, typer.Argument(help="Folders of face photos.")] = None,
    out_dir: Annotated[str | None, typer.Option("-o", "--out", help="Dataset folder to write.")] = None,
    size: Annotated[
        int | None, typer.Option(help="Side of the square crops in pixels (default 512).")
    ] = None,
    aligned: Annotated[
        bool | None, typer.Option("--aligned", help="Faces are already aligned: centre-crop, no detection.")
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="auto, celeba, utkface, kohya, imagefolder or folder.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per CPU core).")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from a prepare.toml.")] = None,
) -> None:
    """Turn face photos into an aligned, captioned dataset folder (metadata.jsonl, report.md)."""

    def work():
        import time

        from rich.progress import TextColumn, TimeRemainingColumn

        from facesmith.data.config import PrepareConfig, load_prepare_config
        from facesmith.data.prepare import run_prepare

        base = load_prepare_config(config) if config is not None else PrepareConfig()
        given = {
            "sources": [str(s) for s in sources] if sources else None, "out_dir": out_dir, "size": size,
            "aligned": aligned, "format": format, "workers": workers,
        }  # fmt: skip
        settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        with _progress() as bar:
            bar.columns = (*bar.columns, TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
            task = bar.add_task("preparing", total=None, rate="")
            start: list = []

            def progress(n: int, total: int) -> None:
                start.append((n, time.perf_counter())) if not start else None
                (n0, t0), now = start[0], time.perf_counter()
                rate = f"{(n - n0) / (now - t0):.1f} img/s" if now > t0 and n > n0 else ""
                bar.update(task, completed=n, total=total, rate=rate)

            folder = run_prepare(settings, progress=progress)
        summary = json.loads((folder / "report.json").read_text())
        out.print(f"{folder}: kept {summary['kept']} of {summary['total']}; see {folder / 'report.md'}")

    _guarded(work, models=False)


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

    _guarded(work, models=False)


@app.command()
def noise(
    image: Annotated[Path, typer.Argument(help="The image to push through the forward process.")],
    steps: Annotated[int, typer.Option(help="Noised slices, evenly spaced in t.")] = 8,
    model: Annotated[str | None, typer.Option(help="Diffusers folder or .safetensors file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    out_dir: Annotated[str, typer.Option("-o", "--out", help="Output folder.")] = "outputs",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")] = False,
) -> None:
    """Save the forward (noising) process of IMAGE: encoded, noised in slices, each slice decoded."""

    def work():
        from PIL import Image, UnidentifiedImageError

        from facesmith.generate import FaceGenerator, image_strip, prepare_out_dir

        if not 1 <= steps <= 1000:
            raise FacesmithError(f"--steps {steps} is outside [1, 1000]")
        try:
            picture = Image.open(image)
            picture.load()
        except FileNotFoundError:
            raise FacesmithError(f"image {image} does not exist") from None
        except (OSError, UnidentifiedImageError) as error:
            raise FacesmithError(f"cannot read image {image}: {error}") from None
        folder = prepare_out_dir(out_dir)
        with _progress() as bar:
            bar.add_task("loading model and noising", total=None)
            # The forward process never runs the UNet: no engine to prepare for it.
            generator = FaceGenerator.load(
                model, device=device, dtype=dtype, allow_pickle=allow_pickle, engine="eager"
            )
            frames = generator.forward_process(picture, slices=steps, seed=seed)
        path = folder / f"{image.stem}-noise.png"
        image_strip(frames).save(path)
        out.print(str(path), highlight=False)

    _guarded(work)


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="Diffusers folder or .safetensors (default: the built-in model).")
    ] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA FILE[:WEIGHT] to offer; repeat.")] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    api_auth: Annotated[str | None, typer.Option(help="user:pass[,user2:pass2]: HTTP Basic auth.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per request.")] = 8,
    max_steps: Annotated[int, typer.Option(help="Most denoising steps per image.")] = 150,
    max_size: Annotated[int, typer.Option(help="Most pixels per side.")] = 1024,
    max_queue: Annotated[int, typer.Option(help="Most jobs waiting; more get HTTP 503.")] = 64,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")] = False,
) -> None:
    """Serve a web page and an AUTOMATIC1111-compatible API (/sdapi/v1) for one model."""

    def work():
        from facesmith.serve import ServeConfig, run_serve

        config = ServeConfig(
            model=model, loras=lora or [], device=device, dtype=dtype, allow_pickle=allow_pickle,
            host=host, port=port, api_auth=api_auth, max_batch=max_batch, max_steps=max_steps,
            max_size=max_size, max_queue=max_queue,
        )  # fmt: skip
        run_serve(config, announce=lambda line: err.print(line, highlight=False, soft_wrap=True))

    _guarded(work)


def _bar_progress(bar):
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return progress


@app.command()
def evaluate(
    model: Annotated[
        str | None, typer.Argument(help="Model source or a folder of images (default: the built-in model).")
    ] = None,
    real: Annotated[str | None, typer.Option(help="Real faces: `facesmith prepare` folder or .npz.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Text file, one prompt (one image) per line.")] = None,
    auto: Annotated[int | None, typer.Option(help="N images from the built-in prompts [40].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of image 0; image i uses seed+i.")] = None,
    out_dir: Annotated[str | None, typer.Option("-o", "--out", help="Report folder.")] = None,
    real_count: Annotated[int | None, typer.Option(help="Real faces per reference set [500].")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps [30].")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="A1111 sampler name [the model's own: Euler a for the default model, DDIM otherwise]."
        ),
    ] = None,
    classifier: Annotated[str | None, typer.Option(help="Attribute classifier folder.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    config: Annotated[Path | None, typer.Option(help="Start from an evaluate.toml.")] = None,
) -> None:
    """Score a model (or image folder): realism, attribute faithfulness, diversity, memorization."""

    def work():
        from facesmith.evaluate.evaluation import EvaluateConfig, load_evaluate_config, run_evaluate

        base = load_evaluate_config(config) if config else EvaluateConfig()
        given = {
            "model": model, "real": real, "prompts": prompts, "auto": auto, "seed": seed, "out_dir": out_dir,
            "real_count": real_count, "steps": steps, "sampler": sampler, "classifier": classifier,
            "device": device,
        }  # fmt: skip
        settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        with _progress() as bar:
            metrics = run_evaluate(settings, progress=_bar_progress(bar))
        model_set = metrics["sets"]["model"]
        out.print(
            f"{metrics['feature_space']}: FD {model_set['fd']:.2f}, precision {model_set['precision']:.3f}, "
            f"recall {model_set['recall']:.3f}; face rate {model_set['face_rate']:.3f}; "
            f"near-copies {model_set['near_copy_share']:.3f}",
            highlight=False,
        )
        out.print(str(Path(settings.out_dir) / "report.md"), highlight=False)

    _guarded(work)


attributes_app = typer.Typer(no_args_is_help=True, help="The face attribute classifier: train, predict.")
app.add_typer(attributes_app, name="attributes")


@attributes_app.command("train")
def attributes_train(
    datasets: Annotated[list[str], typer.Argument(help="`facesmith prepare` folders or packed .npz files.")],
    out_dir: Annotated[str, typer.Option("-o", "--out", help="Classifier folder.")] = "attribute-classifier",
    epochs: Annotated[int, typer.Option(help="Passes over the training faces.")] = 10,
    limit: Annotated[int | None, typer.Option(help="At most this many faces per dataset.")] = None,
    cache: Annotated[
        str | None, typer.Option(help="Reuse/keep the frozen feature maps in this .npy.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the heads and the batch order.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
) -> None:
    """Train the attribute heads; print held-out accuracy per attribute (majority rate beside it)."""

    def work():
        from rich.table import Table

        from facesmith.evaluate.attributes import AttributeTrainConfig, train_attribute_classifier

        config = AttributeTrainConfig(
            datasets=datasets,
            out_dir=out_dir,
            epochs=epochs,
            limit=limit,
            cache=cache,
            seed=seed,
            device=device,
        )
        with _progress() as bar:
            info = train_attribute_classifier(config, progress=_bar_progress(bar))
        table = Table("attribute", "held-out accuracy", "majority", "faces")
        for name, s in info["held_out"].items():
            table.add_row(name, f"{s['accuracy']:.3f}", f"{s['majority']:.3f}", str(s["count"]))
        out.print(table)
        out.print(out_dir, highlight=False)

    _guarded(work, models=False)


@attributes_app.command("predict")
def attributes_predict(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    classifier: Annotated[str | None, typer.Option(help="Classifier folder [default: shipped].")] = None,
    caption: Annotated[bool, typer.Option("--caption", help="Add a caption written from them.")] = False,
) -> None:
    """Print one JSON line per image: its predicted attributes (and a caption with --caption)."""

    def work():
        import random

        from facesmith.data.captions import caption_from_attributes
        from facesmith.evaluate.attributes import SHIPPED, AttributeClassifier, caption_attributes
        from facesmith.evaluate.faceset import IMAGE_SUFFIXES, RealFace

        files = []
        for path in images:
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif path.is_file():
                files.append(path)
            else:
                raise FacesmithError(f"{path} does not exist")
        model = AttributeClassifier.load(classifier or SHIPPED)
        predicted = model.predict([RealFace(str(p), path=p).image() for p in files])
        for path, attrs in zip(files, predicted, strict=True):
            row = {"file": str(path), "attributes": attrs}
            if caption:
                row["caption"] = caption_from_attributes(caption_attributes(attrs), random.Random(0))
            out.print(json.dumps(row), highlight=False, soft_wrap=True)

    _guarded(work, models=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Every setting is also a flag (--flip / --no-flip for switches; see the README's Training "
    "section). Settings and defaults:  " + flag_summary(),
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
        from facesmith.train.config import TrainConfig, apply_flags, load_train_config
        from facesmith.train.presets import RECIPES
        from facesmith.train.trainer import run_train

        if recipe is not None and recipe not in RECIPES:
            raise FacesmithError(f"unknown recipe {recipe!r}: pick one of {', '.join(RECIPES)}")
        base = load_train_config(config) if config else TrainConfig(**RECIPES.get(recipe, {}))
        settings = apply_flags(base, list(ctx.args)).validate()
        # Under a multi-process launch only the first process draws the bar and names the files.
        quiet = os.environ.get("RANK", "0") != "0"
        with _train_progress(disable=quiet) as bar:
            task = bar.add_task("preparing", total=None)

            def progress(step: int, total: int, logs: dict[str, float]) -> None:
                bar.update(task, description="training", completed=step, total=total, loss=logs["loss"])

            result = run_train(settings, progress=progress)
        if not quiet:
            loss = "" if result.final_loss != result.final_loss else f", last loss {result.final_loss:.4f}"
            err.print(f"trained {result.steps} steps{loss}", highlight=False)
        for path in [] if quiet else result.exports:
            out.print(str(path), highlight=False, soft_wrap=True)

    _guarded(work)


def _train_progress(disable: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(TextColumn):
        def render(self, task) -> Text:
            speed, loss = task.speed, task.fields.get("loss")
            rate = f"{speed:.2f} it/s" if speed else "-- it/s"
            return Text(rate + (f"  loss {loss:.4f}" if loss is not None else ""))

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(""),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=disable,
    )


if __name__ == "__main__":
    main()
