"""Run a search over many sentences: length-sorted batches, autocast, original order restored."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from s2s_cli.config import DecodeConfig
from s2s_cli.data.loader import source_tensor
from s2s_cli.decoding.beam import beam_search
from s2s_cli.decoding.graphed_beam import fixed_shape_beam_search, graphs_apply
from s2s_cli.decoding.greedy import greedy_search
from s2s_cli.decoding.hypothesis import Hypothesis
from s2s_cli.decoding.sampling import sample
from s2s_cli.decoding.scorer import Ensemble, Scorer
from s2s_cli.decoding.shortlist import Shortlist
from s2s_cli.device import autocast, check_precision


def search_batch(
    scorer: Scorer,
    src: torch.Tensor,
    lengths: torch.Tensor,
    cfg: DecodeConfig,
    keep_attention: bool = False,
    generator: torch.Generator | None = None,
    pre_cast: bool = False,
) -> list[list[Hypothesis]]:
    """One padded batch through the configured strategy: sampling, greedy (beam 1) or beam.

    ``pre_cast``: the scorer's weights are in the decoding precision (no autocast), so on CUDA a
    beam or greedy search may replay its steps as CUDA graphs (:func:`graphs_apply`).
    """
    if cfg.sampling:
        return sample(scorer, src, lengths, cfg, generator, keep_attention)
    if graphs_apply(scorer, src, cfg, keep_attention, pre_cast):
        return fixed_shape_beam_search(scorer, src, lengths, cfg, graphs=True)
    if cfg.beam == 1:
        return greedy_search(scorer, src, lengths, cfg, keep_attention)
    return beam_search(scorer, src, lengths, cfg, keep_attention)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None
) -> Iterator[list[int]]:
    """Positions grouped into batches of similar length (longest first), within both limits."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batch: list[int] = []
    widest = 0
    for position in order.tolist():
        width = max(widest, lengths[position] + 1)
        if batch and (
            len(batch) >= batch_size or (max_tokens and width * (len(batch) + 1) > max_tokens)
        ):
            yield batch
            batch, width = [], lengths[position] + 1
        batch.append(position)
        widest = width
    if batch:
        yield batch


@torch.inference_mode()
def search_all(
    scorer: Scorer,
    sentences: Sequence[Sequence[int] | np.ndarray],
    cfg: DecodeConfig,
    device: torch.device,
    keep_attention: bool = False,
    generator: torch.Generator | None = None,
    use_autocast: bool = True,
    shortlist: Shortlist | None = None,
) -> list[list[Hypothesis]]:
    """Hypotheses for every sentence (piece ids, no EOS), in input order.

    Runs under autocast to ``cfg.precision`` unless ``use_autocast`` is off (for models whose
    weights were already cast, which saves re-casting the RNN weights at every step). With a
    ``shortlist`` (and an :class:`Ensemble` scorer) each batch scores only its shortlist's pieces.
    """
    check_precision(device, cfg.precision, "decode.precision")
    results: list[list[Hypothesis]] = [[] for _ in sentences]
    lengths = [len(s) for s in sentences]
    for positions in length_sorted_batches(lengths, cfg.batch_size, cfg.max_tokens):
        src, src_lengths = source_tensor([np.asarray(sentences[p]) for p in positions])
        src, src_lengths = src.to(device), src_lengths.to(device)
        batch_scorer, ids = scorer, None
        if shortlist is not None:
            assert isinstance(scorer, Ensemble), "a shortlist needs an Ensemble scorer"
            ids = shortlist.for_batch(src)
            batch_scorer = scorer.restricted(ids)
        with autocast(device, cfg.precision if use_autocast else "fp32"):
            batch_results = search_batch(
                batch_scorer, src, src_lengths, cfg, keep_attention, generator, not use_autocast
            )
        if ids is not None:
            batch_results = [_to_piece_ids(hyps, ids.tolist()) for hyps in batch_results]
        for position, hypotheses in zip(positions, batch_results, strict=True):
            results[position] = hypotheses
    return results


def _to_piece_ids(hypotheses: list[Hypothesis], ids: list[int]) -> list[Hypothesis]:
    """A restricted search's hypotheses hold column numbers: make them piece ids."""
    return [dataclasses.replace(h, tokens=[ids[t] for t in h.tokens]) for h in hypotheses]
