"""The output layer as decoding sees it: features in, logits out, over all pieces or a subset.

Training and the model's own :meth:`Decoder.project` always score the whole vocabulary. A search
may score only some pieces (a lexical shortlist, :mod:`s2s_cli.decoding.shortlist`): ``restrict``
returns a layer over the rows ``ids`` of the output matrix, computed once per batch, so each step
multiplies by a ``K x E`` matrix instead of ``V x E``. Its logits are the full layer's logits of
those pieces, so a softmax over them is exactly the full softmax renormalised over the subset.
:class:`s2s_cli.decoding.int8.Int8Output` is the same contract with int8 weights.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from s2s_cli.models.decoder import Decoder


class OutputLayer(Protocol):
    def __call__(self, features: Tensor) -> Tensor:
        """Logits ``... x K`` for decoder features ``... x F``."""
        ...

    def restrict(self, ids: Tensor) -> OutputLayer:
        """The layer over vocabulary rows ``ids`` only (sorted piece ids, ``K``)."""
        ...


class FullOutput:
    """The decoder's own output layer over the whole vocabulary."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder

    def __call__(self, features: Tensor) -> Tensor:
        return self.decoder.project(features)

    def restrict(self, ids: Tensor) -> OutputLayer:
        weight, bias = self.decoder.output_matrix()
        return RowsOutput(
            self.decoder.pre_output, weight.index_select(0, ids), bias.index_select(0, ids)
        )


class RowsOutput:
    """``logits = pre(features) @ weight.T + bias`` for a slice of the output matrix."""

    def __init__(self, pre: nn.Module | None, weight: Tensor, bias: Tensor) -> None:
        self.pre = pre
        self.weight = weight
        self.bias = bias

    def __call__(self, features: Tensor) -> Tensor:
        inputs = features if self.pre is None else self.pre(features)
        return nn.functional.linear(inputs, self.weight, self.bias)

    def restrict(self, ids: Tensor) -> OutputLayer:
        return RowsOutput(
            self.pre, self.weight.index_select(0, ids), self.bias.index_select(0, ids)
        )
