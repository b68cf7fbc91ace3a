"""Textual-inversion files at generate time: A1111 and diffusers forms, `--embedding`, TI hashes, serve."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from facesmith.cli import app
from facesmith.errors import FacesmithError
from factory import one_line_error

runner = CliRunner()


def _image(folder, embeddings, prompt):
    from facesmith.generate import FaceGenerator

    generator = FaceGenerator.load(str(folder), embeddings=[str(e) for e in embeddings], engine="eager")
    return np.asarray(generator.generate(prompt, steps=2, seed=1)[0], dtype=float)


def test_a1111_and_diffusers_forms_load_as_the_same_word(sd15_folder, tmp_path):
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    save_file({"emb_params": vectors}, tmp_path / "alice.safetensors")  # A1111: named by the file
    save_file({"<bob>": vectors}, tmp_path / "learned_embeds.safetensors")  # diffusers: named by its key
    a1111 = _image(sd15_folder, [tmp_path / "alice.safetensors"], "a photo of alice")
    diffusers = _image(sd15_folder, [tmp_path / "learned_embeds.safetensors"], "a photo of <bob>")
    assert np.array_equal(a1111, diffusers)
    plain = _image(sd15_folder, [], "a photo of alice")
    assert np.abs(a1111 - plain).mean() > 1  # the word is the embedding, not the tokenizer's "alice"


def test_an_old_a1111_pt_loads_without_running_code(sd15_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from facesmith.models.embeddings import apply_embeddings

    path = tmp_path / "carol.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "name": "carol", "step": 10}, path)
    pipe = StableDiffusionPipeline.from_pretrained(str(sd15_folder), safety_checker=None)
    (loaded,) = apply_embeddings(pipe, [str(path)])  # torch's weights-only unpickler: no --allow-pickle
    assert (loaded.name, loaded.num_vectors) == ("carol", 1)
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "name": "dave", "hook": FacesmithError("x")},
               tmp_path / "dave.pt")  # fmt: skip
    with pytest.raises(FacesmithError, match="holds more than tensors .* pass --allow-pickle"):
        apply_embeddings(pipe, [str(tmp_path / "dave.pt")])
    (dave,) = apply_embeddings(pipe, [str(tmp_path / "dave.pt")], allow_pickle=True)
    assert dave.name == "dave"


def test_generate_records_ti_hashes_of_the_embeddings_the_prompt_uses(sd15_folder, tmp_path):
    from facesmith.metadata import read_png

    path = tmp_path / "alice.safetensors"
    save_file({"emb_params": torch.randn(1, 32)}, path)
    for prompt, out in (("a photo of alice", "used"), ("a photo of a face", "unused")):
        result = runner.invoke(app, ["generate", prompt, "--model", str(sd15_folder), "--embedding", str(path),
                                     "--steps", "2", "-o", str(tmp_path / out)])  # fmt: skip
        assert result.exit_code == 0, result.output
    short = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    (used,) = (tmp_path / "used").glob("*.png")
    parameters, settings = read_png(used)
    assert f'TI hashes: "alice: {short}"' in parameters
    assert settings["embeddings"] == [{"name": "alice", "hash": short}]
    assert settings["config"]["embeddings"] == ["alice.safetensors"]  # the file name, never a server path
    (unused,) = (tmp_path / "unused").glob("*.png")
    assert "TI hashes" not in read_png(unused)[0]


def test_an_embedding_of_another_width_is_one_line_naming_both(sd15_folder, tmp_path):
    save_file({"emb_params": torch.randn(1, 768)}, tmp_path / "wide.safetensors")
    result = runner.invoke(app, ["generate", "wide", "--model", str(sd15_folder), "--embedding",
                                 str(tmp_path / "wide.safetensors"), "--steps", "2", "-o", str(tmp_path / "o")])  # fmt: skip
    one_line_error(result, "has 768-wide vectors but this model's text encoder takes 32-wide ones")


def test_a_missing_or_foreign_embedding_file_is_one_line(sd15_folder, tmp_path):
    result = runner.invoke(app, ["generate", "x", "--embedding", str(tmp_path / "none.safetensors")])
    one_line_error(result, "embedding file")
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "odd.safetensors")
    result = runner.invoke(app, ["generate", "x", "--model", str(sd15_folder), "--embedding",
                                 str(tmp_path / "odd.safetensors"), "--steps", "2", "-o", str(tmp_path / "o")])  # fmt: skip
    one_line_error(result, "is not a textual-inversion embedding")


def test_serve_lists_its_embeddings_as_a1111_does(sd15_folder, tmp_path):
    from fastapi.testclient import TestClient

    from facesmith.generate import FaceGenerator
    from facesmith.serve.app import build_app
    from facesmith.serve.config import ServeConfig

    path = tmp_path / "alice.safetensors"
    save_file({"emb_params": torch.randn(3, 32)}, path, metadata={"name": "alice", "step": "40"})
    config = ServeConfig(model=str(sd15_folder), embeddings=[str(path)])
    generator = FaceGenerator.from_settings(config, fuse_loras=False)
    with TestClient(build_app(generator, config, page=False)) as client:
        listed = client.get("/sdapi/v1/embeddings").json()
    assert listed == {
        "loaded": {
            "alice": {
                "step": 40,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": 32,
                "vectors": 3,
            }
        },
        "skipped": {},
    }
