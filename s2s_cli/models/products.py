"""Matrix products of decoding steps: weights packed once, row counts rounded up for oneDNN.

Packed weights. For a bf16 product ``linear`` hands oneDNN the weight as it is stored, and oneDNN
rearranges it into its blocked layout at every call: for a decoding step's 320 x 512 features and
an 8,000 x 512 output matrix that is a third of the product's time, and more for the few rows
left at the end of a batch. Outside autograd, a bf16 step on the CPU instead multiplies by a
weight oneDNN rearranged once (``torch.ops.mkldnn._reorder_linear_weight``, kept until the weight
changes): 1.25-1.9x faster per product on an Intel Xeon with AMX (docs/benchmarks.md, "Packed
weights"). Where the ops are missing or refuse the dtype, or the CPU lacks AVX-512 (PyTorch then
keeps bf16 products off oneDNN itself), steps multiply as before.

Rounded rows. A search's batch shrinks as sentences finish, so a decoding step multiplies
matrices of a new row count every few steps. oneDNN builds a kernel for every new shape (~1 ms
each for bf16, on an Intel Xeon with AMX) and keeps 1,024 of them: translating Multi30k test2016
at beam 5 built over 1,100, about a second of a six-second command. Rounding the rows up to a
multiple of :data:`ROW_MULTIPLE` (zero rows, sliced off after) leaves a handful of shapes per
weight. Unpacked float32 products go to MKL, which builds none, and are left as they are (so is
every product on other devices).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

ROW_MULTIPLE = 32  # at most 31 wasted rows; benchmarks/translate_ab.py measured the whole effect


def cpu_autocast() -> bool:
    """Whether autocast is on for the CPU here (it casts every product itself)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()


def is_reduced_precision(x: Tensor, weight: Tensor) -> bool:
    """Whether a product of ``x`` with ``weight`` runs in reduced precision (bf16/fp16 operands,
    or autocast on the CPU)."""
    return x.dtype != torch.float32 or weight.dtype != torch.float32 or cpu_autocast()


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
    """``nn.functional.linear(x, weight, bias)`` for ``x`` rows x K in a decoding step: by a
    packed weight where :func:`packs` says, else with rows rounded up where :func:`rounds_rows`
    says (the result is the first rows of the padded product: the same values, a contiguous
    view)."""
    if packs(x, weight):
        return packed_linear(x, (weight,), bias)
    if not rounds_rows(x, weight):
        return nn.functional.linear(x, weight, bias)
    return nn.functional.linear(padded_rows(x), weight, bias)[: x.size(0)]


# bf16 only: float32 products stay with MKL, which packed weights did not beat measurably over a
# whole translation (docs/benchmarks.md, "Packed weights"); float32 results stay as they were
PACKABLE = (torch.bfloat16,)
PACKED_FOR_ROWS = 320  # oneDNN's layout hint: 64 sentences x beam 5 (any row count works)
_unpackable: set[torch.dtype] = set()  # dtypes whose packing failed once in this process
# weight -> (what it was packed from, its packed form); an entry goes with its weight
_packs = WeakIdKeyDictionary()


def packs(x: Tensor, weight: Tensor) -> bool:
    """Whether a product of ``x`` (rows x K) with ``weight`` runs by a packed weight: on the
    CPU, both of one packable dtype, outside autograd, autocast and tracing, where this
    PyTorch has the oneDNN ops and this CPU runs the dtype through oneDNN
    (:func:`packed_linear`)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype == weight.dtype
        and x.dtype in PACKABLE
        and x.dtype not in _unpackable
        and not torch.is_grad_enabled()
        and not cpu_autocast()
        and not torch.jit.is_tracing()
        and torch.backends.mkldnn.enabled
        and _onednn_packing(x.dtype)
    )


def packed_linear(x: Tensor, weights: tuple[Tensor, ...], bias: Tensor | None = None) -> Tensor:
    """``x @ cat(weights, dim=1).T + bias`` by the weights' packed form, rows rounded up to
    :data:`ROW_MULTIPLE` (oneDNN builds a kernel per row count here too). Falls back to
    ``linear`` for good if oneDNN refuses the dtype."""
    padded = padded_rows(x)
    try:
        packed = packed_weight(weights)
        out = torch.ops.mkldnn._linear_pointwise(padded, packed, bias, "none", [], "")
    except RuntimeError:  # e.g. bf16 on a CPU without the instructions oneDNN needs for it
        _unpackable.add(x.dtype)
        weight = weights[0] if len(weights) == 1 else torch.cat(weights, dim=1)
        return nn.functional.linear(x, weight, bias)
    return out[: x.size(0)] if padded is not x else out


def packed_weight(weights: tuple[Tensor, ...]) -> Tensor:
    """The packed form of ``cat(weights, dim=1)`` (one weight: itself), made once and made
    again only when a weight is replaced or changed in place (its version moves on)."""
    source = tuple((w.data_ptr(), _version(w), tuple(w.shape)) for w in weights)
    kept = _packs.get(weights[0])
    if kept is not None and kept[0] == source:
        return kept[1]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights, dim=1)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACKED_FOR_ROWS)
    _packs[weights[0]] = (source, packed)
    return packed


@functools.cache
def _onednn_packing(dtype: torch.dtype) -> bool:
    """Whether this PyTorch has oneDNN's packed-weight ops (private ones, hence the check) and
    this CPU runs ``dtype`` products through oneDNN anyway: for bf16, PyTorch's own rule (a CPU
    with AVX-512; elsewhere its bf16 products are its own kernels, and oneDNN's may be slow)."""
    try:
        ops = torch.ops.mkldnn
        return bool(
            torch.backends.mkldnn.is_available()
            and ops._reorder_linear_weight is not None
            and ops._linear_pointwise is not None
            and (dtype != torch.bfloat16 or ops._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):  # an older or a slimmer PyTorch
        return False


def _version(weight: Tensor) -> int:
    try:
        return weight._version
    except RuntimeError:  # an inference-mode tensor keeps none (only inference mode changes it)
        return -1
