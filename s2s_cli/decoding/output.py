"""The output layer as decoding sees it: features in, logits out, over all pieces or a subset.

Training and the model's own :meth:`Decoder.project` always score the whole vocabulary. A search
may score only some pieces (a lexical shortlist, :mod:`s2s_cli.decoding.shortlist`): ``restrict``
returns a layer over the rows ``ids`` of the output matrix, computed once per batch, so each step
multiplies by a ``K x E`` matrix instead of ``V x E``. Its logits are the full layer's logits of
those pieces, so a softmax over them is exactly the full softmax renormalised over the subset (a
bf16 layer on the CPU appends columns of ``-inf``, which change neither; :func:`output_rows`).
:class:`s2s_cli.decoding.int8.Int8Output` is the same contract with int8 weights.
"""

from __future__ import annotations

import threading
from typing import Protocol

import torch
from torch import Tensor, nn

from s2s_cli.models import products
from s2s_cli.models.decoder import Decoder

# A restricted layer's width on the CPU in reduced precision rounds up to a multiple of this
# (output_rows); at most 255 wasted columns of a list of some thousands
RESTRICTED_WIDTH_MULTIPLE = 256


class OutputLayer(Protocol):
    def __call__(self, features: Tensor) -> Tensor:
        """Logits ``... x K`` for decoder features ``... x F`` (float32 on the CPU, there in a
        buffer the layer's next call reuses)."""
        ...

    def restrict(self, ids: Tensor) -> OutputLayer:
        """The layer over vocabulary rows ``ids`` only (sorted piece ids, ``K``); its logits
        may have more columns after the ``K``, all ``-inf``."""
        ...


class LogitsBuffer:
    """The memory a CPU output layer writes every step's product and logits into.

    A fresh ``rows x V`` tensor per step (10 MB of float32 at beam 5 x 64 sentences x 8,000
    pieces) is fresh memory from the system each time, and its page faults cost as much as the
    pass that fills it. The logits an output layer returns are therefore valid until its next
    call (searches read each step's scores before the next step).
    """

    def __init__(self) -> None:
        # one block per thread: threads translating with one Translator never share a buffer
        self.local = threading.local()

    def take(self, rows: int, columns: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        storage: dict[torch.dtype, Tensor] = self.local.__dict__.setdefault("storage", {})
        size = rows * columns
        block = storage.get(dtype)
        if block is None or block.numel() < size or block.device != device:
            block = storage[dtype] = torch.empty(size, dtype=dtype, device=device)
        return block[:size].view(rows, columns)


def float_logits(
    inputs: Tensor, weight: Tensor, bias: Tensor, buffer: LogitsBuffer | None = None
) -> Tensor:
    """``inputs @ weight.T + bias`` for decoding (``inputs`` rows x F), float32 on the CPU
    whatever the precision, written into ``buffer`` there.

    A reduced-precision product gets its bias in float32 after its conversion, as training's
    fused loss adds it (``linear`` would first fill its ``rows x V`` output with copies of the
    bias, then the conversion copy it again), and its rows are rounded up for oneDNN; a bf16
    model's weight is packed once (:mod:`s2s_cli.models.products`). A float32 product is
    ``linear``'s own ``addmm``.
    """
    if inputs.device.type != "cpu" or inputs.dim() != 2:
        return nn.functional.linear(inputs, weight, bias)
    buffer = buffer or LogitsBuffer()
    rows, vocab = inputs.size(0), weight.size(0)
    out = buffer.take(rows, vocab, inputs.device, torch.float32)
    if not products.is_reduced_precision(inputs, weight):
        return torch.addmm(bias, inputs, weight.t(), out=out)
    if inputs.dtype == weight.dtype and not products.packs(inputs, weight):
        # weights cast for inference, not packed: the product into the buffer too
        padded = products.padded_rows(inputs) if products.rounds_rows(inputs, weight) else inputs
        product = buffer.take(padded.size(0), vocab, inputs.device, inputs.dtype)
        torch.mm(padded, weight.t(), out=product)
        out.copy_(product[:rows])
    else:  # a packed weight, or autocast (which skips out= calls)
        out.copy_(products.step_linear(inputs, weight))
    return out.add_(bias.float())


class FullOutput:
    """The decoder's own output layer over the whole vocabulary."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.buffer = LogitsBuffer()

    def __call__(self, features: Tensor) -> Tensor:
        weight, bias = self.decoder.output_matrix()
        pre = self.decoder.pre_output
        inputs = features if pre is None else _pre_output(pre, features)
        return float_logits(inputs, weight, bias, self.buffer)

    def restrict(self, ids: Tensor) -> OutputLayer:
        weight, bias = self.decoder.output_matrix()
        return RowsOutput(self.decoder.pre_output, *output_rows(weight, bias, ids))


class RowsOutput:
    """``logits = pre(features) @ weight.T + bias`` for a slice of the output matrix."""

    def __init__(self, pre: nn.Module | None, weight: Tensor, bias: Tensor) -> None:
        self.pre = pre
        self.weight = weight
        self.bias = bias
        self.buffer = LogitsBuffer()

    def __call__(self, features: Tensor) -> Tensor:
        inputs = features if self.pre is None else _pre_output(self.pre, features)
        return float_logits(inputs, self.weight, self.bias, self.buffer)

    def restrict(self, ids: Tensor) -> OutputLayer:
        return RowsOutput(self.pre, *output_rows(self.weight, self.bias, ids))


def output_rows(weight: Tensor, bias: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``ids`` of an output layer's weight and bias, for a restricted layer.

    A reduced-precision product on the CPU (oneDNN's) builds a kernel for every new operand
    shape, 2-4 ms each at these sizes, and every batch of a shortlisted search has a list of its
    own length: with the row counts a search runs through, over a hundred kernels (a third of a
    second) in translating Multi30k test2016 in bf16. A CPU layer whose weight is not float32
    (weights cast for inference) therefore pads its rows up to a multiple of
    :data:`RESTRICTED_WIDTH_MULTIPLE` with zero rows whose bias is ``-inf``: their logits are
    ``-inf``, so they add nothing to a softmax and are never chosen, and the columns before them
    are the logits of ``ids``.
    """
    weight, bias = weight.index_select(0, ids), bias.index_select(0, ids)
    extra = -ids.numel() % RESTRICTED_WIDTH_MULTIPLE
    if weight.device.type != "cpu" or weight.dtype == torch.float32 or not extra:
        return weight, bias
    weight = torch.cat([weight, weight.new_zeros(extra, weight.size(1))])
    return weight, torch.cat([bias, bias.new_full((extra,), float("-inf"))])


def _pre_output(pre: nn.Module, features: Tensor) -> Tensor:
    """The tied-embedding model's projection to the embedding size (int8: a quantized layer)."""
    if type(pre) is nn.Linear and features.dim() == 2:
        return products.step_linear(features, pre.weight)
    return pre(features)
