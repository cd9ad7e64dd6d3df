"""Score given references with teacher forcing (fairseq's ``--score-reference``, OpenNMT's
``-tgt``): the model's log-probability of each reference, batched like a search.

It runs through the scorer contract (``encode``, ``init_state``, ``step``), so an ensemble scores
a reference as it would score that translation during a search, and the result equals the
teacher-forced training loss (a test checks both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from s2s_cli.data.loader import source_tensor
from s2s_cli.data.spm import BOS, EOS, PAD
from s2s_cli.decoding.scorer import Scorer
from s2s_cli.decoding.search import length_sorted_batches


@dataclass
class ReferenceScore:
    """A reference's log-probability (natural log) under the model, EOS included."""

    logprob: float
    positional_scores: list[float]  # one per reference piece, then EOS

    @property
    def pieces(self) -> int:
        return len(self.positional_scores)


def corpus_perplexity(scores: Sequence[ReferenceScore | None]) -> tuple[float, int, float]:
    """(total log-probability, pieces, perplexity) over the scored references."""
    scored = [s for s in scores if s is not None]
    total = sum(s.logprob for s in scored)
    pieces = sum(s.pieces for s in scored)
    return total, pieces, math.exp(-total / pieces) if pieces else float("nan")


@torch.inference_mode()
def score_references(
    scorer: Scorer,
    sources: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    device: torch.device,
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> list[ReferenceScore | None]:
    """Each reference's teacher-forced log-probability given its source, in input order; None
    for an empty source (there is nothing to condition on)."""
    results: list[ReferenceScore | None] = [None] * len(sources)
    todo = [i for i, source in enumerate(sources) if len(source)]
    lengths = [len(sources[i]) for i in todo]
    for batch in length_sorted_batches(lengths, batch_size, max_tokens):
        positions = [todo[b] for b in batch]
        src, src_lengths = source_tensor([np.asarray(sources[p]) for p in positions])
        targets = [[*references[p], EOS] for p in positions]
        scores = _score_batch(scorer, src.to(device), src_lengths.to(device), targets, device)
        for position, target, row in zip(positions, targets, scores, strict=True):
            positional = row[: len(target)]
            results[position] = ReferenceScore(float(sum(positional)), positional)
    return results


def _score_batch(
    scorer: Scorer,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    targets: list[list[int]],
    device: torch.device,
) -> list[list[float]]:
    width = max(len(t) for t in targets)
    gold = torch.full((len(targets), width), PAD, dtype=torch.long)
    for row, target in enumerate(targets):
        gold[row, : len(target)] = torch.tensor(target)
    gold = gold.to(device)
    enc = scorer.encode(src, src_lengths)
    state = scorer.init_state(enc)
    previous = torch.full((len(targets),), BOS, dtype=torch.long, device=device)
    columns = []
    for step in range(width):
        lprobs, state, _ = scorer.step(previous, state, enc)
        columns.append(lprobs.gather(1, gold[:, step : step + 1]).squeeze(1))
        previous = gold[:, step]  # teacher forcing: the reference, not the model's choice
    return torch.stack(columns, dim=1).float().cpu().tolist()
