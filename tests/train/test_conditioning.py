"""Training's conditioning: SDXL captions encode as its pipeline encodes prompts, and the size/crop ids."""

from __future__ import annotations

import torch

import factory
from facesmith.train.conditioning import Conditioner, denoise
from facesmith.train.dataset import crop_conditioning


def test_sdxl_captions_encode_exactly_as_the_pipeline_encodes_a_prompt():
    pipe = factory.tiny_sdxl()
    captions = ["a smiling face", "", "a face with glasses, long hair"]
    conditioner = Conditioner(pipe, torch.device("cpu"), train_text=False)
    hidden, pooled = conditioner(captions)
    with torch.no_grad():
        want, _, want_pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    assert hidden.shape == (3, 77, 64) and pooled.shape == (3, 32)
    torch.testing.assert_close(hidden, want, rtol=0, atol=0)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)
    # The frozen-caption cache gives the same states, batch by batch.
    conditioner.fill_cache({"a smiling face", ""})
    cached_hidden, cached_pooled = conditioner(captions)
    torch.testing.assert_close(cached_hidden, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached_pooled, want_pooled, rtol=0, atol=1e-6)
    # The size and crop ids reach the UNet: other ids, another prediction.
    noisy, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    with torch.no_grad():
        square = denoise(pipe.unet, noisy, t, (hidden, pooled), torch.tensor([[64, 64, 0, 0, 64, 64]] * 3))
        cropped = denoise(pipe.unet, noisy, t, (hidden, pooled), torch.tensor([[96, 64, 16, 0, 64, 64]] * 3))
    assert square.shape == noisy.shape and not torch.allclose(square, cropped)


def test_size_and_crop_ids_follow_the_cover_resize_and_centre_crop():
    # 40x60 (w x h) into a 32x32 bucket: resized to 32x48, 8 rows cut from the top.
    assert crop_conditioning((40, 60), (32, 32), flip=False) == (60, 40, 8, 0, 32, 32)
    # 100x50 into 64x32 is an exact fit: nothing is cut.
    assert crop_conditioning((100, 50), (64, 32), flip=False) == (50, 100, 0, 0, 32, 64)
    # 70x40 into 32x16: resized to 32x18 to cover it, one row cut from the top.
    assert crop_conditioning((70, 40), (32, 16), flip=False) == (40, 70, 1, 0, 16, 32)
    # A wide image loses columns on both sides; its mirror image's crop starts at the mirrored offset.
    assert crop_conditioning((61, 40), (32, 32), flip=False) == (40, 61, 0, 8, 32, 32)  # 49 wide, 17 cut
    assert crop_conditioning((61, 40), (32, 32), flip=True) == (40, 61, 0, 9, 32, 32)
