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
  diffusers' `load_lora_weights` reads it.
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

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from facesmith.errors import FacesmithError
from facesmith.models.loading import non_finite
from facesmith.train.config import TrainConfig
from facesmith.train.model import TrainModel
from facesmith.train.objective import sampling_schedule

ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sdxl": "stable-diffusion-xl-v1-base",
}
BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}  # Kohya's ss_base_model_version


def run_name(output_dir: Path) -> str:
    """What a run's exports are called: its output folder's name (`runs/alice` -> `alice.safetensors`),
    so LoRAs of different runs never share a file name (serve and A1111 list LoRAs by name)."""
    return Path(output_dir).resolve().name or "lora"


def step_name(output_dir: Path, step: int) -> str:
    """An intermediate export's name, as Kohya's `--save_every_n_steps` names it: NAME-step00000600."""
    return f"{run_name(output_dir)}-step{step:08d}"


def architecture(family: str) -> tuple[str, str]:
    """(Kohya's ss_base_model_version, modelspec.architecture base) of a model family; a preset (the
    embedded default model is `preset:face-small`) is no Stable Diffusion and is named as itself."""
    if family.startswith("preset:"):
        preset = family.split(":", 1)[1]
        return f"facesmith_{preset}", f"facesmith-{preset}"
    return BASE_VERSIONS.get(family, family), ARCHITECTURES.get(family, family)


