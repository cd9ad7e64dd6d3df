"""A lexical shortlist: the target pieces a batch may produce, learned from the training data.

Most of a CPU decoding step is the ``V x E`` output layer. A sentence's translation draws on a
few hundred pieces: the most frequent target pieces (function words, punctuation) and the
translations of its own source pieces. :func:`build_shortlist` learns, for every source piece,
the ``per_source`` target pieces most associated with it in the training data (Dice coefficient
over sentence co-occurrence: ``2 c(s, t) / (c(s) + c(t))``, which ranks a piece's translations
above pieces that are merely frequent), plus the ``frequent`` most frequent target pieces.
:meth:`Shortlist.for_batch` takes the union for a batch of sources; the search then scores only
those pieces (:meth:`s2s_cli.decoding.scorer.Ensemble.restricted`), exactly as a softmax over that
subset. The list depends on the batch, so a sentence's output may depend on its batch-mates
(the union only grows with them).

Counting streams over the memory-mapped training split in chunks: memory holds the distinct
(source, target) pairs seen, never the corpus.

File format (``.npz``, written atomically): ``candidates`` (source vocabulary x ``per_source``,
int32, -1 where a piece has fewer), ``frequent`` (int32), ``src_vocab``/``tgt_vocab`` and the
SHA-256 of both SentencePiece models, so a list is never applied to a model it was not built for.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from s2s_cli.data.dataset import Dataset, ParallelSplit
from s2s_cli.data.spm import EOS
from s2s_cli.errors import CheckpointError, DataError
from s2s_cli.io import atomic_path

FORMAT_VERSION = 1
CHUNK_SENTENCES = 20_000
SPECIALS = np.arange(EOS + 1, dtype=np.int64)  # PAD, UNK, BOS, EOS: always scored


def spm_digest(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest()


@dataclass
class Shortlist:
    candidates: np.ndarray  # src_vocab x per_source int32, -1 padded
    frequent: np.ndarray  # int32 target piece ids, most frequent first
    tgt_vocab: int
    src_spm_sha256: str
    tgt_spm_sha256: str

    @property
    def src_vocab(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def per_source(self) -> int:
        return int(self.candidates.shape[1])

    def for_batch(self, src: Tensor) -> Tensor:
        """Sorted piece ids a batch of sources (``B x S``, padded) may produce: the special
        pieces, the frequent ones, and every source piece's candidates."""
        source_ids = torch.unique(src).cpu().numpy()
        source_ids = source_ids[(source_ids > EOS) & (source_ids < self.src_vocab)]
        candidates = self.candidates[source_ids].ravel()
        ids = np.unique(np.concatenate([SPECIALS, self.frequent, candidates[candidates >= 0]]))
        return torch.from_numpy(ids.astype(np.int64)).to(src.device)

    def check_matches(self, src_spm: bytes, tgt_spm: bytes, path: Path | str, model: str) -> None:
        """Refuse a list built for other vocabularies than the model's."""
        if spm_digest(src_spm) != self.src_spm_sha256 or spm_digest(tgt_spm) != self.tgt_spm_sha256:
            raise CheckpointError(
                f"{path}: this shortlist was built for other SentencePiece models than {model}'s; "
                "build one from the model's own training data (s2s shortlist)"
            )

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            version=np.int64(FORMAT_VERSION),
            candidates=self.candidates.astype(np.int32),
            frequent=self.frequent.astype(np.int32),
            tgt_vocab=np.int64(self.tgt_vocab),
            src_spm_sha256=np.str_(self.src_spm_sha256),
            tgt_spm_sha256=np.str_(self.tgt_spm_sha256),
        )
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path | str) -> Shortlist:
        try:
            with np.load(path, allow_pickle=False) as f:
                version = int(f["version"])
                if version != FORMAT_VERSION:
                    raise DataError(
                        f"{path}: shortlist format {version}, expected {FORMAT_VERSION}"
                    )
                shortlist = cls(
                    f["candidates"].astype(np.int64),
                    f["frequent"].astype(np.int64),
                    int(f["tgt_vocab"]),
                    str(f["src_spm_sha256"]),
                    str(f["tgt_spm_sha256"]),
                )
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
        except (KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: not an s2s shortlist file ({err})") from None
        too_big = shortlist.candidates.size and shortlist.candidates.max() >= shortlist.tgt_vocab
        if shortlist.candidates.ndim != 2 or too_big or shortlist.candidates.min(initial=0) < -1:
            raise DataError(f"{path}: damaged shortlist (piece ids out of range)")
        return shortlist


def _chunk_links(
    src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], tgt_vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every (source piece, target piece) link within these sentence pairs, as keys
    ``s * tgt_vocab + t`` (distinct pieces per sentence), and for each link the number of its
    target slot (sentence, target piece) within the chunk."""
    keys, slots, slot_base = [], [], 0
    for s, t in zip(src, tgt, strict=True):
        s_ids, t_ids = np.unique(s).astype(np.int64), np.unique(t).astype(np.int64)
        keys.append((s_ids[:, None] * tgt_vocab + t_ids[None, :]).ravel())
        slots.append(np.tile(np.arange(slot_base, slot_base + t_ids.size), s_ids.size))
        slot_base += t_ids.size
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(slots)


def _chunks(pairs: ParallelSplit) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """The split's sentence pairs, CHUNK_SENTENCES at a time (source list, target list)."""
    for start in range(0, len(pairs), CHUNK_SENTENCES):
        rows = range(start, min(start + CHUNK_SENTENCES, len(pairs)))
        yield [np.asarray(pairs.src[i]) for i in rows], [np.asarray(pairs.tgt[i]) for i in rows]


def build_shortlist(
    data_dir: Path | str,
    per_source: int = 50,
    frequent: int = 100,
    split: str = "train",
    iterations: int = 5,
) -> Shortlist:
    """Learn ``p(t | s)`` with IBM Model 1 over ``split`` of a preprocessed dataset and keep,
    per source piece, the ``per_source`` most probable target pieces, plus the ``frequent``
    most frequent target pieces.

    Model 1 explains each target piece of a sentence by its source pieces in proportion to
    ``p(t | s)``, so a piece that co-occurs with everything (a frequent word) stops being every
    source piece's candidate after a few EM iterations. Each iteration streams the split again.
    """
    if per_source < 1 or frequent < 0 or iterations < 1:
        raise DataError("shortlist: --per-source and iterations must be >= 1, --frequent >= 0")
    dataset = Dataset(data_dir)
    src_vocab, tgt_vocab = dataset.vocab_sizes
    pairs = dataset.split(split)
    tgt_count = np.zeros(tgt_vocab, np.int64)  # occurrences of each target piece
    links = np.zeros(0, np.int64)  # distinct (source, target) keys that co-occur
    for src, tgt in _chunks(pairs):
        tgt_count += np.bincount(np.concatenate(tgt).astype(np.int64), minlength=tgt_vocab)
        keys, _ = _chunk_links(src, tgt, tgt_vocab)
        links = np.union1d(links, keys)
    source_of_link = links // tgt_vocab
    prob = np.ones(links.size)  # p(t | s), unnormalised uniform start
    for _ in range(iterations):
        counts = np.zeros(links.size)
        for src, tgt in _chunks(pairs):
            keys, slots = _chunk_links(src, tgt, tgt_vocab)
            link = np.searchsorted(links, keys)
            share = prob[link]
            share = share / np.bincount(slots, weights=share)[slots]
            counts += np.bincount(link, weights=share, minlength=links.size)
        prob = (
            counts
            / np.bincount(source_of_link, weights=counts, minlength=src_vocab)[source_of_link]
        )
    candidates = _best_per_source(links, prob, src_vocab, tgt_vocab, per_source)
    order = np.argsort(-tgt_count, kind="stable")
    most_frequent = order[: min(frequent, int((tgt_count > 0).sum()))]
    return Shortlist(
        candidates.astype(np.int32),
        most_frequent.astype(np.int32),
        tgt_vocab,
        spm_digest(dataset.spm_bytes("src")),
        spm_digest(dataset.spm_bytes("tgt")),
    )


def _best_per_source(
    links: np.ndarray, prob: np.ndarray, src_vocab: int, tgt_vocab: int, per_source: int
) -> np.ndarray:
    """Per source piece, its ``per_source`` most probable target pieces (ties: piece id)."""
    source, target = links // tgt_vocab, links % tgt_vocab
    # by source, then descending probability, then target id (lexsort: last key is primary)
    order = np.lexsort((target, -prob, source))
    source, target = source[order], target[order]
    starts = np.searchsorted(source, np.arange(src_vocab))
    rank = np.arange(len(source)) - starts[source]
    keep = rank < per_source
    candidates = np.full((src_vocab, per_source), -1, np.int64)
    candidates[source[keep], rank[keep]] = target[keep]
    return candidates


def coverage(
    shortlist: Shortlist,
    sources: Sequence[np.ndarray],
    outputs: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
) -> tuple[float, float]:
    """How well the shortlists of these ``batches`` (lists of positions) cover ``outputs``:
    ``(share of output pieces in their batch's list, mean list size)``. With the
    full-vocabulary translations as ``outputs``, a share of 1.0 means the shortlist could have
    produced every piece the full search chose; with references, it is the data's view."""
    held = total = 0
    sizes = []
    for batch in batches:
        joined = np.concatenate([np.asarray(sources[i], np.int64) for i in batch])
        ids = shortlist.for_batch(torch.from_numpy(joined)).numpy()
        sizes.append(ids.size)
        for i in batch:
            pieces = np.asarray(outputs[i], np.int64)
            held += int(np.isin(pieces, ids).sum())
            total += pieces.size
    return held / max(total, 1), float(np.mean(sizes)) if sizes else 0.0


def split_coverage(
    shortlist: Shortlist, data_dir: Path | str, split: str, batch_size: int
) -> tuple[float, float]:
    """:func:`coverage` of a split's references, batched as translation batches them."""
    from s2s_cli.decoding.search import length_sorted_batches

    pairs = Dataset(data_dir).split(split)
    sources = [np.asarray(pairs.src[i]) for i in range(len(pairs))]
    targets = [np.asarray(pairs.tgt[i]) for i in range(len(pairs))]
    batches = list(length_sorted_batches([len(s) for s in sources], batch_size, None))
    return coverage(shortlist, sources, targets, batches)
