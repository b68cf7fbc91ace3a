"""runtime.py: the device and dtype a stage runs on, and the output folder it can write."""

from __future__ import annotations

import pytest
import torch

from facesmith.errors import FacesmithError
from facesmith.runtime import choose_device, choose_dtype, prepare_out_dir


def test_device_and_dtype_choice():
    assert choose_dtype(torch.device("cpu")) == torch.float32
    assert choose_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(FacesmithError, match="dtype"):
        choose_dtype(torch.device("cpu"), "fp8")
    with pytest.raises(FacesmithError, match="device"):
        choose_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(FacesmithError, match="CUDA is not available"):
            choose_device("cuda")


def test_an_unwritable_output_folder_is_named_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacesmithError, match="not writable"):
        prepare_out_dir(tmp_path / "file" / "sub")
    assert prepare_out_dir(tmp_path / "new" / "dir").is_dir()
