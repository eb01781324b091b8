"""DEVICE / DTYPE / QUANTIZE resolution, including the CPU-only errors raised at start-up."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from worker.engine import devices
from worker.engine.devices import (
    ConfigError,
    check_quantize,
    quantization_config,
    resolve_device,
    resolve_dtype,
)

CPU = torch.device("cpu")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_and_cpu_without_a_gpu(no_cuda):
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    assert resolve_device(None) == CPU


def test_auto_takes_cuda_when_present(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_cuda_requested_without_gpu(no_cuda):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cuda_index_out_of_range(fake_cuda):
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_bad_device_string():
    with pytest.raises(ConfigError, match="DEVICE"):
        resolve_device("tpu")


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_gpu(fake_cuda):
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype(torch.float16, CPU) == torch.float16


def test_dtype_auto_on_old_gpu_keeps_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32


def test_bad_dtype():
    with pytest.raises(ConfigError, match="DTYPE"):
        resolve_dtype("int3", CPU)


def test_quantize_none_is_fine_anywhere():
    check_quantize("none", CPU)
    assert quantization_config("none") is None


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantize_on_cpu_is_a_clear_error(mode):
    with pytest.raises(ConfigError, match=f"QUANTIZE={mode} needs a CUDA GPU"):
        check_quantize(mode, CPU)


def test_quantize_without_bitsandbytes_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        devices.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        check_quantize("4bit", torch.device("cuda"))


def test_bad_quantize_value():
    with pytest.raises(ConfigError, match="QUANTIZE"):
        check_quantize("2bit", CPU)


def test_quantization_configs():
    eight = quantization_config("8bit")
    four = quantization_config("4bit", compute_dtype=torch.float16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_compute_dtype == torch.float16


def test_bitsandbytes_is_installed_with_the_worker():
    """QUANTIZE and --quantize need it; requirements/worker.txt installs it (refused on CPU above)."""
    import importlib.util

    assert importlib.util.find_spec("bitsandbytes") is not None