# peft's parameter names of each network type -> the LyCORIS / Kohya names A1111 and ComfyUI read.
LYCORIS_NAMES = {
    "lora": {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"},
    "loha": {n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    "lokr": {n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}


def kohya_lora_state(model: TrainModel, alpha: float, lora_type: str = "lora") -> dict[str, torch.Tensor]:
    """The adapter layers of the UNet (and text encoder) under Kohya's module names and LyCORIS's tensor
    names: `lora_down`/`lora_up` (+ `dora_scale`), `hada_w1_a`..., or `lokr_w1`/`lokr_w2_a`...; `alpha`.

    DoRA: peft keeps one magnitude per output feature (`lora_magnitude_vector`); it is written as
    LyCORIS's output-axis `dora_scale` of shape (out, 1) or (out, 1, 1, 1), which ComfyUI tells from the
    input-axis form by its first dimension and diffusers' Kohya converter maps back to peft's magnitude.
    LoKr with neither factor split: ComfyUI then applies no alpha / rank, so peft's scale is baked into
    `lokr_w1`.
    """
    from peft import get_peft_model_state_dict

    state = {}
    pipe, sdxl = model.pipe, model.family == "sdxl"
    parts = [("lora_unet_", pipe.unet, model.unet_lora)]
    if sdxl:  # Kohya's SDXL text encoder prefixes (sd-scripts networks/lora.py LORA_PREFIX_TEXT_ENCODER1/2)
        parts += [("lora_te1_", pipe.text_encoder, model.text_lora)]
        parts += [("lora_te2_", pipe.text_encoder_2, model.text_lora_2)]
    else:
        parts.append(("lora_te_", pipe.text_encoder, model.text_lora))
    names = LYCORIS_NAMES[lora_type]
    for prefix, module, targets in parts:
        if not targets:
            continue
        layers = get_peft_model_state_dict(module)
        # Kohya's SDXL UNet is the original SGM one (sdxl_original_unet.py): its LoRAs name UNet layers as
        # `input_blocks.4.1...`, where SD 1.x files use diffusers' module names.
        sgm = _sgm_names(pipe.unet, targets) if sdxl and prefix == "lora_unet_" else {}
        for name in targets:
            # Kohya names CLIP layers from `text_model.`, which transformers 5 models may not have.
            text = prefix.startswith("lora_te")
            written = f"text_model.{name.removeprefix('text_model.')}" if text else sgm.get(name, name)
            key = prefix + written.replace(".", "_")
            tensors = {
                ours: layers[f"{name}.{theirs}"]
                for theirs, ours in names.items()
                if f"{name}.{theirs}" in layers
            }
            own_alpha = _alpha_of(module, name, alpha)  # block_alphas give modules their own
            if lora_type == "lokr" and "lokr_w1" in tensors and "lokr_w2" in tensors:
                tensors["lokr_w1"] = tensors["lokr_w1"] * (own_alpha / _rank_of(module, name))
            magnitude = layers.get(f"{name}.lora_magnitude_vector")
            if magnitude is not None:
                out_features = tensors["lora_up.weight"].shape[0]
                tensors["dora_scale"] = magnitude.reshape(
                    out_features, *[1] * (tensors["lora_up.weight"].dim() - 1)
                )
            for suffix, tensor in tensors.items():
                state[f"{key}.{suffix}"] = tensor.detach().cpu().contiguous()
            state[f"{key}.alpha"] = torch.tensor(float(own_alpha))
    return state


def _sgm_names(unet, targets: list[str]) -> dict[str, str]:
    """diffusers UNet module names -> the original (SGM) layout's, through `sd_layout.unet_to_original`."""
    from facesmith.models.sd_layout import UNET_PREFIX, unet_to_original

    original = unet_to_original({f"{name}.weight": None for name in targets}, unet.config)
    return {
        name: key[len(UNET_PREFIX) : -len(".weight")] for name, key in zip(targets, original, strict=True)
    }


def _alpha_of(module: torch.nn.Module, name: str, default: float) -> float:
    """The alpha peft gave a layer (`alpha_pattern`), LoRA's `lora_alpha` or LyCORIS's `alpha`."""
    layer = module.get_submodule(name)
    alphas = getattr(layer, "lora_alpha", None) or getattr(layer, "alpha", None) or {}
    return float(alphas.get("default", default)) if isinstance(alphas, dict) else default


def _rank_of(module: torch.nn.Module, name: str) -> int:
    return int(module.get_submodule(name).r["default"])


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """FacesmithError, before anything is written to `path`, when any of `tensors` holds NaN or inf."""
    bad = non_finite(tensors)
    if bad:
        raise FacesmithError(
            f"the trained weights hold NaN or inf in {len(bad)} tensors (e.g. {bad[0]}), so {path} was not "
            "written: the run diverged; train again from an earlier checkpoint (--resume FOLDER) with a "
            "lower learning_rate or max_grad_norm"
        )


def kohya_metadata(model: TrainModel, config: TrainConfig, info: dict[str, Any]) -> dict[str, str]:
    """Kohya's `ss_*` keys and the model-spec keys it writes (all values are strings)."""
    resolution = info.get("resolution", config.resolution)
    now = datetime.datetime.now(datetime.timezone.utc)
    v2 = model.family == "sd2"
    version, arch = architecture(model.family)
    name = info.get("name", "lora")
    metadata = {
        "ss_network_module": "networks.lora" if config.lora_type == "lora" else "lycoris.kohya",
        "ss_network_dim": str(config.lora_rank),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_network_args": network_args(config),
        "ss_network_dropout": str(config.network_dropout or None),
        "ss_base_model_version": version,
        "ss_v2": str(v2),
        "ss_v_parameterization": str(model.prediction_type == "v_prediction"),
        "ss_sd_model_name": model.base_name,
        "ss_new_sd_model_hash": str(model.base_hash),  # sha256, as Kohya's ss_new_sd_model_hash
        "ss_sd_model_hash": str(model.base_hash and model.base_hash[:10]),  # A1111's AutoV2 short hash
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(config.bucketing),
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.learning_rate),
        "ss_text_encoder_lr": str(config.learning_rate if config.train_text_encoder else 0),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": config.optimizer,
        "ss_max_train_steps": str(info.get("total_steps", config.max_steps)),
        "ss_steps": str(info.get("step", 0)),
        "ss_epoch": str(info.get("epoch", 0)),
        "ss_num_train_images": str(info.get("images", 0)),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_mixed_precision": str(info.get("mixed_precision", config.mixed_precision)),
        "ss_seed": str(config.seed),
        "ss_min_snr_gamma": str(config.min_snr_gamma or None),
        "ss_noise_offset": str(config.noise_offset or None),
        "ss_caption_dropout_rate": str(config.caption_dropout),
        "ss_shuffle_caption": str(config.caption_shuffle),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_flip_aug": str(config.flip),
        "ss_cache_latents": str(config.cache_latents != "none"),
        "ss_training_started_at": str(info.get("started_at", now.timestamp())),
        "ss_training_finished_at": str(now.timestamp()),
        "ss_output_name": name,
        "ss_training_comment": "facesmith train",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if model.prediction_type == "v_prediction" else "epsilon",
    }
    return metadata


def network_args(config: TrainConfig) -> str:
    """Kohya's `ss_network_args` JSON: LoCon's conv_dim, LyCORIS's algo (and LoKr factor), DoRA's dora_wd."""
    args: dict[str, Any] = {}
    if config.lora_type != "lora":
        args["algo"] = config.lora_type
        if config.lora_type == "lokr":
            args["factor"] = config.lokr_factor
    if config.lora_conv:
        args.update(conv_dim=config.lora_rank, conv_alpha=config.lora_alpha)
    if config.use_dora:
        args["dora_wd"] = True
    # Kohya's block network args, as its --network_args strings ("1,1,0.5,...").
    for name in ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_dims", "block_alphas"):
        value = getattr(config, name)
        if value is not None:
            args[name] = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
    return json.dumps(args) if args else "null"


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
