"""Turn the DEVICE / DTYPE / QUANTIZE settings into torch objects, failing early with clear messages.

Everything here runs when the engine is built, so a bad combination (4-bit on a CPU-only
machine, a GPU index that does not exist) stops the worker at start-up, not inside a job.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE_CHOICES = ("none", "8bit", "4bit")


class ConfigError(RuntimeError):
    """A setting that cannot work on this machine; the message says which and what to do."""


def resolve_device(setting: str | torch.device | None = "auto") -> torch.device:
    if isinstance(setting, torch.device):
        return setting
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"DEVICE={value} but no CUDA GPU is visible to torch; use DEVICE=cpu or auto.")
        device = torch.device(value)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"DEVICE={value} but only {torch.cuda.device_count()} CUDA device(s) are visible.")
        return device
    raise ConfigError(f"DEVICE={setting!r} is not one of auto, cpu, cuda, cuda:N.")


def resolve_dtype(setting: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(setting, torch.dtype):
        return setting
    value = (setting or "auto").strip().lower()
    if value == "auto":
        # bf16 halves memory and is fast on recent GPUs; older GPUs and CPUs keep full precision.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if value not in DTYPES:
        raise ConfigError(f"DTYPE={setting!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[value]


@contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run the block on torch's RNG seeded with `seed` (CPU and this device's CUDA stream); the
    caller's RNG state is restored afterwards. With seed None the RNG is left alone."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def check_quantize(quantize: str | None, device: torch.device) -> None:
    """Raise ConfigError unless this quantization can run here (bitsandbytes needs CUDA)."""
    value = (quantize or "none").strip().lower()
    if value not in QUANTIZE_CHOICES:
        raise ConfigError(f"QUANTIZE={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}.")
    if value == "none":
        return
    if device.type != "cuda":
        raise ConfigError(
            f"QUANTIZE={value} needs a CUDA GPU (bitsandbytes), but DEVICE resolves to {device}; "
            "set QUANTIZE=none to run on the CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"QUANTIZE={value} needs the bitsandbytes package: pip install bitsandbytes (or set QUANTIZE=none)."
        )


def quantization_config(quantize: str | None, compute_dtype: torch.dtype = torch.bfloat16):
    """A BitsAndBytesConfig for from_pretrained, or None when not quantizing."""
    value = (quantize or "none").strip().lower()
    if value == "none":
        return None
    from transformers import BitsAndBytesConfig

    if value == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if value == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    raise ConfigError(f"QUANTIZE={quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}.")
