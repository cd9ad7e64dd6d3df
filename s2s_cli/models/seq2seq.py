"""The encoder-decoder and the decoding contract that training and every search share.

* ``encode(src, lengths) -> EncoderOut``
* ``init_state(enc) -> DecoderState``
* ``step(prev_tokens, state, enc) -> (logits, state, attention)``
* ``forward(src, lengths, tgt_in) -> logits``
* ``EncoderOut.select(index)`` / ``DecoderState.select(index)`` reorder along the batch.

State is passed in and out; modules keep none. Tensors are batch-first; ``src`` is right-padded
with PAD (0) and ends with EOS; ``tgt_in`` starts with BOS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s_cli.data.spm import EOS, UNK
from s2s_cli.models.decoder import Decoder, DecoderState
from s2s_cli.models.encoder import Encoder, EncoderOut
from s2s_cli.models.recurrent import has_cell_state


class Bridge(nn.Module):
    """Decoder initial state from the encoder's final state: ``zero``, ``last``, ``last_hidden``
    (the final hidden state with a zero LSTM cell, as in Saito's reference implementation) or
    ``bridge``.

    ``bridge`` is a learned ``tanh(W s + b)`` from the encoder summary to every decoder layer, so
    encoder and decoder may differ in size, layer count and direction.
    """

    def __init__(
        self, kind: str, *, cell: str, encoder_size: int, hidden_size: int, layers: int
    ) -> None:
        super().__init__()
        self.kind = kind
        self.layers = layers
        self.hidden_size = hidden_size
        self.has_cell = has_cell_state(cell)
        if kind == "bridge":
            self.hidden_proj = nn.Linear(encoder_size, layers * hidden_size)
            self.cell_proj = (
                nn.Linear(encoder_size, layers * hidden_size) if self.has_cell else None
            )

    def forward(self, enc: EncoderOut) -> tuple[Tensor, Tensor | None]:
        batch = enc.outputs.size(0)
        if self.kind == "last":
            return enc.final_hidden, enc.final_cell if self.has_cell else None
        if self.kind == "last_hidden":  # the hidden state only; an LSTM cell starts at zero
            cell = torch.zeros_like(enc.final_hidden) if self.has_cell else None
            return enc.final_hidden, cell
        if self.kind == "zero":
            # (the state's dtype is the encoder state's: a search may hold the outputs in float32)
            zeros = enc.final_hidden.new_zeros(self.layers, batch, self.hidden_size)
            return zeros, zeros if self.has_cell else None
        hidden = self._project(self.hidden_proj, enc.final_hidden[-1])
        cell = None
        if self.cell_proj is not None:
            assert enc.final_cell is not None
            cell = self._project(self.cell_proj, enc.final_cell[-1])
        return hidden, cell

    def _project(self, proj: nn.Linear, summary: Tensor) -> Tensor:
        out = torch.tanh(proj(summary))  # B x (layers * H)
        return out.view(-1, self.layers, self.hidden_size).transpose(0, 1).contiguous()


class Seq2Seq(nn.Module):
    """RNN encoder-decoder with optional attention."""

    def __init__(
        self, encoder: Encoder, decoder: Decoder, bridge: Bridge, *, word_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.bridge = bridge
        self.word_dropout = word_dropout

    # -- the decoding contract ----------------------------------------------------------------

    def encode(self, src: Tensor, lengths: Tensor) -> EncoderOut:
        outputs, pad_mask, hidden, cell = self.encoder(src, lengths)
        attention = self.decoder.attention
        keys = None if attention is None else attention.project_keys(outputs)
        return EncoderOut(outputs, pad_mask, hidden, cell, keys)

    def init_state(self, enc: EncoderOut) -> DecoderState:
        hidden, cell = self.bridge(enc)
        feed = None
        if self.decoder.input_feeding:
            feed = enc.final_hidden.new_zeros(enc.outputs.size(0), self.decoder.hidden_size)
        return DecoderState(hidden, cell, feed)

    def step(
        self, prev_tokens: Tensor, state: DecoderState, enc: EncoderOut
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """Logits ``B x V`` for the next token, the new state and attention ``B x S`` (or None)."""
        features, state, attention = self.decoder.step(prev_tokens, state, enc)
        return self.decoder.project(features), state, attention

    def forward(self, src: Tensor, lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``B x T x V``."""
        features, _ = self.features(src, lengths, tgt_in)
        return self.decoder.project(features)

    # -- training helpers ----------------------------------------------------------------------

    def features(
        self,
        src: Tensor,
        lengths: Tensor,
        tgt_in: Tensor,
        teacher_forcing: float = 1.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Pre-output features ``B x T x F`` and attention ``B x T x S`` for a target prefix.

        The output projection is left to the caller, so training can apply it to non-padding
        positions only. ``teacher_forcing < 1`` feeds back the model's own greedy prediction
        with probability ``1 - teacher_forcing`` per sentence and step (scheduled sampling).
        In training, ``word_dropout`` replaces that share of the input words by ``<unk>``.
        """
        if self.training and self.word_dropout > 0:
            src, tgt_in = drop_words(src, self.word_dropout), drop_words(tgt_in, self.word_dropout)
        enc = self.encode(src, lengths)
        state = self.init_state(enc)
        if self.decoder.fused and teacher_forcing >= 1.0:
            return self.decoder.forward_fused(tgt_in, state, enc)
        # training's step loop (input feeding, Bahdanau): weight gradients once per batch
        deferred = self.training and torch.is_grad_enabled() and teacher_forcing >= 1.0
        if deferred and self.decoder.can_run_steps(tgt_in.device):
            return self.decoder.forward_steps(tgt_in, state, enc)
        return self._features_by_step(tgt_in, state, enc, teacher_forcing)

    def _features_by_step(
        self, tgt_in: Tensor, state: DecoderState, enc: EncoderOut, teacher_forcing: float
    ) -> tuple[Tensor, Tensor | None]:
        features, attentions = [], []
        prev = tgt_in[:, 0]
        for t in range(tgt_in.size(1)):
            if t > 0:
                prev = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    predicted = self.decoder.project(features[-1].detach()).argmax(-1)
                    use_model = torch.rand(prev.shape, device=prev.device) >= teacher_forcing
                    prev = torch.where(use_model, predicted, prev)
            feature, state, attention = self.decoder.step(prev, state, enc)
            features.append(feature)
            attentions.append(attention)
        stacked_attention = None if attentions[0] is None else torch.stack(attentions, dim=1)
        return torch.stack(features, dim=1), stacked_attention


def drop_words(tokens: Tensor, rate: float) -> Tensor:
    """``tokens`` with each word (not PAD, BOS, EOS or UNK) replaced by UNK with probability
    ``rate``, token by token: word dropout (Sennrich et al. 2016; Gal and Ghahramani 2016 drop
    whole word types instead), a regulariser for small corpora that also trains ``<unk>``."""
    words = tokens > EOS  # the special ids are 0-3
    dropped = words & (torch.rand(tokens.shape, device=tokens.device) < rate)
    return tokens.masked_fill(dropped, UNK)
