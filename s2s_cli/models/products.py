"""Matrix products of decoding steps, with their row counts rounded up for oneDNN.

A search's batch shrinks as sentences finish, so a decoding step multiplies matrices of a new row
count every few steps. On the CPU, PyTorch runs reduced-precision (bf16/fp16) products through
oneDNN, which builds a kernel for every new shape (~1 ms each, on an Intel Xeon with AMX) and keeps
1,024 of them: translating Multi30k test2016 at beam 5 built over 1,100, about a second of a
six-second command. Rounding the rows up to a multiple of :data:`ROW_MULTIPLE` (zero rows, sliced
off after) leaves a handful of shapes per weight. float32 products go to MKL, which builds none,
and are left as they are (so is every product on other devices).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ROW_MULTIPLE = 32  # at most 31 wasted rows; benchmarks/translate_ab.py measured the whole effect


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()


def is_reduced_precision(x: Tensor, weight: Tensor) -> bool:
    """Whether a product of ``x`` with ``weight`` runs in reduced precision (bf16/fp16 operands,
    or autocast on the CPU)."""
    return x.dtype != torch.float32 or weight.dtype != torch.float32 or _cpu_autocast()


def rounds_rows(x: Tensor, weight: Tensor) -> bool:
    """Whether a product of ``x`` (rows x K) with ``weight`` pads its rows: a reduced-precision
    product on the CPU whose row count is not already a multiple of :data:`ROW_MULTIPLE`."""
    if x.device.type != "cpu" or x.size(0) % ROW_MULTIPLE == 0:
        return False
    return is_reduced_precision(x, weight)


def padded_rows(x: Tensor) -> Tensor:
    """``x`` (rows x K) with zero rows appended up to the next multiple of :data:`ROW_MULTIPLE`."""
    extra = -x.size(0) % ROW_MULTIPLE
    return torch.cat([x, x.new_zeros(extra, *x.shape[1:])]) if extra else x


def step_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``nn.functional.linear(x, weight, bias)`` for ``x`` rows x K, rows rounded up where
    :func:`rounds_rows` says (the result is the first rows of the padded product: the same
    values, a contiguous view)."""
    if not rounds_rows(x, weight):
        return nn.functional.linear(x, weight, bias)
    return nn.functional.linear(padded_rows(x), weight, bias)[: x.size(0)]
