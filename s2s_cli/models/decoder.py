"""The recurrent decoder: every classic variant behind one ``step`` and one fused ``forward``.

One decoder step, for attention placement ``luong`` (attention after the RNN)::

    x_t = [emb(y_{t-1}); o_{t-1} if input feeding; s if peeky]
    h_t = RNN(x_t, h_{t-1});  c_t, a_t = attend(h_t);  o_t = tanh(W [c_t; h_t])
    logits_t = out([o_t; s if peeky])

and for ``bahdanau`` (attention before the RNN, from the previous state)::

    c_t, a_t = attend(h_{t-1});  x_t = [emb(y_{t-1}); c_t; o_{t-1}?; s?]
    h_t = RNN(x_t, h_{t-1});  o_t = tanh(W [c_t; h_t])

Without attention ``o_t = h_t``. ``s`` is the encoder summary (peeky, Cho et al. 2014). When no
step depends on the previous one except through the RNN state (no input feeding, luong or no
attention), :meth:`Decoder.forward_fused` runs the RNN over the whole target in one call and
attends for all steps with batched matrix products.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from s2s_cli.models import products, recurrent
from s2s_cli.models.attention import Attention
from s2s_cli.models.deferred import DeferredLinear
from s2s_cli.models.dropout import Dropout
from s2s_cli.models.dropout import dropout as functional_dropout
from s2s_cli.models.encoder import EncoderOut
from s2s_cli.models.recurrent import RNN_CLASSES, run_rnn

# Whether CPU training runs an LSTM decoder's step loop through :meth:`Decoder.forward_steps`
# (weight gradients once per batch); benchmarks/model_step.py --deferred compares both.
DEFER_WEIGHT_GRADIENTS = True


class DecoderState(NamedTuple):
    """Recurrent state between steps; ``select`` reorders it along the batch (beam search)."""

    hidden: Tensor  # layers x B x Hd
    cell: Tensor | None  # layers x B x Hd (LSTM only)
    feed: Tensor | None  # B x Hd previous attentional vector (input feeding only)

    def select(self, index: Tensor) -> DecoderState:
        return DecoderState(
            self.hidden.index_select(1, index),
            None if self.cell is None else self.cell.index_select(1, index),
            None if self.feed is None else self.feed.index_select(0, index),
        )

    def rnn_state(self) -> Tensor | tuple[Tensor, Tensor]:
        return self.hidden if self.cell is None else (self.hidden, self.cell)


class Decoder(nn.Module):
    """Target embeddings, RNN stack, attention, attentional layer and output projection."""

    def __init__(
        self,
        embedding: nn.Embedding,
        *,
        cell: str,
        hidden_size: int,
        layers: int,
        encoder_size: int,
        attention: str,
        placement: str,
        input_feeding: bool,
        peeky: bool,
        tie_embeddings: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.cell = cell
        self.hidden_size = hidden_size
        self.layers = layers
        self.input_feeding = input_feeding
        self.peeky = peeky
        self.placement = placement
        self.attention = (
            None if attention == "none" else Attention(attention, hidden_size, encoder_size)
        )
        self.attend_first = self.attention is not None and placement == "bahdanau"
        embed_dim = embedding.embedding_dim
        rnn_input = (
            embed_dim
            + (hidden_size if input_feeding else 0)
            + (encoder_size if self.attend_first else 0)
            + (encoder_size if peeky else 0)
        )
        self.rnn = RNN_CLASSES[cell](
            rnn_input,
            hidden_size,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )
        self.combine = (
            None
            if self.attention is None
            else nn.Linear(encoder_size + hidden_size, hidden_size, bias=False)
        )
        self.dropout = Dropout(dropout)
        feature_size = hidden_size + (encoder_size if peeky else 0)
        self.output_bias = nn.Parameter(torch.zeros(embedding.num_embeddings))
        if tie_embeddings:
            # Logits come from the (shared) embedding matrix, so features must be embed_dim wide.
            self.pre_output = nn.Linear(feature_size, embed_dim, bias=False)
            self.output_weight = None
        else:
            self.pre_output = None
            self.output_weight = nn.Parameter(torch.empty(embedding.num_embeddings, feature_size))
            nn.init.normal_(self.output_weight, std=feature_size**-0.5)

    @property
    def fused(self) -> bool:
        """Whether training can run the whole target sequence in one RNN call."""
        return not self.input_feeding and not self.attend_first

    def output_layer(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(inputs, weight, bias)``: ``logits = inputs @ weight.T + bias`` (for fused losses)."""
        if self.pre_output is not None:
            return self.pre_output(features), self.embedding.weight, self.output_bias
        return features, self.output_weight, self.output_bias

    def output_matrix(self) -> tuple[Tensor, Tensor]:
        """``(weight V x E, bias V)`` of the output layer: the (tied) embedding or its own."""
        weight = self.embedding.weight if self.pre_output is not None else self.output_weight
        assert weight is not None
        return weight, self.output_bias

    def project(self, features: Tensor) -> Tensor:
        """Output layer: features (any leading shape) -> logits over the target vocabulary."""
        if self.pre_output is not None:
            return nn.functional.linear(
                self.pre_output(features), self.embedding.weight, self.output_bias
            )
        return nn.functional.linear(features, self.output_weight, self.output_bias)

    def step(
        self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOut
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step for previous tokens ``B``: features ``B x F``, the new state, attention.

        ``enc`` may hold one row per ``k`` consecutive rows of ``state`` (a beam search keeps one
        encoder row per sentence for its ``k`` beams): attention then reads each sentence's
        encoder output once for all its beams instead of from ``k`` copies.
        """
        inputs = [self.dropout(self.embedding(prev_tokens))]
        context = weights = None
        if self.attend_first:
            context, weights = self._attend(state.hidden[-1], enc)
            inputs.append(context)
        if self.input_feeding:
            inputs.append(state.feed)
        if self.peeky:
            inputs.append(_per_row(enc.summary, prev_tokens.size(0)))
        hidden_top, rnn_state = self._rnn_step(torch.cat(inputs, dim=-1), state)
        if self.attention is not None and not self.attend_first:
            context, weights = self._attend(hidden_top, enc)
        attentional = self._attentional(hidden_top, context)
        hidden, cell = rnn_state if isinstance(rnn_state, tuple) else (rnn_state, None)
        new_state = DecoderState(hidden, cell, attentional if self.input_feeding else None)
        return self._features(attentional, enc), new_state, weights

    def _rnn_step(self, x: Tensor, state: DecoderState) -> tuple[Tensor, Any]:
        """The RNN stack for one step: the top layer's output ``B x Hd`` and the new state."""
        if self._lstm_step_by_products(x):
            assert state.cell is not None
            return _lstm_step(self.rnn, x, state.hidden, state.cell)
        output, rnn_state = run_rnn(self.rnn, x.unsqueeze(1), state.rnn_state())
        return output.squeeze(1), rnn_state

    def _lstm_step_by_products(self, x: Tensor) -> bool:
        """Whether a decoding step runs the LSTM as two products per layer (:func:`_lstm_step`):
        on the CPU, outside training and ONNX tracing (which exports the LSTM operator)."""
        return (
            recurrent.plain_call_on(x)
            and not self.training
            and type(self.rnn) is nn.LSTM  # not int8's quantized LSTM
            and self.rnn.proj_size == 0
            and not torch.jit.is_tracing()
        )

    def forward_fused(
        self, tgt_in: Tensor, state: DecoderState, enc: EncoderOut
    ) -> tuple[Tensor, Tensor | None]:
        """All target steps at once (only when :attr:`fused`): features ``B x T x F``, attention."""
        assert self.fused
        embedded = self.dropout(self.embedding(tgt_in))
        if self.peeky:
            summary = enc.summary.unsqueeze(1).expand(-1, tgt_in.size(1), -1)
            embedded = torch.cat([embedded, summary], dim=-1)
        hidden, _ = run_rnn(self.rnn, embedded, state.rnn_state())
        context = weights = None
        if self.attention is not None:
            assert enc.keys is not None
            context, weights = self.attention(hidden, enc.keys, enc.outputs, enc.pad_mask)
        return self._features(self._attentional(hidden, context), enc), weights

    def can_run_steps(self, device: torch.device) -> bool:
        """Whether teacher-forced training can use :meth:`forward_steps` (LSTM, on the CPU)."""
        return DEFER_WEIGHT_GRADIENTS and self.cell == "lstm" and device.type == "cpu"

    def forward_steps(
        self, tgt_in: Tensor, state: DecoderState, enc: EncoderOut
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced features ``B x T x F`` and attention, step by step as :meth:`step`
        computes them, for training: the embedding (and peeky summary) part of the first layer's
        input projection is one product for all steps, and every weight the steps share gets
        its gradient once per batch (:class:`DeferredLinear`) instead of once per step."""
        rnn = self.rnn
        embedded = self.dropout(self.embedding(tgt_in))
        static = [embedded]
        if self.peeky:
            static.append(enc.summary.unsqueeze(1).expand(-1, tgt_in.size(1), -1))
        # weight_ih_l0's columns follow step()'s input: [embedding, context?, feed?, summary?]
        embed_dim = embedded.size(-1)
        stepwise = rnn.input_size - embed_dim - (enc.summary.size(-1) if self.peeky else 0)
        w_ih = rnn.weight_ih_l0
        w_static = torch.cat([w_ih[:, :embed_dim], w_ih[:, embed_dim + stepwise :]], dim=1)
        biases = [_layer_bias(rnn, layer) for layer in range(self.layers)]
        # (unbind, not [:, t]: the backward of [:, t] fills a whole B x T x 4H zero tensor per step)
        static_gates = nn.functional.linear(torch.cat(static, dim=-1), w_static, biases[0])
        static_steps = static_gates.unbind(1)
        # each layer's per-step product: [its step-dependent inputs; its hidden state] @ W.T
        step_inputs = [w_ih[:, embed_dim : embed_dim + stepwise]] + [
            getattr(rnn, f"weight_ih_l{layer}") for layer in range(1, self.layers)
        ]
        recurrent = [
            DeferredLinear(torch.cat([w_in, getattr(rnn, f"weight_hh_l{layer}")], dim=1))
            for layer, w_in in enumerate(step_inputs)
        ]
        combine = None if self.combine is None else DeferredLinear(self.combine.weight)
        hidden = list(state.hidden.unbind(0))
        assert state.cell is not None
        cell = [c.float() for c in state.cell.unbind(0)]  # the cell state stays in fp32
        feed = state.feed
        features, attentions = [], []
        for t in range(tgt_in.size(1)):
            inputs, context, weights = [], None, None
            if self.attend_first:
                context, weights = self._attend(hidden[-1], enc)
                inputs.append(context)
            if self.input_feeding:
                assert feed is not None
                inputs.append(feed)
            for layer in range(self.layers):
                if layer == 0:
                    gates = static_steps[t] + recurrent[0](torch.cat([*inputs, hidden[0]], -1))
                else:
                    below = functional_dropout(hidden[layer - 1], rnn.dropout, self.training)
                    gates = recurrent[layer](torch.cat([below, hidden[layer]], -1))
                    if biases[layer] is not None:
                        gates = gates + biases[layer]
                hidden[layer], cell[layer] = _lstm_cell(gates.float(), cell[layer])
            top = hidden[-1]
            if self.attention is not None and not self.attend_first:
                context, weights = self._attend(top, enc)
            attentional = self._attentional(top, context, combine)
            feed = attentional
            features.append(self._features(attentional, enc))
            attentions.append(weights)
        stacked_attention = None if attentions[0] is None else torch.stack(attentions, dim=1)
        return torch.stack(features, dim=1), stacked_attention

    def _attend(self, query: Tensor, enc: EncoderOut) -> tuple[Tensor, Tensor]:
        assert self.attention is not None and enc.keys is not None
        # each sentence's k rows (k = 1, or its adjacent beams) are its k queries at once
        queries = query.reshape(enc.keys.size(0), -1, query.size(-1))
        context, weights = self.attention(queries, enc.keys, enc.outputs, enc.pad_mask)
        return context.reshape(query.size(0), -1), weights.reshape(query.size(0), -1)

    def _attentional(
        self, hidden: Tensor, context: Tensor | None, combine: DeferredLinear | None = None
    ) -> Tensor:
        """``tanh(W [c; h])`` through ``self.combine``, or ``combine`` (forward_steps' deferred
        product of the same weight)."""
        if self.combine is None or context is None:
            return hidden
        joined = torch.cat([context, hidden], dim=-1)
        if combine is not None:
            return torch.tanh(combine(joined))
        if self.training or joined.dim() != 2 or type(self.combine) is not nn.Linear:
            return torch.tanh(self.combine(joined))  # (int8 decoding: a quantized layer)
        return torch.tanh(products.step_linear(joined, self.combine.weight))  # a decoding step

    def _features(self, attentional: Tensor, enc: EncoderOut) -> Tensor:
        features = attentional
        if self.peeky:
            summary = _per_row(enc.summary, attentional.size(0))
            if attentional.dim() == 3:
                summary = summary.unsqueeze(1).expand(-1, attentional.size(1), -1)
            features = torch.cat([attentional, summary], dim=-1)
        return self.dropout(features)


def _per_row(summary: Tensor, rows: int) -> Tensor:
    """The encoder summary (one row per sentence) repeated for ``rows`` rows (a sentence's beams
    are adjacent)."""
    if summary.size(0) == rows:
        return summary
    # (an expanded view, not repeat_interleave, which may wait on the device to size its output)
    per_sentence = rows // summary.size(0)
    return summary.unsqueeze(1).expand(-1, per_sentence, -1).reshape(rows, -1)


def _layer_bias(rnn: nn.RNNBase, layer: int) -> Tensor | None:
    """The two biases of an RNN layer summed (they are always added together)."""
    if not rnn.bias:
        return None
    return getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")


def _lstm_step(
    rnn: nn.LSTM, x: Tensor, hidden: Tensor, cell: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One step of an LSTM stack (eval mode) as ``nn.LSTM`` computes it, up to rounding: per
    layer ``gates = b + x W_ih^T + h W_hh^T`` and the elementwise update in float32.

    On the CPU, oneDNN's RNN primitive costs ~1.7x these products for a single fp32 step (9.9
    vs 5.7 ms at 320 rows on a Xeon: it prepares its weights at every call; docs/benchmarks.md,
    "Decoding on the CPU"). The state keeps the dtypes it came in (bf16 for a bf16 model); the
    update itself runs in float32.
    """
    new_hidden, new_cell = [], []
    for layer in range(rnn.num_layers):
        w_ih = getattr(rnn, f"weight_ih_l{layer}")
        w_hh = getattr(rnn, f"weight_hh_l{layer}")
        bias = _layer_bias(rnn, layer)
        h_prev = hidden[layer]
        if products.packs(x, w_ih):  # [x; h] @ [W_ih W_hh]^T: one product, its weight packed
            gates = products.packed_linear(torch.cat([x, h_prev], dim=1), (w_ih, w_hh), bias)
        else:
            gates = _two_products(x, h_prev, w_ih, w_hh, bias)
        h, c = _lstm_cell(gates.float(), cell[layer].float())
        h = h.to(hidden.dtype)
        new_hidden.append(h)
        new_cell.append(c.to(cell.dtype))
        x = h  # inter-layer dropout is a training-time rule; this path runs in eval mode
    return h, (torch.stack(new_hidden), torch.stack(new_cell))


def _two_products(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None) -> Tensor:
    """``bias + x W_ih^T + h W_hh^T`` as two products, rows rounded up where
    :func:`~s2s_cli.models.products.rounds_rows` says (the first rows are returned)."""
    rows = x.size(0)
    if products.rounds_rows(x, w_ih):
        x, h = products.padded_rows(x), products.padded_rows(h)
    # out of place, so autocast casts every product (it skips in-place ops)
    if bias is None:
        gates = torch.mm(x, w_ih.t()) + torch.mm(h, w_hh.t())
    else:
        gates = torch.addmm(torch.addmm(bias, x, w_ih.t()), h, w_hh.t())
    return gates[:rows]


def _lstm_cell(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update from its pre-activations ``B x 4H`` (PyTorch's gate order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell
