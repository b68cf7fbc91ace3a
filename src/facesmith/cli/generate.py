"""`facesmith generate` (txt2img, img2img, inpainting), `noise` (the forward process), `samplers`, `info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

# Config dataclasses only, so `--help` stays fast and can quote their defaults.
from facesmith.cli.app import app, stage_config
from facesmith.config import MAX_STEPS, GenerateConfig, NoiseConfig
from facesmith.errors import FacesmithError
from facesmith.library_logs import quiet_libraries
from facesmith.terminal import Bars, guarded, out


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
    embedding: Annotated[
        list[str] | None,
        typer.Option(help="Textual-inversion FILE (A1111/diffusers); the prompt calls it by name; repeat."),
    ] = None,
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
        typer.Option(
            help="What the masked area starts from: original, latent noise or fill [default: original]."
        ),
    ] = None,
    detail_faces: Annotated[
        bool | None,
        typer.Option("--detail-faces", help="Then repaint each detected face at full size (ADetailer)."),
    ] = None,
    detail_confidence: Annotated[
        float | None, typer.Option(help="--detail-faces: MTCNN score a face needs [default: 0.7].")
    ] = None,
    detail_max_faces: Annotated[
        int | None, typer.Option(help="--detail-faces: only the N largest faces; 0 = all [default: 0].")
    ] = None,
    detail_padding: Annotated[
        int | None, typer.Option(help="--detail-faces: pixels around the face in its crop [default: 32].")
    ] = None,
    detail_size: Annotated[
        int | None, typer.Option(help="--detail-faces: side the crop is repainted at [default: native].")
    ] = None,
    detail_strength: Annotated[
        float | None, typer.Option(help="--detail-faces: denoising strength of the face [default: 0.4].")
    ] = None,
    detail_prompt: Annotated[
        str | None, typer.Option(help="--detail-faces: the face's own prompt [default: the prompt].")
    ] = None,
    detail_negative: Annotated[
        str | None, typer.Option(help="--detail-faces: the face's negative prompt [default: --negative].")
    ] = None,
    detail_steps: Annotated[
        int | None, typer.Option(help="--detail-faces: steps of the face pass [default: --steps].")
    ] = None,
    detail_lora: Annotated[
        str | None, typer.Option(help="--detail-faces: a LoRA FILE[:WEIGHT] for the face pass only.")
    ] = None,
) -> None:
    """Generate face images from a text prompt, or from an image (--init) and a mask (--mask); each PNG
    carries its recipe."""

    def work():
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
            "loras": lora or None, "embeddings": embedding or None, "vae": vae, "out_dir": out_dir, "device": device, "dtype": dtype, "trace": trace,
            "allow_pickle": allow_pickle, "init_image": _absolute(init), "strength": strength,
            "resize_mode": resize_mode, "mask": _absolute(mask) if mask and Path(mask).is_file() else mask,
            "mask_blur": mask_blur,
            "mask_invert": invert_mask, "inpaint_full_res": only_masked, "inpaint_full_res_padding": padding,
            "masked_content": masked_content,
            "detail_faces": detail_faces, "detail_confidence": detail_confidence,
            "detail_max_faces": detail_max_faces, "detail_padding": detail_padding, "detail_size": detail_size,
            "detail_strength": detail_strength, "detail_prompt": detail_prompt,
            "detail_negative": detail_negative, "detail_steps": detail_steps,
            "detail_lora": detail_lora,
        }  # fmt: skip
        base = config_from_png(from_image) if from_image is not None else None
        made_with = model_hash_from_png(from_image) if from_image is not None else None
        settings = stage_config(GenerateConfig, config, given, base=base).validate()
        # Only now torch and the model code (2-3 s of imports): a bad input has already been told.
        quiet_libraries()
        from facesmith.generate import run_generate

        with Bars() as bars:
            paths = run_generate(settings, progress=bars, made_with=made_with)
        for path in paths:
            out.print(str(path), highlight=False)

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
        from facesmith.noise import run_noise

        given = {
            "image": str(image), "steps": steps, "model": model, "seed": seed, "out_dir": out_dir,
            "device": device, "dtype": dtype, "allow_pickle": allow_pickle,
        }  # fmt: skip
        with Bars() as bars:
            path = run_noise(stage_config(NoiseConfig, None, given), progress=bars)
        out.print(str(path), highlight=False)

    guarded(work)
