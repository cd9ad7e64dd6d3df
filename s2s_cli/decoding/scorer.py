"""The scorer contract searches run against, and its implementation over one or more models.

A scorer turns previous tokens into next-token log-probabilities. ``Ensemble([model])`` is the
ordinary case; several models average their log-probabilities (and attention). Searches only ever
call ``encode``, ``init_state``, ``step``, ``select_encoder`` and ``select_state``, so a scripted
fake scorer can test them.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from s2s_cli.models.seq2seq import Seq2Seq


class Scorer(Protocol):
    def encode(self, src: Tensor, lengths: Tensor) -> Any: ...

    def init_state(self, enc: Any) -> Any: ...

    def step(self, prev_tokens: Tensor, state: Any, enc: Any) -> tuple[Tensor, Any, Tensor | None]:
        """Log-probabilities ``B x V`` (float32), the new state and attention ``B x S`` or None."""
        ...

    def select_encoder(self, enc: Any, index: Tensor) -> Any:
        """The encoder output's rows ``index`` (sentences leaving, beams being laid out)."""
        ...

    def select_state(self, state: Any, index: Tensor) -> Any:
        """The decoder state's rows ``index`` (every step of a beam search)."""
        ...


class Ensemble:
    """One or more models with the same vocabularies, scored as one (averaged log-probs)."""

    def __init__(self, models: list[Seq2Seq]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = models

    def encode(self, src: Tensor, lengths: Tensor) -> list[Any]:
        return [m.encode(src, lengths) for m in self.models]

    def init_state(self, encs: list[Any]) -> list[Any]:
        return [m.init_state(e) for m, e in zip(self.models, encs, strict=True)]

    def step(
        self, prev_tokens: Tensor, states: list[Any], encs: list[Any]
    ) -> tuple[Tensor, list[Any], Tensor | None]:
        lprobs, new_states, attentions = [], [], []
        for model, state, enc in zip(self.models, states, encs, strict=True):
            logits, state, attention = model.step(prev_tokens, state, enc)
            lprobs.append(torch.log_softmax(logits.float(), dim=-1))
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
