"""LoRA block weights: Kohya's block numbering, per-block ranks and alphas in the export, per-block LRs."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import factory
from facesmith.errors import FacesmithError
from facesmith.train.blocks import block_index, blocks_of
from facesmith.train.config import TrainConfig
from facesmith.train.model import UNET_BLOCKS, build_model, lora_targets
from facesmith.train.optim import param_groups
from facesmith.train.trainer import run_train

MID, OUT = 12, 13  # Kohya's MID block and OUT00


def test_blocks_are_numbered_as_kohyas_in_mid_and_out_blocks():
    assert block_index("input_blocks.4.1.transformer_blocks.0.attn1.to_q") == 4
    assert block_index("middle_block.1.proj_in") == MID
    assert block_index("output_blocks.11.1.proj_out") == OUT + 11
    assert block_index("time_embed.0") is None
    unet = factory.tiny_sd15().unet  # one layer per block: IN01 holds down_blocks.0's attention
    blocks = blocks_of(unet, lora_targets(unet, UNET_BLOCKS))
    assert blocks["down_blocks.0.attentions.0.proj_in"] == 1
    assert blocks["mid_block.attentions.0.proj_in"] == MID
    assert blocks["up_blocks.1.attentions.1.proj_in"] == OUT + 3


def _block_settings() -> dict:
    dims = [4] * 25
    dims[1], dims[MID], dims[OUT + 2] = 2, 0, 3  # IN01 rank 2, no MID modules, OUT02 rank 3
    alphas = [1.0] * 25
    alphas[OUT + 3] = 3.0
    up = [1.0] * 12
    up[3] = 0.5  # OUT03 learns at half the rate
    return dict(
        mode="lora", lora_rank=4, lora_alpha=1.0, block_dims=dims, block_alphas=alphas, up_lr_weight=up
    )


def test_block_ranks_alphas_and_learning_rates_reach_the_export_and_the_optimizer(
    faces, sd15_folder, tmp_path
):
    from diffusers import StableDiffusionPipeline

    from facesmith.models.lora import LoraSpec, apply_loras

    settings = dict(_block_settings(), dataset=str(faces), model=str(sd15_folder), resolution=64,
                    batch_size=2, tensorboard=False, max_steps=2, learning_rate=1e-2)  # fmt: skip
    run = tmp_path / "run"
    path = run_train(TrainConfig(**settings, output_dir=str(run))).exports[0]
    state = load_file(path)
    with safe_open(path, "pt") as handle:
        args = handle.metadata()["ss_network_args"]
    ranks = {k.rsplit(".", 2)[0]: t.shape[0] for k, t in state.items() if k.endswith(".lora_down.weight")}
    alphas = {k.rsplit(".", 1)[0]: t.item() for k, t in state.items() if k.endswith(".alpha")}
    assert not [m for m in ranks if "mid_block" in m]
    assert {r for m, r in ranks.items() if "down_blocks_0_attentions_0" in m} == {2}
    assert {r for m, r in ranks.items() if "up_blocks_1_attentions_0" in m} == {3}
    assert {r for m, r in ranks.items() if "up_blocks_1_attentions_1" in m} == {4}
    assert {a for m, a in alphas.items() if "up_blocks_1_attentions_1" in m} == {3.0}
    assert {a for m, a in alphas.items() if "up_blocks_1_attentions_0" in m} == {1.0}
    assert '"block_dims": "4,2,4,4' in args and '"up_lr_weight": "1,1,1,0.5,' in args

    # The optimizer's groups: OUT03's tensors at half the UNet's rate, all others at it.
    model = build_model(TrainConfig(**settings))
    groups = {
        g["name"]: g for g in param_groups(model.trainable(), TrainConfig(**settings), model.lr_multipliers)
    }
    assert set(groups) == {"unet", "unet*0.5"} and groups["unet*0.5"]["lr"] == pytest.approx(5e-3)
    half = {id(p) for p in groups["unet*0.5"]["params"]}
    names = [n for n, p in model.trainable() if id(p) in half]
    assert names and all("up_blocks.1.attentions.1." in n for n in names)

    # Mixed ranks load in diffusers and in facesmith, to the same image.
    prompt = dict(prompt="a face", num_inference_steps=2, output_type="latent", width=64, height=64)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(sd15_folder), safety_checker=None, local_files_only=True
    )
    before = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(path))
    after = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    ours = StableDiffusionPipeline.from_pretrained(
        str(sd15_folder), safety_checker=None, local_files_only=True
    )
    apply_loras(ours, [LoraSpec(path, 1.0)])
    again = ours(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert not torch.allclose(before, after)
    torch.testing.assert_close(again, after)


def test_a_zero_lr_weight_makes_no_modules_and_bad_block_settings_are_one_line(sd15_folder):
    down = [1.0] * 12
    down[1] = 0.0
    model = build_model(TrainConfig(model=str(sd15_folder), mode="lora", lora_rank=2, down_lr_weight=down))
    assert model.unet_lora and not [t for t in model.unet_lora if t.startswith("down_blocks.0.")]
    with pytest.raises(FacesmithError, match="block_dims needs 25 numbers >= 0"):
        TrainConfig(dataset="d", mode="lora", block_dims=[4] * 12).validate()
    with pytest.raises(FacesmithError, match="block weights and block_dims shape a LoRA: use mode lora"):
        TrainConfig(dataset="d", up_lr_weight=[1.0] * 12).validate()
