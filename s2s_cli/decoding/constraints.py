"""Rules that shape each step's log-probabilities and the final scores of a search.

Each is a small pure function so it can be tested alone: length limits, n-gram blocking, and the
length and coverage penalties.
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s_cli.config import DecodeConfig
from s2s_cli.data.spm import BOS, EOS, PAD


def shape_step(
    lprobs: Tensor, step: int, max_len: Tensor, history: Tensor, cfg: DecodeConfig
) -> Tensor:
    """Every search's per-step rules: length limits (:func:`constrain_step`), then n-gram
    blocking over ``history`` (rows x pieces emitted so far, BOS excluded)."""
    lprobs = constrain_step(lprobs, step, max_len, cfg.min_len)
    if cfg.no_repeat_ngram:
        lprobs = block_repeated_ngrams(lprobs, history, cfg.no_repeat_ngram)
    return lprobs


def final_score(log_prob: float, length: int, attention: Tensor | None, cfg: DecodeConfig) -> float:
    """A finished hypothesis's score: its log-probability over the length penalty of ``length``
    (pieces emitted, EOS included), plus the coverage penalty when its attention is known."""
    score = log_prob / length_penalty(length, cfg.lenpen, cfg.lenpen_style)
    if attention is not None:
        score += coverage_penalty(attention, cfg.coverage_penalty)
    return score


def max_lengths(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Most pieces (EOS excluded) each output may have: ``a * source length + b``.

    Source lengths exclude the EOS the model input ends with.
    """
    return (a * src_lengths.float() + b).floor().long().clamp(min=1)


def constrain_step(lprobs: Tensor, step: int | Tensor, max_len: Tensor, min_len: int) -> Tensor:
    """Forbid PAD/BOS always, EOS before ``min_len`` pieces, anything but EOS at ``max_len``.

    ``lprobs`` is ``rows x V`` for the piece at position ``step`` (0-based); ``max_len`` is per row.
    ``step`` may be a one-element tensor on the device (a step replayed as a CUDA graph, which
    must not branch on it).
    """
    lprobs[:, PAD] = float("-inf")
    lprobs[:, BOS] = float("-inf")
    if isinstance(step, Tensor):
        if min_len > 0:
            lprobs[:, EOS] = torch.where(step < min_len, float("-inf"), lprobs[:, EOS])
    elif step < min_len:
        lprobs[:, EOS] = float("-inf")
    at_limit = max_len <= step
    # On the CPU the check is free and usually spares a pass over the scores; on CUDA it would
    # make every step wait for the device, so the masked update always runs there.
    if lprobs.device.type == "cpu" and not bool(at_limit.any()):
        return lprobs
    eos_scores = lprobs[:, EOS].clone()
    lprobs.masked_fill_(at_limit.unsqueeze(1), float("-inf"))
    forced = torch.where(torch.isfinite(eos_scores), eos_scores, 0.0)
    lprobs[:, EOS] = torch.where(at_limit, forced, eos_scores)
    return lprobs


def block_repeated_ngrams(lprobs: Tensor, history: Tensor, n: int) -> Tensor:
    """Forbid any piece that would complete an ``n``-gram already in that row's ``history``.

    ``history`` is ``rows x t`` (the pieces emitted so far, BOS excluded).
    """
    steps = history.size(1)
    if n <= 0 or steps < n:
        return lprobs
    windows = history.unfold(1, n, 1)  # rows x (t - n + 1) x n
    prefix = history[:, steps - n + 1 :] if n > 1 else history[:, :0]
    matches = (windows[:, :, : n - 1] == prefix.unsqueeze(1)).all(-1)  # rows x windows
    rows, positions = matches.nonzero(as_tuple=True)
    if rows.numel():
        lprobs[rows, windows[rows, positions, n - 1]] = float("-inf")
    return lprobs


def length_penalty(length: int | Tensor, alpha: float, style: str) -> float | Tensor:
    """Divisor for a raw log-probability; ``length`` counts emitted pieces including EOS."""
    if alpha == 0.0:
        return 1.0 if isinstance(length, int) else torch.ones_like(length, dtype=torch.float)
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    return length**alpha if isinstance(length, int) else length.float() ** alpha


def coverage_penalty(attention: Tensor, beta: float) -> float:
    """GNMT's ``beta * sum_i log(min(sum_t a_ti, 1))`` for one hypothesis's ``T x S`` attention."""
    if beta == 0.0:
        return 0.0
    coverage = attention.float().sum(0).clamp(min=1e-6, max=1.0)
    return beta * float(coverage.log().sum())
