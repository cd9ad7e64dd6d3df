"""The scorer contract searches run against, and its implementation over one or more models.

A scorer turns previous tokens into next-token log-probabilities. ``Ensemble([model])`` is the
ordinary case; several models average their log-probabilities (and attention). Searches only ever
call ``encode``, ``init_state``, ``step``, ``select_encoder`` and ``select_state``, so a scripted
fake scorer can test them.

``Ensemble.restricted(ids)`` scores only the pieces ``ids`` (a shortlist): its log-probabilities
have ``K`` columns, column ``k`` being piece ``ids[k]``, and the tokens a search feeds back are
column numbers, mapped to piece ids before the embedding. ``ids`` is sorted and starts with the
special pieces, so PAD, UNK, BOS and EOS keep their numbers and every search rule still applies.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from s2s_cli.data.spm import EOS
from s2s_cli.decoding.output import FullOutput, OutputLayer
from s2s_cli.models import products
from s2s_cli.models.encoder import EncoderOut
from s2s_cli.models.seq2seq import Seq2Seq


class Scorer(Protocol):
    def encode(self, src: Tensor, lengths: Tensor) -> Any: ...

    def init_state(self, enc: Any) -> Any: ...

    def step(self, prev_tokens: Tensor, state: Any, enc: Any) -> tuple[Tensor, Any, Tensor | None]:
        """Log-probabilities ``B x V`` (float32), the new state and attention ``B x S`` or None.

        The log-probabilities may live in a buffer the next step reuses: read them first.

        ``enc`` has ``B`` rows, or one row per ``k`` consecutive rows of ``state`` (beam search
        keeps one encoder row per sentence, its ``k`` beams adjacent).
        """
        ...

    def select_encoder(self, enc: Any, index: Tensor) -> Any:
        """The encoder output's rows ``index`` (sentences leaving the batch)."""
        ...

    def select_state(self, state: Any, index: Tensor) -> Any:
        """The decoder state's rows ``index`` (every step of a beam search)."""
        ...


class Ensemble:
    """One or more models with the same vocabularies, scored as one (averaged log-probs).

    ``outputs`` replace the models' own output layers (int8, or restricted to a shortlist);
    ``token_ids`` maps the column numbers a restricted ensemble scores to piece ids.
    """

    def __init__(
        self,
        models: list[Seq2Seq],
        outputs: list[OutputLayer] | None = None,
        token_ids: Tensor | None = None,
    ) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = models
        self.outputs: list[OutputLayer] = outputs or [FullOutput(m.decoder) for m in models]
        if len(self.outputs) != len(models):
            raise ValueError("an ensemble needs one output layer per model")
        self.token_ids = token_ids

    def restricted(self, ids: Tensor) -> Ensemble:
        """This ensemble scoring only the pieces ``ids`` (sorted, specials first); see above."""
        if ids.numel() <= EOS or ids[: EOS + 1].tolist() != list(range(EOS + 1)):
            raise ValueError("a restricted vocabulary must start with the special pieces")
        return Ensemble(self.models, [o.restrict(ids) for o in self.outputs], ids)

    def encode(self, src: Tensor, lengths: Tensor) -> list[Any]:
        return [_for_steps(m, m.encode(src, lengths)) for m in self.models]

    def init_state(self, encs: list[Any]) -> list[Any]:
        return [m.init_state(e) for m, e in zip(self.models, encs, strict=True)]

    def step(
        self, prev_tokens: Tensor, states: list[Any], encs: list[Any]
    ) -> tuple[Tensor, list[Any], Tensor | None]:
        lprobs, new_states, attentions = [], [], []
        if self.token_ids is not None:
            prev_tokens = self.token_ids.index_select(0, prev_tokens)
        for model, output, state, enc in zip(self.models, self.outputs, states, encs, strict=True):
            features, state, attention = model.decoder.step(prev_tokens, state, enc)
            logits = output(features)
            lprobs.append(_log_softmax(logits))
            new_states.append(state)
            attentions.append(attention)
        if len(lprobs) == 1:
            return lprobs[0], new_states, attentions[0]
        averaged = torch.log_softmax(torch.stack(lprobs).mean(0), dim=-1)
        attention = None
        if all(a is not None for a in attentions):
            attention = torch.stack([a.float() for a in attentions]).mean(0)
        return averaged, new_states, attention

    def select_encoder(self, encs: list[Any], index: Tensor) -> list[Any]:
        return [e.select(index) for e in encs]

    def select_state(self, states: list[Any], index: Tensor) -> list[Any]:
        return [s.select(index) for s in states]


def _for_steps(model: Seq2Seq, enc: EncoderOut) -> EncoderOut:
    """The encoder output as a CPU search of a bf16 model reads it: attention keys and values
    in float32 (:meth:`~s2s_cli.models.attention.Attention.float32_keys`)."""
    attention = model.decoder.attention
    if attention is None or enc.keys is None or enc.outputs.device.type != "cpu":
        return enc
    if products.cpu_autocast():  # (it would cast them back for every product)
        return enc
    keys, values = attention.float32_keys(enc.keys, enc.outputs)
    return enc._replace(keys=keys, outputs=values)


def _log_softmax(logits: Tensor) -> Tensor:
    """Float32 log-probabilities of ``logits``, on the CPU in place (in the output layer's
    buffer, :class:`~s2s_cli.decoding.output.LogitsBuffer`): the values are the out-of-place
    ones, without a fresh ``rows x V`` block per step."""
    scores = logits.float()
    if scores.device.type != "cpu":
        return torch.log_softmax(scores, dim=-1)
    return torch.log_softmax(scores, dim=-1, out=scores)
