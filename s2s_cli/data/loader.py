"""Batches as tensors: collation from the memory-mapped dataset and background prefetch.

Prefetch uses one thread, not worker processes: collating a batch is a few numpy copies out of
the memory map (well under a millisecond per batch), and on a 2-core machine extra processes
would steal cycles from the compute threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from s2s_cli.data.dataset import ParallelSplit
from s2s_cli.data.spm import BOS, EOS, PAD

T = TypeVar("T")


class Batch(NamedTuple):
    """A padded training batch. ``src`` ends with EOS; ``tgt_in`` starts with BOS and ``tgt_out``
    (the same pieces shifted) ends with EOS."""

    src: Tensor  # B x S
    src_lengths: Tensor  # B, EOS included
    tgt_in: Tensor  # B x T
    tgt_out: Tensor  # B x T, PAD beyond each length
    ids: Tensor  # B, sentence indices in the split
    # Token counts known on the host (-1: count from the tensors), so that the counts of a batch
    # on a GPU do not make the training loop wait for the device.
    source_count: int = -1
    target_count: int = -1

    @property
    def target_tokens(self) -> int:
        if self.target_count >= 0:
            return self.target_count
        return int((self.tgt_out != PAD).sum())

    def padding(self) -> tuple[int, int]:
        """(padded positions, all positions) over source and target."""
        source = self.source_count if self.source_count >= 0 else int(self.src_lengths.sum())
        real = source + self.target_tokens
        total = self.src.numel() + self.tgt_out.numel()
        return total - real, total

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            *(t.to(device, non_blocking=non_blocking) if isinstance(t, Tensor) else t for t in self)
        )


def source_tensor(sentences: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-padded ``B x S`` source ids with EOS appended, and their lengths."""
    lengths = np.fromiter((len(s) + 1 for s in sentences), dtype=np.int64, count=len(sentences))
    src = np.full((len(sentences), int(lengths.max())), PAD, dtype=np.int64)
    for row, sentence in enumerate(sentences):
        src[row, : len(sentence)] = sentence
        src[row, len(sentence)] = EOS
    return torch.from_numpy(src), torch.from_numpy(lengths)


def collate(split: ParallelSplit, indices: np.ndarray) -> Batch:
    pairs = [split[int(i)] for i in indices]
    src, src_lengths = source_tensor([p[0] for p in pairs])
    tgt_width = max(len(p[1]) for p in pairs) + 1
    tgt_in = np.full((len(pairs), tgt_width), PAD, dtype=np.int64)
    tgt_out = np.full((len(pairs), tgt_width), PAD, dtype=np.int64)
    for row, (_, target) in enumerate(pairs):
        n = len(target)
        tgt_in[row, 0] = BOS
        tgt_in[row, 1 : n + 1] = target
        tgt_out[row, :n] = target
        tgt_out[row, n] = EOS
    return Batch(
        src,
        src_lengths,
        torch.from_numpy(tgt_in),
        torch.from_numpy(tgt_out),
        torch.from_numpy(np.asarray(indices, dtype=np.int64)),
        int(src_lengths.sum()),
        sum(len(p[1]) + 1 for p in pairs),
    )


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead; errors re-raise in the caller."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as err:  # delivered to the consumer below
            buffer.put(_Failure(err))
        buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True, name="s2s-prefetch")
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue and wait for it: a thread still inside
        # torch when the interpreter exits is killed there, which aborts the whole process.
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.05)


class _Failure(NamedTuple):
    error: BaseException
