"""One decoded output and its scores."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Hypothesis:
    """A finished output: piece ids without BOS/EOS, its (length-penalised) score and attention.

    ``positional_scores`` holds the log-probability of every emitted piece, EOS last, so
    ``sum(positional_scores)`` is the raw log-probability and ``score`` that divided by the
    length penalty (plus any coverage penalty).
    """

    tokens: list[int]
    score: float
    positional_scores: list[float] = field(default_factory=list)
    attention: Tensor | None = None  # (len(tokens) + 1) x source length, EOS row last
