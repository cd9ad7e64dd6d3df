"""The recurrent encoder: embeddings, a (bi)directional LSTM/GRU/RNN stack, optional reversal."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s_cli.models.dropout import Dropout
from s2s_cli.models.recurrent import RNN_CLASSES, RnnState, run_layer, run_rnn


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

    The parameters live in at most two stacks (``stacks``): the bottom ``bidirectional_layers``
    layers as one bidirectional multi-layer RNN (GNMT's encoder has one such layer), the layers
    above as one unidirectional multi-layer RNN as wide as the output. Two exact implementations
    run them (``impl``):

    * ``segments`` (the CPU choice): layer by layer and direction by direction, rows sorted by
      length, the time axis cut at each distinct length, one fused RNN call per segment
      (:func:`run_by_length`); the backward direction reads each sentence reversed within its
      own length. This keeps oneDNN's fused CPU kernels, which packed input loses (measured
      2-2.6x slower on the benchmark encoder).
    * ``packed`` (the CUDA choice): the batch packed once and each stack one ``PackedSequence``
      call, so cuDNN runs a stack's layers (and both directions) as one kernel sequence and
      overlaps them, with no host round trip per segment, layer or direction.

    ``auto`` picks by device. Checkpoints from before the stacks (one module per layer and
    direction, ``rnns.N``) load unchanged: :meth:`_load_from_state_dict` renames their keys.
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
        self.dropout = Dropout(dropout)
        both_ways = layers if bidirectional_layers is None else bidirectional_layers
        both_ways = both_ways if bidirectional else 0
        self.layer_directions = [2 if layer < both_ways else 1 for layer in range(layers)]
        # (stack index, layer within the stack) for every encoder layer, bottom first
        self.layer_positions: list[tuple[int, int]] = []
        self.stacks = nn.ModuleList()
        input_size = embedding.embedding_dim
        for count, directions in ((both_ways, 2), (layers - both_ways, 1)):
            if count == 0:
                continue
            self.layer_positions += [(len(self.stacks), k) for k in range(count)]
            self.stacks.append(
                RNN_CLASSES[cell](
                    input_size,
                    output_size // directions,
                    num_layers=count,
                    bidirectional=directions == 2,
                    dropout=dropout if count > 1 else 0.0,
                    batch_first=True,
                )
            )
            input_size = output_size
        self.impl = "auto"

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
        impl = self.impl
        if impl == "auto":
            impl = "packed" if src.device.type == "cuda" else "segments"
        if impl == "packed":
            outputs, hidden, cell = self._run_packed(src, lengths)
        elif src.device.type == "cuda":
            # run_layer bypasses run_rnn's precision rules (bf16 must not become fp16 there)
            raise ValueError("the segment-wise encoder is for the CPU; CUDA runs impl='packed'")
        else:
            outputs, hidden, cell = self._run_segments(src, lengths)
        if self.reverse_source:
            outputs = reverse_padded(outputs, real_lengths)
        return outputs, pad_mask, hidden, cell

    def _run_packed(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        # pack_padded_sequence wants the lengths on the host; it sorts, and the RNN returns the
        # final states in the batch's own order.
        x = self.dropout(self.embedding(src))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, cell = [], []
        for index, stack in enumerate(self.stacks):
            if index > 0:  # dropout between layers; the stack applies it between its own layers
                packed = packed._replace(data=self.dropout(packed.data))
            packed, state = run_rnn(stack, packed)
            h, c = state if isinstance(state, tuple) else (state, None)
            hidden.append(_directions_concatenated(h, stack))
            cell.append(None if c is None else _directions_concatenated(c, stack))
        outputs, _ = pad_packed_sequence(packed, batch_first=True, total_length=src.size(1))
        final_cell = None if cell[0] is None else torch.cat(cell)
        return outputs, torch.cat(hidden), final_cell

    def _run_segments(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        order = torch.argsort(lengths, descending=True, stable=True)
        sorted_lengths = lengths.index_select(0, order)
        x = self.dropout(self.embedding(src.index_select(0, order)))
        hidden, cell = [], []
        for layer, directions in enumerate(self.layer_directions):
            if layer > 0:
                x = self.dropout(x)
            stack_index, stack_layer = self.layer_positions[layer]
            stack = self.stacks[stack_index]
            outputs, layer_hidden, layer_cell = [], [], []
            for direction in range(directions):
                reverse = direction == 1
                inputs = reverse_padded(x, sorted_lengths) if reverse else x
                out, h, c = run_by_length(
                    partial(run_layer, stack, stack_layer, reverse), inputs, sorted_lengths
                )
                outputs.append(reverse_padded(out, sorted_lengths) if reverse else out)
                layer_hidden.append(h)
                layer_cell.append(c)
            x = torch.cat(outputs, dim=-1) if directions > 1 else outputs[0]
            hidden.append(torch.cat(layer_hidden, dim=-1))
            cell.append(None if layer_cell[0] is None else torch.cat(layer_cell, dim=-1))
        restore = torch.argsort(order)
        final_hidden = torch.stack(hidden).index_select(1, restore)
        final_cell = None if cell[0] is None else torch.stack(cell).index_select(1, restore)
        return x.index_select(0, restore), final_hidden, final_cell

    def _load_from_state_dict(
        self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Rename the keys of checkpoints from before the stacks (``rnns.N.<param>_l0``)."""
        old = f"{prefix}rnns."
        if any(key.startswith(old) for key in state_dict):
            modules = [
                (position, direction)
                for position, directions in zip(
                    self.layer_positions, self.layer_directions, strict=True
                )
                for direction in range(directions)
            ]
            for key in [k for k in state_dict if k.startswith(old)]:
                number, name = key[len(old) :].split(".", 1)
                (stack, layer), direction = modules[int(number)]
                param = name.removesuffix("_l0") + f"_l{layer}" + ("_reverse" if direction else "")
                state_dict[f"{prefix}stacks.{stack}.{param}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _directions_concatenated(state: Tensor, rnn: nn.RNNBase) -> Tensor:
    """``(layers * directions) x B x H`` final states as ``layers x B x (directions * H)``."""
    if not rnn.bidirectional:
        return state
    forward, backward = state.view(rnn.num_layers, 2, *state.shape[1:]).unbind(1)
    return torch.cat([forward, backward], dim=-1)


def run_by_length(
    rnn: Callable[[Tensor, RnnState], tuple[Tensor, RnnState]], x: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run a one-layer unidirectional RNN (``rnn(x, state)``, e.g. a :func:`run_layer` partial)
    over rows sorted by ``lengths`` (descending).

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
        out, state = rnn(x[:rows, start:end], state)
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
