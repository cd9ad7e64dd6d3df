"""Sampling: draw each next piece from the (temperature-scaled, top-k-truncated) distribution."""

from __future__ import annotations

import torch
from torch import Tensor

from s2s_cli.config import DecodeConfig
from s2s_cli.decoding.greedy import single_path_search
from s2s_cli.decoding.hypothesis import Hypothesis
from s2s_cli.decoding.scorer import Scorer


def sample(
    scorer: Scorer,
    src: Tensor,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    generator: torch.Generator | None = None,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """``cfg.nbest`` independent samples per sentence, sorted by score.

    Scores are the model's own log-probabilities of the sampled pieces (temperature and top-k
    shape the draw only), so they compare with beam-search scores.
    """
    copies = cfg.nbest
    index = torch.arange(src.size(0), device=src.device).repeat_interleave(copies)
    choose = _sampler(cfg.temperature, cfg.topk, generator)
    flat = single_path_search(
        scorer,
        src.index_select(0, index),
        src_lengths.index_select(0, index),
        cfg,
        choose,
        keep_attention,
    )
    grouped = [flat[i * copies : (i + 1) * copies] for i in range(src.size(0))]
    return [sorted((h[0] for h in group), key=lambda h: h.score, reverse=True) for group in grouped]


def _sampler(temperature: float, topk: int | None, generator: torch.Generator | None):
    def choose(lprobs: Tensor) -> Tensor:
        logits = lprobs / temperature
        if topk is not None and topk < logits.size(-1):
            kth = logits.topk(topk, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return choose
