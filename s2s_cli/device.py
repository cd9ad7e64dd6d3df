"""Devices and precisions, shared by training and decoding.

``resolve_device`` turns ``--device`` into a ``torch.device``; ``check_precision`` refuses what a
device cannot run; ``autocast`` is the mixed-precision context for ``bf16``/``fp16`` (a no-op for
``fp32``). ``memory_summary`` is the CUDA memory line the training log carries.
"""

from __future__ import annotations

import contextlib

import torch

from s2s_cli.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU; errors name the problem in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: '{name}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return device


def check_precision(device: torch.device, precision: str, key: str) -> None:
    """fp16 needs CUDA: CPU autocast has no fp16 LSTM kernel (bf16 is the CPU choice). int8
    (decoding only) is the reverse: PyTorch's dynamic quantization has CPU kernels only."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}: fp16 needs a CUDA device; on {device.type} use bf16")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError(f"{key}: int8 runs on the CPU (--device cpu); on {device.type} use bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16``; a no-op for ``fp32`` and for ``int8``, whose quantized
    layers are prepared ahead and whose other arithmetic is float32."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def memory_summary(device: torch.device) -> str | None:
    """``GPU memory 1.2 GiB (peak 3.4 GiB) of 79.1 GiB`` on CUDA; None elsewhere."""
    if device.type != "cuda":
        return None
    gib = 2**30
    allocated = torch.cuda.memory_allocated(device) / gib
    peak = torch.cuda.max_memory_allocated(device) / gib
    total = torch.cuda.get_device_properties(device).total_memory / gib
    return f"GPU memory {allocated:.2f} GiB (peak {peak:.2f} GiB) of {total:.1f} GiB"
