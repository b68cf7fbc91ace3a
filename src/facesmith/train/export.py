"""Trained weights as files the ecosystem loads: diffusers folders, single files, Kohya LoRAs.

- Full fine-tunes of SD models: `OUTPUT_DIR/model/` (diffusers `save_pretrained`) and, for SD 1.x and
  SDXL, `OUTPUT_DIR/model.safetensors` in the original layout (`facesmith.models.sd_layout.save_original`),
  which AUTOMATIC1111, ComfyUI and facesmith's single-file loader read. Its scheduler config samples as
  the model was trained (zero terminal SNR: `objective.sampling_schedule`).
- Preset models (MiniLM + TAEF2): `OUTPUT_DIR/model/` in the default model's layout (sha256-checked fp16
  UNet shards + `unet.json`), which `facesmith.models.default_model.build_default_pipeline` loads.
- LoRA: `OUTPUT_DIR/NAME.safetensors` (NAME: the output folder's name) in Kohya's format, as `networks/lora.py` of sd-scripts saves it:
  `lora_unet_<diffusers module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (and
  `lora_te_text_model_...` for the text encoder; SDXL files as sd-scripts' `sdxl_train_network.py` writes
  them: UNet layers under the original SGM names, `lora_unet_input_blocks_4_1_...`, and the two text
  encoders as `lora_te1_text_model_...` / `lora_te2_text_model_...`), with Kohya's `ss_*` training metadata and the
  Stability AI model-spec (`modelspec.*`) keys, which name the real base model (family, name, sha256).
  diffusers' `load_lora_weights` reads it. The names and metadata are `kohya_file.py`'s.
- Textual inversion (mode embedding): `OUTPUT_DIR/NAME.safetensors` (with several tokens one file per
  token, `NAME-<token>.safetensors`) in the form AUTOMATIC1111 writes and reads, and diffusers'
  `load_textual_inversion` takes: one tensor `emb_params` of shape (vectors, width), with A1111's `.pt`
  fields as metadata (`name`: the token, `step`, `sd_checkpoint`, `sd_checkpoint_name`). A1111 invokes an
  embedding by its file name; `facesmith generate --embedding` by the recorded `name` (the token trained).
- At every checkpoint save before the last, the same export under the step's name, as Kohya saves:
  `NAME-step00000600.safetensors` (LoRA) or the folder `NAME-step00000600/` (full).

Nothing is written from weights that hold NaN or inf (a diverged run, or a corrupt EMA): such a file loads
everywhere and makes black images, so it is a FacesmithError instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.models.loading import non_finite
from facesmith.train.config import TrainConfig
from facesmith.train.kohya_file import architecture, kohya_lora_state, kohya_metadata
from facesmith.train.model import TrainModel
from facesmith.train.objective import sampling_schedule


def run_name(output_dir: Path) -> str:
    """What a run's exports are called: its output folder's name (`runs/alice` -> `alice.safetensors`),
    so LoRAs of different runs never share a file name (serve and A1111 list LoRAs by name)."""
    return Path(output_dir).resolve().name or "lora"


def step_name(output_dir: Path, step: int) -> str:
    """An intermediate export's name, as Kohya's `--save_every_n_steps` names it: NAME-step00000600."""
    return f"{run_name(output_dir)}-step{step:08d}"


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """FacesmithError, before anything is written to `path`, when any of `tensors` holds NaN or inf."""
    bad = non_finite(tensors)
    if bad:
        raise FacesmithError(
            f"the trained weights hold NaN or inf in {len(bad)} tensors (e.g. {bad[0]}), so {path} was not "
            "written: the run diverged; train again from an earlier checkpoint (--resume FOLDER) with a "
            "lower learning_rate or max_grad_norm"
        )


def export_kohya_lora(model: TrainModel, config: TrainConfig, path: Path, info: dict[str, Any]) -> Path:
    """Write the LoRA as a Kohya `.safetensors` with ss_*/modelspec metadata and Kohya's hashes."""
    from safetensors.torch import save, save_file

    state = kohya_lora_state(model, config.lora_alpha, config.lora_type)
    check_finite(state, path)
    metadata = kohya_metadata(model, config, {"name": path.stem, **info})
    # Kohya's sshs_model_hash (addnet_hash_safetensors): sha256 of the tensor bytes after the header.
    blob = save(state)
    header = int.from_bytes(blob[:8], "little")
    metadata["sshs_model_hash"] = hashlib.sha256(blob[8 + header :]).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def export_embeddings(model: TrainModel, config: TrainConfig, path: Path, info: dict[str, Any]) -> list[Path]:
    """Write each trained token as an A1111 embedding file: `path` for one token, `path`-TOKEN for more."""
    from safetensors.torch import save_file

    from facesmith.train.embedding import trained_tokens

    vectors = trained_tokens(model.pipe, config.tokens, config.num_vectors)
    written = []
    for token, tensor in vectors.items():
        slug = "".join(c for c in token if c.isalnum() or c in "-_") or "token"
        target = path if len(vectors) == 1 else path.with_name(f"{path.stem}-{slug}{path.suffix}")
        check_finite({token: tensor}, target)
        metadata = {
            "name": token,
            "step": str(info.get("step", 0)),
            "sd_checkpoint": str(model.base_hash and model.base_hash[:10]),
            "sd_checkpoint_name": model.base_name,
            "modelspec.architecture": f"{architecture(model.family)[1]}/textual-inversion",
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({"emb_params": tensor}, str(target), metadata=metadata)
        written.append(target)
    return written


def export_full(
    model: TrainModel,
    config: TrainConfig,
    output_dir: Path,
    info: dict[str, Any],
    *,
    name: str = "model",
    single_file: bool = True,
) -> list[Path]:
    """The trained pipeline as a diffusers folder `output_dir/name` (+ `name.safetensors`), or in the
    default model's layout."""
    pipe = model.pipe
    folder = output_dir / name
    trained = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    if config.train_text_encoder:
        for part in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, part, None) is not None:
                trained.update({f"{part}.{k}": v for k, v in getattr(pipe, part).state_dict().items()})
    check_finite(trained, folder)
    # The pipeline samples with the schedule the model was trained for (with zero terminal SNR: its
    # rescaled betas and trailing timesteps, objective.sample_as_trained).
    pipe.scheduler.register_to_config(prediction_type=model.prediction_type, **sampling_schedule(config))
    if model.family.startswith("preset:"):
        from facesmith.models.shards import save_sharded

        half = {k: v.half() for k, v in pipe.unet.state_dict().items()}
        check_finite(half, folder)  # past fp16's 65504 a weight becomes inf
        unet_config = {k: v for k, v in dict(pipe.unet.config).items() if not k.startswith("_")}
        if info.get("resolution"):  # the native size of the exported model is the one it was trained at
            unet_config["sample_size"] = info["resolution"] // pipe.vae_scale_factor
        save_sharded(
            half,
            folder,
            "unet",
            extra={
                "unet_config": unet_config,
                "scheduler_config": {
                    k: pipe.scheduler.config[k]
                    for k in (
                        "num_train_timesteps",
                        "beta_start",
                        "beta_end",
                        "beta_schedule",
                        "prediction_type",
                    )
                }
                | sampling_schedule(config),
                "latent_scale": pipe.vae.config.scaling_factor,
                "resolution": info.get("resolution"),
                "step": info.get("step"),
                "preset": model.family.split(":", 1)[1],
            },
        )
        return [folder]
    pipe.save_pretrained(folder, safe_serialization=True)
    for part in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, part, None) is not None:
            write_bpe_files(getattr(pipe, part), folder / part)
    written = [folder]
    if single_file and config.export_single_file and model.family in ("sd1", "sdxl"):
        from facesmith.models.sd_layout import save_original

        path = output_dir / f"{name}.safetensors"
        save_original(pipe, path, v_prediction=model.prediction_type == "v_prediction")
        written.append(path)
    return written


