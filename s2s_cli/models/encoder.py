"""The recurrent encoder: embeddings, a (bi)directional LSTM/GRU/RNN stack, optional reversal."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class EncoderOut(NamedTuple):
    """What the decoder reads; batch-first. ``select`` reorders every field along the batch."""

    outputs: Tensor  # B x S x He, zeros at padding, in the original source order
    pad_mask: Tensor  # B x S, True at padding
    final_hidden: Tensor  # layers x B x He: last state per layer, directions concatenated
    final_cell: Tensor | None  # layers x B x He for LSTM, else None
    keys: Tensor | None  # B x S x K attention keys (projected once), None without attention

    @property
    def summary(self) -> Tensor:
        """The encoder's summary vector (top layer's final state), ``B x He``."""
        return self.final_hidden[-1]

    def select(self, index: Tensor) -> EncoderOut:
        return EncoderOut(
            self.outputs.index_select(0, index),
            self.pad_mask.index_select(0, index),
            self.final_hidden.index_select(1, index),
            None if self.final_cell is None else self.final_cell.index_select(1, index),
            None if self.keys is None else self.keys.index_select(0, index),
        )


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[b]`` positions along dim 1, leaving padding in place."""
    steps = x.size(1)
    positions = torch.arange(steps, device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    if x.dim() == 3:
        index = index.unsqueeze(-1).expand_as(x)
    return x.gather(1, index)


class Encoder(nn.Module):
    """Embeds and encodes a padded source batch; padding never changes a result (packing)."""

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        output_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        reverse_source: bool,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.directions = 2 if bidirectional else 1
        self.output_size = output_size
        self.layers = layers
        self.reverse_source = reverse_source
        self.dropout = nn.Dropout(dropout)
        self.rnn = RNN_CLASSES[cell](
            embedding.embedding_dim,
            output_size // self.directions,
            num_layers=layers,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``src`` B x S ids (right-padded), ``lengths`` B (>= 1).

        Returns outputs ``B x S x He`` plus the pad mask and final hidden/cell states.
        """
        steps = src.size(1)
        pad_mask = torch.arange(steps, device=src.device).unsqueeze(0) >= lengths.to(
            src.device
        ).unsqueeze(1)
        if self.reverse_source:
            src = reverse_padded(src, lengths)
        embedded = self.dropout(self.embedding(src))
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_out, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        if self.reverse_source:
            outputs = reverse_padded(outputs, lengths)
        hidden, cell = final if isinstance(final, tuple) else (final, None)
        return (
            outputs,
            pad_mask,
            self._merge_directions(hidden),
            (None if cell is None else self._merge_directions(cell)),
        )

    def _merge_directions(self, state: Tensor) -> Tensor:
        # (layers * dirs) x B x H  ->  layers x B x (dirs * H)
        _layers_dirs, batch, size = state.shape
        state = state.view(self.layers, self.directions, batch, size)
        return state.transpose(1, 2).reshape(self.layers, batch, self.directions * size)
