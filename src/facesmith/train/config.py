"""TrainConfig: every setting of `facesmith train`, its documented defaults, validation and TOML form.

Defaults follow what Kohya's sd-scripts and diffusers' `train_text_to_image.py` users expect (AdamW at
1e-4, constant LR, batch 1, fp32 unless asked). The run folder gets `train.toml`, which `--config` reads
back to make the same run again (`TrainConfig.save`/`load`); every field is also a command-line flag
(`facesmith.flags.parse_flags`). The training itself is `trainer.py`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from facesmith.config import StageConfig
from facesmith.errors import FacesmithError

MODES = ("full", "lora", "embedding")  # embedding: textual inversion (train/embedding.py)
OPTIMIZERS = ("adamw", "adamw8bit", "lion", "prodigy")
LR_SCHEDULES = ("constant", "cosine", "linear")
PREDICTIONS = ("epsilon", "v_prediction")
CACHES = ("none", "memory", "disk")
PRECISIONS = ("no", "fp16", "bf16")
# optimizer -> (module to find, pip package): the optional ones `train/optim.py` imports
OPTIMIZER_PACKAGES = {
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "lion": ("lion_pytorch", "lion-pytorch"),
    "prodigy": ("prodigyopt", "prodigyopt"),
}
LORA_TYPES = ("lora", "loha", "lokr")
LOSS_TYPES = ("l2", "huber", "smooth_l1")  # objective.py computes each
HUBER_SCHEDULES = ("constant", "exponential", "snr")  # how Kohya's Huber c varies with t


@dataclass
class TrainConfig(StageConfig):
    """One training run. `model` None with `preset` set trains a preset model from scratch."""

    settings_help: ClassVar[str] = "facesmith train --help"

    # What to train
    dataset: str = ""  # a dataset folder with metadata.jsonl (see README, "Dataset directory")
    output_dir: str = "runs/train"
    model: str | None = None  # any source `facesmith generate --model` takes
    preset: str | None = None  # from-scratch model, e.g. "face-small" (train/presets.py)
    mode: str = "full"  # "full" UNet fine-tune or "lora"
    train_text_encoder: bool = False  # full: train the text encoder too; lora: add LoRA to it
    lora_rank: int = 16
    lora_alpha: float = 16.0  # scale = alpha / rank, as in Kohya and peft
    lora_conv: bool = False  # also 3x3 convs of ResNet/up/down blocks (Kohya's LoCon `conv_dim`)
    allow_pickle: bool = False

    # Data
    resolution: int | None = None  # None: the model's native size
    bucketing: bool = False  # aspect-ratio buckets of about resolution^2 pixels (Kohya)
    bucket_step: int | None = None  # None: 64 px, or 32 below 512 px (dataset.bucket_limits)
    min_bucket_side: int | None = None  # None: resolution / 2 (Kohya's 256 at 512)
    max_bucket_side: int | None = None  # None: 2 x resolution (Kohya's 1024 at 512)
    flip: bool = False  # random horizontal flip (both sides are cached)
    caption_dropout: float = 0.0  # whole caption -> "" (classifier-free guidance)
    caption_shuffle: bool = False  # shuffle comma-separated tags after the first keep_tokens
    keep_tokens: int = 0
    caption_tag_dropout: float = 0.0  # drop each shuffled tag with this probability
    caption_from_attributes: bool = False  # a fresh caption from each face's attributes every time
    cache_latents: str = "memory"  # "none", "memory" or "disk"
    cache_dir: str | None = None  # disk cache; None: OUTPUT_DIR/cache
    cache_text_encoder: bool = True  # when the text encoder is frozen and captions never vary
    max_token_length: int | None = None  # None: 75 (CLIP's 77 with BOS/EOS); 150 or 225 (Kohya, CLIP only)

    # Objective
    prediction_type: str | None = None  # None: the model's scheduler decides
    min_snr_gamma: float = 0.0  # 0: off; 5 is the paper's choice (Hang et al. 2023)
    noise_offset: float = 0.0  # 0.05-0.1 lets a model make darker/brighter images (Guttenberg 2023)
    ema_decay: float = 0.0  # 0: off; e.g. 0.9999

    # Optimisation
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_steps: int = 1000  # optimizer steps; 0: max_epochs decides
    max_epochs: int = 0  # 0: max_steps decides; with both set the first one reached ends the run
    batch_size: int = 1  # per process
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0  # 0: no clipping
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the UNet (Accelerate's inductor backend); pays off on a GPU
    allow_tf32: bool = True  # CUDA: TF32 matmuls and convs for what runs in fp32 (diffusers' --allow_tf32)
    mixed_precision: str | None = None  # None: bf16 on CUDA if supported, else fp32 ("no")
    seed: int = 0
    cpu: bool = False  # train on the CPU even when CUDA is present
    num_processes: int = 1  # >1: relaunch through `accelerate launch`

    # Checkpoints and export
    save_every: int = 500  # steps; the last step is always saved
    keep_checkpoints: int = 2
    resume: str | None = None  # "latest" or a checkpoint folder
    export_single_file: bool = True  # full mode: also OUTPUT_DIR/model.safetensors (original SD layout)

    # Watching
    sample_every: int = 0  # steps; 0: only at the end if sample_prompts is set
    sample_prompts: str | None = None  # Kohya prompt file: "prompt --n neg --s 20 --d 1 --l 7 --w --h"
    sample_sampler: str | None = None  # None: the model's own (Euler a for the default model, else DDIM)
    sample_at_first: bool = True  # a grid at step 0 too, before training changes anything (Kohya)
    log_every: int = 10  # steps between plain progress lines when stderr is not a terminal (or 60 s)
    tensorboard: bool = True

    # Failure handling
    max_bad_steps: int = 5  # consecutive NaN/inf losses before the run stops

    # -- validation, masked loss, prior preservation, learning rates, noise (issue 16)
    validate_every: int = 0  # steps between validation losses on the dataset's split "val" rows; 0: off
    validation_seed: int = 0  # seeds the fixed noise of the validation loss (its own generator)
    mask_dir: str | None = None  # masked loss from PNGs named like the images (white = learn, black = ignore)
    masked_loss: str | None = None  # "face": masked loss on the faces MTCNN finds (facesmith.masks)
    reg_dir: str | None = None  # prior preservation: class images (a folder, a prepare folder, Kohya N_class)
    class_prompt: str | None = None  # caption of reg_dir images without one; with num_class_images: generated
    num_class_images: int = 0  # class images generated by the base model before training (diffusers' 100)
    class_image_steps: int = 20  # sampler steps of each generated class image
    prior_loss_weight: float = 1.0  # loss = instance + prior_loss_weight * prior (DreamBooth)
    unet_lr: float | None = None  # None: learning_rate (Kohya's --unet_lr)
    text_encoder_lr: float | None = None  # None: learning_rate (Kohya's --text_encoder_lr)
    multires_noise_iterations: int = 0  # 0: off; Kohya suggests 6-10
    multires_noise_discount: float = 0.3  # weight of each coarser level (Kohya's default)
    zero_terminal_snr: bool = False  # rescale betas to SNR 0 at t = T (Lin et al. 2023; use v_prediction)
    min_timestep: int = 0  # train on timesteps in [min_timestep, max_timestep) (Kohya)
    max_timestep: int | None = None  # None: the scheduler's num_train_timesteps
    loss_type: str = "l2"  # "l2", "huber" or "smooth_l1" (Kohya's scheduled pseudo-Huber)
    huber_c: float = 0.1  # the Huber threshold c in (0, 1]
    huber_schedule: str = "snr"  # how c varies with t: "constant", "exponential" or "snr" (Kohya's default)

    # -- network types and textual inversion (issue 16)
    lora_type: str = "lora"  # mode lora: "lora", "loha" or "lokr" (LyCORIS types through peft)
    use_dora: bool = False  # mode lora, type lora: DoRA's magnitude vectors (Liu et al. 2024, peft use_dora)
    network_dropout: float = (
        0.0  # dropout on the LoRA path's input (peft lora_dropout, Kohya network_dropout)
    )
    lokr_factor: int = -1  # LoKr: Kronecker factor of each dimension; -1: as square as possible (LyCORIS)
    tokens: list[str] = field(default_factory=list)  # mode embedding: the new tokens, e.g. ["<alice>"]
    num_vectors: int = 1  # vectors per new token (A1111's "number of vectors per token")
    init_word: str = "face"  # each token's vectors start as this word's embedding (mean of its tokens)
    caption_template: str | None = None  # e.g. "a photo of {token}"; {caption} is the image's own caption

    # -- validation prompt set, LoRA block weights (issue 16)
    validation_prompts: str | None = None  # prompt file scored by evaluate's faithfulness rules
    validation_prompt_every: int = 0  # steps between scorings of validation_prompts; 0: the last step only
    attribute_classifier: str | None = None  # classifier folder for validation_prompts; None: the shipped one
    down_lr_weight: list[float] | None = None  # 12 UNet LR multipliers, IN00-IN11 (Kohya; blocks.py)
    mid_lr_weight: float | None = None  # the MID block's
    up_lr_weight: list[float] | None = None  # 12, OUT00-OUT11
    block_dims: list[int] | None = None  # 25 ranks, IN00-IN11, MID, OUT00-OUT11 (0: no module there)
    block_alphas: list[float] | None = None  # 25 alphas; None: lora_alpha

    # ------------------------------------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with every path absolute, so that the `train.toml` it saves reproduces the run from any
        working directory (issue 16 bug 10). A model that is not a path here is left as given."""
        import dataclasses

        def absolute(value: str | None, must_exist: bool = False) -> str | None:
            if value is None or value == "" or (must_exist and not Path(value).expanduser().exists()):
                return value
            return str(Path(value).expanduser().resolve())

        return dataclasses.replace(
            self,
            dataset=absolute(self.dataset),
            output_dir=absolute(self.output_dir),
            model=absolute(self.model, must_exist=True),
            cache_dir=absolute(self.cache_dir),
            sample_prompts=absolute(self.sample_prompts),
            validation_prompts=absolute(self.validation_prompts),
            attribute_classifier=absolute(self.attribute_classifier),
            mask_dir=absolute(self.mask_dir),
            reg_dir=absolute(self.reg_dir),
            resume=self.resume if self.resume in (None, "latest") else absolute(self.resume),
        )

    def validate(self) -> TrainConfig:
        """Raise FacesmithError naming the first setting to fix; return self."""
        choices = {
            "mode": MODES,
            "optimizer": OPTIMIZERS,
            "lr_scheduler": LR_SCHEDULES,
            "cache_latents": CACHES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise FacesmithError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTIONS:
            raise FacesmithError(
                f"prediction_type {self.prediction_type!r} is not one of {', '.join(PREDICTIONS)}"
            )
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise FacesmithError(
                f"mixed_precision {self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if not self.dataset:
            raise FacesmithError("no dataset: pass --dataset DIR (a folder with metadata.jsonl)")
        if self.preset is not None and self.model is not None:
            raise FacesmithError("give either --model (fine-tune) or --preset (from scratch), not both")
        if self.preset is not None and self.mode != "full":
            raise FacesmithError("a preset is trained from scratch: use mode full, not lora")
        if self.max_steps <= 0 and self.max_epochs <= 0:
            raise FacesmithError("set max_steps or max_epochs: the run needs a length")
        positive = ["batch_size", "gradient_accumulation", "lora_rank", "save_every", "log_every"]
        positive += ["max_bad_steps", "num_processes", "bucket_step", "min_bucket_side", "max_bucket_side"]
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FacesmithError(f"{name} {getattr(self, name)} must be at least 1")
        for name in ("max_steps", "max_epochs"):
            if getattr(self, name) < 0:
                raise FacesmithError(f"{name} {getattr(self, name)} must be >= 0 (0: not set)")
        for name in ("caption_dropout", "caption_tag_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise FacesmithError(f"{name} {getattr(self, name)} must lie in [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise FacesmithError(f"ema_decay {self.ema_decay} must lie in [0, 1) (0 turns EMA off)")
        for name in ("learning_rate", "min_snr_gamma", "noise_offset", "max_grad_norm", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise FacesmithError(f"{name} {value} must be a finite number >= 0")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise FacesmithError(f"resolution {self.resolution} must be a positive multiple of 8")
        if self.max_token_length not in (None, 75, 150, 225):
            raise FacesmithError(
                f"max_token_length {self.max_token_length} is not one of 75, 150, 225 (Kohya's choices)"
            )
        if self.sample_prompts is not None and not Path(self.sample_prompts).is_file():
            raise FacesmithError(f"sample prompt file {self.sample_prompts} does not exist")
        from facesmith.samplers import check_sampler
        from facesmith.train.presets import PRESETS

        if self.sample_sampler is not None:
            check_sampler(self.sample_sampler)
        if self.preset is not None and self.preset not in PRESETS:
            raise FacesmithError(f"unknown preset {self.preset!r}: pick one of {', '.join(PRESETS)}")
        if self.keep_checkpoints < 1:
            raise FacesmithError("keep_checkpoints must be at least 1: the last good checkpoint is kept")
        self._validate_issue16()
        self._validate_networks()
        from facesmith.train.blocks import check_block_settings

        check_block_settings(self)
        if self.validation_prompt_every < 0:
            raise FacesmithError(f"validation_prompt_every {self.validation_prompt_every} must be >= 0")
        if self.validation_prompts is not None and not Path(self.validation_prompts).is_file():
            raise FacesmithError(
                f"validation prompt file {self.validation_prompts} does not exist: give a file, one prompt a line"
            )
        self._validate_installed()
        self._validate_files()
        return self

    def _validate_installed(self) -> None:
        """The optimizer's package, found without importing it (bitsandbytes alone takes seconds), so that
        a missing one is told before torch and the model load, not at the first step."""
        import importlib.util

        package = OPTIMIZER_PACKAGES.get(self.optimizer)
        if package and importlib.util.find_spec(package[0]) is None:
            raise FacesmithError(
                f"optimizer {self.optimizer} needs {package[1]}: pip install {package[1]}, or use optimizer adamw"
            )

    def _validate_files(self) -> None:
        # The cheap file checks, before torch is imported (the trainer reads the manifest itself again).
        from facesmith.data.manifest import MANIFEST

        dataset = Path(self.dataset).expanduser()
        if not dataset.is_dir():
            raise FacesmithError(
                f"dataset {self.dataset} is not a folder: pass --dataset DIR with {MANIFEST}"
            )
        if not (dataset / MANIFEST).is_file():
            raise FacesmithError(
                f"dataset {self.dataset} has no {MANIFEST}: make one with `facesmith prepare PHOTOS -o {self.dataset}`"
            )
        if self.model and not Path(self.model).expanduser().exists():
            raise FacesmithError(
                f"model {self.model} does not exist: pass a diffusers folder or a .safetensors file"
            )

    # -- validation, masked loss, prior preservation, learning rates, noise (issue 16)
    def _validate_issue16(self) -> None:
        for name in ("validate_every", "num_class_images", "multires_noise_iterations", "min_timestep"):
            if getattr(self, name) < 0:
                raise FacesmithError(f"{name} {getattr(self, name)} must be >= 0 (0: off)")
        if self.class_image_steps < 1:
            raise FacesmithError(f"class_image_steps {self.class_image_steps} must be at least 1")
        for name, allowed in (("loss_type", LOSS_TYPES), ("huber_schedule", HUBER_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise FacesmithError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.masked_loss not in (None, "face"):
            raise FacesmithError(f'masked_loss {self.masked_loss!r} must be "face" (or set mask_dir instead)')
        if self.masked_loss is not None and self.mask_dir is not None:
            raise FacesmithError('give either mask_dir (mask files) or masked_loss = "face", not both')
        if self.mask_dir is not None and not Path(self.mask_dir).is_dir():
            raise FacesmithError(f"mask_dir {self.mask_dir} is not a folder: give the folder of mask PNGs")
        if self.reg_dir is not None and not Path(self.reg_dir).is_dir():
            raise FacesmithError(f"reg_dir {self.reg_dir} is not a folder: give a folder of class images")
        if self.num_class_images > 0 and not self.class_prompt:
            raise FacesmithError("num_class_images needs class_prompt: the prompt to generate them from")
        if self.num_class_images > 0 and self.reg_dir is not None:
            raise FacesmithError(
                "give either reg_dir (class images) or num_class_images (generated), not both"
            )
        for name in ("prior_loss_weight", "multires_noise_discount", "unet_lr", "text_encoder_lr"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise FacesmithError(f"{name} {value} must be a finite number >= 0")
        if not 0 < self.huber_c <= 1:
            raise FacesmithError(f"huber_c {self.huber_c} must lie in (0, 1] (Kohya's default is 0.1)")
        if self.max_timestep is not None and not self.min_timestep < self.max_timestep:
            raise FacesmithError(
                f"min_timestep {self.min_timestep} must be below max_timestep {self.max_timestep} (max is exclusive)"
            )

    def _validate_networks(self) -> None:
        # -- network types and textual inversion (issue 16)
        if self.lora_type not in LORA_TYPES:
            raise FacesmithError(f"lora_type {self.lora_type!r} is not one of {', '.join(LORA_TYPES)}")
        if self.use_dora and self.lora_type != "lora":
            raise FacesmithError(
                f"use_dora applies to lora_type lora, not {self.lora_type}: drop one of them"
            )
        if not 0 <= self.network_dropout < 1:
            raise FacesmithError(f"network_dropout {self.network_dropout} must lie in [0, 1)")
        if self.lokr_factor == 0 or self.lokr_factor < -1:
            raise FacesmithError(f"lokr_factor {self.lokr_factor} must be -1 (automatic) or at least 1")
        if self.mode != "embedding":
            if self.tokens:
                raise FacesmithError(
                    'tokens are trained by mode embedding: set mode = "embedding" or drop tokens'
                )
            return
        if not self.tokens:
            raise FacesmithError(
                'mode embedding needs the new tokens: e.g. tokens = ["<alice>"] (--tokens "<alice>")'
            )
        for token in self.tokens:
            if not token.strip() or any(c.isspace() for c in token) or "{" in token or "," in token:
                raise FacesmithError(
                    f'token {token!r} must be one word without spaces, commas or braces, e.g. "<alice>"'
                )
        if len(set(self.tokens)) < len(self.tokens):
            raise FacesmithError(f"tokens {self.tokens} name one token twice")
        if self.num_vectors < 1:
            raise FacesmithError(f"num_vectors {self.num_vectors} must be at least 1")
        if not self.init_word.strip():
            raise FacesmithError('init_word is empty: give a word close to what the token means, e.g. "face"')
        if self.caption_template is not None and "{token}" not in self.caption_template:
            raise FacesmithError(
                f'caption_template {self.caption_template!r} has no {{token}}: e.g. "a photo of {{token}}"'
            )
        if self.train_text_encoder:
            raise FacesmithError("mode embedding trains only the new tokens: set train_text_encoder = false")