def write_bpe_files(tokenizer, folder: Path) -> None:
    """Add `vocab.json` and `merges.txt` beside a saved CLIP tokenizer.

    transformers 5 saves only `tokenizer.json`; transformers 4 (inside facesmith's own `>=4.40`), and
    diffusers on it, open a CLIP tokenizer folder through the slow tokenizer's two files, and fail with a
    None path without them. Both are written from the fast tokenizer's own BPE model, so they are the
    vocabulary the model was trained with.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# What the trainer calls.


def export_info(state, total: int, images: list, resolution: int, precision: str) -> dict:
    """The training facts an export records (Kohya's `ss_*` metadata)."""
    return {
        "resolution": resolution,
        "step": state.step,
        "epoch": state.data.epoch,
        "total_steps": total,
        "images": sum(image.repeats for image in images),  # Kohya's ss_num_train_images counts repeats
        "mixed_precision": precision,
        "started_at": state.started_at,
    }


def export_run(model, config, out: Path, info: dict, *, params=None, ema=None, step=None) -> None:
    """The run's export, or with `step` the one named by that step (with the EMA weights swapped in for
    it, and the training weights back after); full-model step folders are kept as checkpoints are."""
    import shutil

    name = run_name(out) if step is None else step_name(out, step)
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        if config.mode == "lora":
            export_kohya_lora(model, config, out / f"{name}.safetensors", info)
        elif config.mode == "embedding":
            export_embeddings(model, config, out / f"{name}.safetensors", info)
        elif step is None:
            export_full(model, config, out, info)
        else:
            export_full(model, config, out, info, name=name, single_file=False)
            pattern = f"{run_name(out)}-step" + "[0-9]" * 8
            folders = sorted(p for p in out.glob(pattern) if p.is_dir())
            for old in folders[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if ema is not None:
            ema.restore(params)
