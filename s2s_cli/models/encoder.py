"""The recurrent encoder: embeddings, a (bi)directional LSTM/GRU/RNN stack, optional reversal."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s_cli.models.recurrent import RNN_CLASSES, run_rnn


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
    """Embeds and encodes a padded source batch; padding never changes a result.

    Each layer and direction is a unidirectional RNN; the backward direction reads each sentence
    reversed within its own length. Two exact implementations run them (``impl``):

    * ``segments`` (the CPU choice): rows sorted by length, the time axis cut at each distinct
      length, one fused RNN call per segment (:func:`run_by_length`). This keeps oneDNN's fused
      CPU kernels, which packed input loses (measured 2-2.6x slower on the benchmark encoder).
    * ``packed`` (the CUDA choice): one ``PackedSequence`` call per layer and direction, which
      cuDNN runs as one kernel sequence without host round trips per segment.

    ``auto`` picks by device. The bottom ``bidirectional_layers`` layers read both ways (GNMT's
    encoder has one); the layers above are unidirectional and as wide as the output.
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        *,
        cell: str,
        output_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        reverse_source: bool,
        bidirectional_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.output_size = output_size
        self.layers = layers
        self.reverse_source = reverse_source
        self.dropout = nn.Dropout(dropout)
        both_ways = layers if bidirectional_layers is None else bidirectional_layers
        both_ways = both_ways if bidirectional else 0
        self.layer_directions = [2 if layer < both_ways else 1 for layer in range(layers)]
        self.impl = "auto"
        self.rnns = nn.ModuleList(
            RNN_CLASSES[cell](
                embedding.embedding_dim if layer == 0 else output_size,
                output_size // directions,
                batch_first=True,
            )
            for layer, directions in enumerate(self.layer_directions)
            for _ in range(directions)
        )

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``src`` B x S ids (right-padded), ``lengths`` B (>= 1).

        Returns outputs ``B x S x He`` (zeros at padding), the pad mask, and the final hidden (and
        cell) state per layer with directions concatenated (``layers x B x He``).
        """
        steps = src.size(1)
        lengths = lengths.to(src.device)
        pad_mask = torch.arange(steps, device=src.device).unsqueeze(0) >= lengths.unsqueeze(1)
        # Reversal keeps EOS last: "a b c </s>" is read as "c b a </s>".
        real_lengths = lengths - 1
        if self.reverse_source:
            src = reverse_padded(src, real_lengths)
        order = torch.argsort(lengths, descending=True, stable=True)
        sorted_lengths = lengths.index_select(0, order)
        run = self._runner(src.device, sorted_lengths)
        x = self.dropout(self.embedding(src.index_select(0, order)))
        hidden, cell = [], []
        index = 0
        for layer, directions in enumerate(self.layer_directions):
            if layer > 0:
                x = self.dropout(x)
            outputs, layer_hidden, layer_cell = [], [], []
            for direction in range(directions):
                rnn = self.rnns[index]
                index += 1
                inputs = x if direction == 0 else reverse_padded(x, sorted_lengths)
                out, h, c = run(rnn, inputs)
                outputs.append(out if direction == 0 else reverse_padded(out, sorted_lengths))
                layer_hidden.append(h)
                layer_cell.append(c)
            x = torch.cat(outputs, dim=-1) if directions > 1 else outputs[0]
            hidden.append(torch.cat(layer_hidden, dim=-1))
            cell.append(None if layer_cell[0] is None else torch.cat(layer_cell, dim=-1))
        restore = torch.argsort(order)
        outputs = x.index_select(0, restore)
        if self.reverse_source:
            outputs = reverse_padded(outputs, real_lengths)
        final_hidden = torch.stack(hidden).index_select(1, restore)
        final_cell = None if cell[0] is None else torch.stack(cell).index_select(1, restore)
        return outputs, pad_mask, final_hidden, final_cell

    def _runner(self, device: torch.device, sorted_lengths: Tensor):
        """``run(rnn, x) -> (outputs, final h, final c)`` for rows sorted longest first."""
        impl = self.impl
        if impl == "auto":
            impl = "packed" if device.type == "cuda" else "segments"
        if impl == "packed":
            host_lengths = sorted_lengths.cpu()  # pack_padded_sequence wants them on the host
            return lambda rnn, x: run_packed(rnn, x, host_lengths)
        return lambda rnn, x: run_by_length(rnn, x, sorted_lengths)


def run_packed(rnn: nn.RNNBase, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Like :func:`run_by_length`, through one ``PackedSequence`` call (``lengths`` on the host)."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=True)
    out, state = run_rnn(rnn, packed)
    outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    h, c = state if isinstance(state, tuple) else (state, None)
    return outputs, h[0], None if c is None else c[0]


def run_by_length(
    rnn: nn.RNNBase, x: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run a one-layer unidirectional RNN over rows sorted by ``lengths`` (descending).

    The time axis is cut at each distinct length; each segment is one fused RNN call over the
    rows still running, carrying their state. Rows stop exactly at their length, so outputs at
    padding are zero and final states are those after each row's last real step.

    Returns outputs ``B x S x H`` and the final hidden and cell (LSTM only) states, ``B x H``.
    """
    batch, steps, _ = x.shape
    ends = sorted(set(lengths.tolist()))
    # rows still running in each segment: a prefix, because rows are sorted by length
    running = [int((lengths > start).sum()) for start in [0, *ends[:-1]]]
    outputs, finals_h, finals_c = [], [], []
    state = None
    start = 0
    for end, rows in zip(ends, running, strict=True):
        if state is not None:
            state = _take_rows(state, rows)
        out, state = run_rnn(rnn, x[:rows, start:end], state)
        outputs.append(nn.functional.pad(out, (0, 0, 0, 0, 0, batch - rows)))
        done = int((lengths >= end).sum()) - int((lengths > end).sum())  # rows ending here
        first = int((lengths > end).sum())
        h, c = state if isinstance(state, tuple) else (state, None)
        finals_h.append(h[0, first : first + done])
        finals_c.append(None if c is None else c[0, first : first + done])
        start = end
    if start < steps:
        outputs.append(x.new_zeros(batch, steps - start, outputs[0].size(-1)))
    # finals were collected shortest-first; rows are longest-first
    final_h = torch.cat(finals_h[::-1], dim=0)
    final_c = None if finals_c[0] is None else torch.cat(finals_c[::-1], dim=0)
    return torch.cat(outputs, dim=1), final_h, final_c


def _take_rows(state: Tensor | tuple[Tensor, Tensor], rows: int) -> Tensor | tuple[Tensor, Tensor]:
    if isinstance(state, tuple):
        return state[0][:, :rows].contiguous(), state[1][:, :rows].contiguous()
    return state[:, :rows].contiguous()
