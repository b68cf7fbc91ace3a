"""`facesmith evaluate` and `facesmith attributes train|predict` (the attribute classifier)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from facesmith.cli.app import app, stage_config
from facesmith.terminal import Bars, guarded, out


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
    identity: Annotated[
        bool | None,
        typer.Option(
            "--identity/--no-identity",
            help="Also audit memorization in face-identity space (needs facesmith[identity]) [default: off].",
        ),
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
            "loras": lora or None, "audit": audit, "identity": identity, "device": device,
        }  # fmt: skip
        settings = stage_config(EvaluateConfig, config, given)
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
    fine_tune: Annotated[
        float | None,
        typer.Option(
            "--fine-tune",
            metavar="MINUTES",
            help="Then train backbone and heads together for this long (the shipped recipe) [default: 0].",
        ),
    ] = None,
) -> None:
    """Train the attribute heads (and, with --fine-tune, the backbone); print held-out rates per attribute."""

    def work():
        from rich.table import Table

        from facesmith.evaluate.attributes import AttributeTrainConfig, train_attribute_classifier

        given = {
            "datasets": datasets, "out_dir": out_dir, "epochs": epochs, "limit": limit, "cache": cache,
            "seed": seed, "device": device, "fine_tune_minutes": fine_tune,
        }  # fmt: skip
        config = stage_config(AttributeTrainConfig, None, given)
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
