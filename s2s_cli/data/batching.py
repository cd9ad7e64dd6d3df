"""Token-budget batches from length buckets, deterministic per (seed, epoch), sharded by rank.

Sentences are sorted by (target length, source length) with a seeded random tie-break and cut
into consecutive batches whose padded size ``sentences x longest side`` stays within
``max_tokens``; the batch order is then shuffled. Neighbours in the sort have nearly equal lengths,
so padding stays low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, epoch]))


def make_batches(
    src_sizes: np.ndarray,
    tgt_sizes: np.ndarray,
    max_tokens: int,
    max_sentences: int | None,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[np.ndarray]:
    """Index arrays, one per batch; sizes are model-side lengths (EOS/BOS included by caller)."""
    count = len(src_sizes)
    if count == 0:
        return []
    rng = epoch_rng(seed, epoch)
    tie_break = rng.permutation(count) if shuffle else np.arange(count)
    order = tie_break[np.lexsort((src_sizes[tie_break], tgt_sizes[tie_break]))]
    longest = np.maximum(src_sizes, tgt_sizes)[order]
    batches = _cut(order, longest, max_tokens, max_sentences or count)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _cut(
    order: np.ndarray, longest: np.ndarray, max_tokens: int, max_sentences: int
) -> list[np.ndarray]:
    """Consecutive batches, each as long as ``sentences x widest <= max_tokens`` and
    ``sentences <= max_sentences`` allow (a lone sentence over the budget is its own batch).

    Array operations per batch, not a Python step per sentence: over millions of sentences the
    per-sentence loop was seconds of start-up in every epoch. A batch starting with a sentence of
    ``w`` pieces holds at most ``max_tokens // w`` sentences, so each step looks at no more.
    """
    batches = []
    start, count = 0, len(order)
    while start < count:
        limit = max(1, min(max_sentences, max_tokens // max(1, int(longest[start]))))
        widths = np.maximum.accumulate(longest[start : start + limit])
        sizes = np.arange(1, len(widths) + 1)
        # true for a prefix, then false: widths x sizes only grows
        size = max(1, int(np.count_nonzero(widths * sizes <= max_tokens)))
        batches.append(order[start : start + size])
        start += size
    return batches


@dataclass(frozen=True)
class Shard:
    """Which micro-batches of each update belong to this rank."""

    rank: int = 0
    world_size: int = 1
    update_freq: int = 1

    @property
    def batches_per_update(self) -> int:
        return self.world_size * self.update_freq

    def updates_in(self, batches: list[np.ndarray]) -> int:
        """Whole updates in an epoch of ``batches`` (a tail too short for one is dropped)."""
        return len(batches) // self.batches_per_update

    def micro_batches(self, batches: list[np.ndarray], update: int) -> list[np.ndarray]:
        """This rank's ``update_freq`` micro-batches for update ``update`` of the epoch."""
        group = batches[update * self.batches_per_update : (update + 1) * self.batches_per_update]
        return group[self.rank :: self.world_size]
