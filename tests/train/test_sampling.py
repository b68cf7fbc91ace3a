"""Kohya prompt lines and labelled grids."""

from __future__ import annotations

import pytest
from PIL import Image

from facesmith.errors import FacesmithError
from facesmith.train.sampling import SamplePrompt, labelled_grid, parse_prompt_line, read_prompt_file


def test_kohya_prompt_line_options():
    p = parse_prompt_line(
        "a smiling woman, red hair --n blurry, lowres --w 768 --h 512 --d 42 --l 5.5 --s 20", 3
    )
    assert p == SamplePrompt("a smiling woman, red hair", "blurry, lowres", 20, 42, 5.5, 768, 512)
    assert parse_prompt_line("a man", 7) == SamplePrompt("a man", seed=7)
    with pytest.raises(FacesmithError, match="--s 'many' is not a number"):
        parse_prompt_line("a man --s many")


def test_prompt_file_skips_comments_and_grid_has_labels(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\na --d 1\nb --d 2\nc\n")
    prompts = read_prompt_file(path)
    assert [p.prompt for p in prompts] == ["a", "b", "c"]
    tiles = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    grid = labelled_grid(tiles, prompts, columns=2)
    assert grid.size == (64, 2 * (32 + 24))
    label_strip = grid.crop((0, 32, 32, 56))
    assert len(set(label_strip.getdata())) > 1  # text was drawn under the image
