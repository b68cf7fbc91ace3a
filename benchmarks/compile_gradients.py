"""Does torch.compile (inductor) give the same UNet gradients as eager? The check behind `compile = true`.

Builds the test factory's tiny SD1.5 UNet (or SD1.5's real shapes with --full), runs one forward and
backward eagerly and under torch.compile with each backend, and prints, per backend, how many parameter
gradients differ from eager's beyond rtol 1e-3 and the ratio of their summed magnitudes. On the 2-core
dev machine (torch 2.13.0+cpu, 2026-11-25): eager and aot_eager agree on all 208 tensors; inductor
differs on 123 of 208, its gradients summing to 35% of eager's, while its forward output matches.
That is why facesmith refuses `compile = true` for training on a CPU. Run it on the GPU before trusting
compiled training there (tests/train/test_trainer.py has the same check as a CUDA-only test).

    python benchmarks/compile_gradients.py [--device cuda] [--full]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="SD1.5's real UNet shapes (needs a GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.full:
        from diffusers import UNet2DConditionModel

        from facesmith.models.single_file import shipped_config

        unet = UNet2DConditionModel.from_config(shipped_config("sd1", "unet"))
    else:
        import factory

        unet = factory.tiny_sd15().unet
    unet = unet.to(device).train()
    side, width = unet.config.sample_size, unet.config.cross_attention_dim
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, side, side, device=device, generator=generator)
    states = torch.randn(2, 77, width, device=device, generator=generator)
    t = torch.tensor([10, 700], device=device)

    unet(x, t, states).sample.pow(2).mean().backward()
    reference = [p.grad.clone() for p in unet.parameters()]
    print(f"{device}, torch {torch.__version__}, {len(reference)} parameter tensors")
    for backend in ("aot_eager", "inductor"):
        twin = copy.deepcopy(unet)
        twin.zero_grad(set_to_none=True)
        torch.compile(twin, backend=backend)(x, t, states).sample.pow(2).mean().backward()
        grads = [p.grad for p in twin.parameters()]
        wrong = sum(
            not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(reference, grads, strict=True)
        )
        ratio = sum(g.abs().sum() for g in grads) / sum(g.abs().sum() for g in reference)
        print(f"{backend:<10} {wrong:4d} tensors differ; summed |grad| is {ratio.item():.3f} of eager's")


if __name__ == "__main__":
    main()
