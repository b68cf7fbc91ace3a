"""LoRA block weights: Kohya's per-block learning rates and ranks of the UNet's LoRA modules.

sd-scripts' `networks/lora.py` numbers the UNet in 25 blocks as the original (SGM) layout does: IN00-IN11
(`input_blocks.N`), MID (`middle_block`) and OUT00-OUT11 (`output_blocks.N`); SDXL uses IN00-IN08 and
OUT00-OUT08 of them. Its network args, here TrainConfig fields, set per block:

- `down_lr_weight` (12 values), `mid_lr_weight` (1) and `up_lr_weight` (12): multipliers of the UNet's
  learning rate for the modules of each block (optimizer param groups, `optim.param_groups`). Kohya
  creates no module where the weight is 0; here such modules are not made either.
- `block_dims` and `block_alphas` (25 values each): the rank and alpha of each block's modules, through
  peft's `rank_pattern` / `alpha_pattern` (a rank of 0: no module there). The export writes each
  module's own rank (its tensors' shapes) and alpha (export.py), as Kohya's files carry them.

Diffusers module names are mapped to original ones by `facesmith.models.sd_layout.unet_to_original`, so
the block of a module is the one Kohya gives it for SD 1.x, 2.x and SDXL alike. The text encoders'
modules have no blocks (as in Kohya).
"""

from __future__ import annotations

import re

from facesmith.errors import FacesmithError

IN_BLOCKS, BLOCKS = 12, 25  # sd-scripts LoRANetwork.NUM_OF_BLOCKS, and IN + MID + OUT
MID = IN_BLOCKS


def uses_blocks(config) -> bool:
    return any(
        getattr(config, name) is not None
        for name in ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_dims", "block_alphas")
    )


def check_block_settings(config) -> None:
    """FacesmithError naming the first block setting of the wrong length or sign."""
    if not uses_blocks(config):
        return
    if config.mode != "lora":
        raise FacesmithError("block weights and block_dims shape a LoRA: use mode lora, or drop them")
    lengths = {
        "down_lr_weight": IN_BLOCKS,
        "up_lr_weight": IN_BLOCKS,
        "block_dims": BLOCKS,
        "block_alphas": BLOCKS,
    }
    for name, length in lengths.items():
        values = getattr(config, name)
        if values is None:
            continue
        if len(values) != length or any(v < 0 for v in values):
            raise FacesmithError(
                f"{name} needs {length} numbers >= 0 (Kohya's {'IN00-IN11' if length == IN_BLOCKS else 'IN00-IN11, MID, OUT00-OUT11'}), got {len(values)}: {values}"
            )
    if config.mid_lr_weight is not None and config.mid_lr_weight < 0:
        raise FacesmithError(f"mid_lr_weight {config.mid_lr_weight} must be >= 0")
    if config.block_dims is not None and any(v != int(v) for v in config.block_dims):
        raise FacesmithError(f"block_dims are ranks: whole numbers, got {config.block_dims}")


def block_index(original_name: str) -> int | None:
    """Kohya's block (0-24) of a UNet module under its original name; None outside the 25 blocks."""
    found = re.match(r"(input_blocks|middle_block|output_blocks)\.?(\d*)", original_name)
    if found is None:
        return None
    kind, number = found.groups()
    if kind == "middle_block":
        return MID
    return int(number) if kind == "input_blocks" else MID + 1 + int(number)


def blocks_of(unet, targets: list[str]) -> dict[str, int | None]:
    """{diffusers module name: Kohya block} for LoRA targets of `unet`."""
    from facesmith.models.sd_layout import UNET_PREFIX, unet_to_original

    original = unet_to_original({f"{name}.weight": None for name in targets}, unet.config)
    return {name: block_index(key[len(UNET_PREFIX) :]) for name, key in zip(targets, original, strict=True)}


def lr_weights(config) -> list[float]:
    """The 25 blocks' learning-rate multipliers (1 where unset)."""
    down = config.down_lr_weight or [1.0] * IN_BLOCKS
    up = config.up_lr_weight or [1.0] * IN_BLOCKS
    mid = 1.0 if config.mid_lr_weight is None else config.mid_lr_weight
    return [float(v) for v in [*down, mid, *up]]


def block_layout(
    unet, targets: list[str], config
) -> tuple[list[str], dict[str, int], dict[str, float], dict[str, float]]:
    """(targets kept, peft rank_pattern, alpha_pattern, {target: lr multiplier}) under the block settings.

    A target whose block has rank 0 or learning-rate weight 0 is dropped, as Kohya makes no module there.
    """
    weights = lr_weights(config)
    kept, ranks, alphas, multipliers = [], {}, {}, {}
    for name, block in blocks_of(unet, targets).items():
        rank = (
            config.lora_rank if block is None or config.block_dims is None else int(config.block_dims[block])
        )
        weight = 1.0 if block is None else weights[block]
        if rank == 0 or weight == 0:
            continue
        kept.append(name)
        key = re.escape(name)  # peft matches pattern keys as regular expressions
        if rank != config.lora_rank:
            ranks[key] = rank
        if block is not None and config.block_alphas is not None:
            alphas[key] = float(config.block_alphas[block])
        if weight != 1.0:
            multipliers[name] = weight
    if not kept:
        raise FacesmithError(
            "block_dims / lr weights leave no UNet block with a LoRA module: raise one above 0"
        )
    return kept, ranks, alphas, multipliers
