"""Beam search at a fixed batch shape, its step replayed as one CUDA graph.

On a GPU, :func:`~s2s_cli.decoding.beam.beam_search` is bound by the host: one step of a
128-sentence batch is hundreds of small PyTorch operations, and launching them costs more than
the arithmetic (an H200 profile: ~10 ms of GPU work in ~60 ms per batch; docs/benchmarks.md).
Here every sentence keeps its rows until the whole batch is done (a finished sentence's beams are
dead, scored -inf), so every step has the same shapes and reads and writes the same tensors
(:class:`StepBuffers`). The whole step — decoder, length rules, best extensions, next beams, the
reordered histories and state — is recorded once per batch shape as a CUDA graph and replayed:
one launch per step. The host still waits once per step, for the flags saying which extensions
end in EOS and which sentences are done, as beam.py does, and finishes hypotheses the same way.

The rules and scores are beam.py's, on the same rows, so the hypotheses are the same
(tests/unit/test_beam.py runs this search eagerly on the CPU against beam.py's; the ``gpu``
tests compare the replayed graphs with it). :func:`graphs_apply` says when it is used.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from s2s_cli.config import DecodeConfig
from s2s_cli.data.spm import BOS
from s2s_cli.decoding.beam import (
    BeamHistory,
    best,
    finalize,
    next_beams,
    read_flags,
    step_flags,
    top_candidates,
)
from s2s_cli.decoding.constraints import constrain_step, max_lengths
from s2s_cli.decoding.hypothesis import Hypothesis
from s2s_cli.decoding.scorer import Ensemble, Scorer

log = logging.getLogger(__name__)

GRAPHS_KEPT = 4  # recorded graphs kept per scorer (batches sorted by length reuse the last few)


def graphs_apply(
    scorer: Scorer, src: Tensor, cfg: DecodeConfig, keep_attention: bool, pre_cast: bool
) -> bool:
    """Whether a beam search of this batch runs as replayed CUDA graphs (greedy search too, as
    the beam search of beam 1, which finds what greedy search finds).

    Only on CUDA with ``decode.cuda_graphs``, for a plain :class:`Ensemble` whose weights are
    already in the decoding precision (``pre_cast``: autocast's cached weight casts would be
    recorded into the graph and go stale), and only where no step needs data-dependent shapes:
    no attention kept (alignments, coverage penalty), no n-gram blocking, no shortlist.
    """
    return (
        cfg.cuda_graphs
        and not cfg.sampling
        and src.device.type == "cuda"
        and pre_cast
        and isinstance(scorer, Ensemble)
        and scorer.token_ids is None
        and not keep_attention
        and cfg.coverage_penalty == 0.0
        and cfg.no_repeat_ngram == 0
        and scorer not in _UNGRAPHABLE
    )


@dataclass
class StepBuffers:
    """What one step reads and writes in place: the same tensors at every step of a batch (the
    recorded graph's inputs), refilled for each new batch of the same shape."""

    prev: Tensor  # rows: the pieces the step extends
    state: Any  # the scorer's decoder state, a row per hypothesis
    enc: Any  # the scorer's encoder output, a row per sentence
    scores: Tensor  # sentences x beam cumulative log-probabilities (-inf: dead)
    max_len: Tensor  # rows: most pieces each hypothesis may have
    step: Tensor  # (1,): the position of the piece this step chooses
    tokens: Tensor  # rows x (width + 1): BOS, then the pieces so far
    piece_scores: Tensor  # rows x width: each piece's log-probability

    def tensors(self) -> list[Tensor]:
        """Every tensor, in a fixed order (the state's and encoder's included)."""
        return [
            self.prev,
            *_leaves(self.state),
            *_leaves(self.enc),
            self.scores,
            self.max_len,
            self.step,
            self.tokens,
            self.piece_scores,
        ]

    def signature(self) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
        return tuple((tuple(t.shape), t.dtype) for t in self.tensors())

    def load(self, other: StepBuffers) -> None:
        """Copy ``other``'s values (same signature) into these tensors."""
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.copy_(theirs)


class StepOutputs(NamedTuple):
    """What a step leaves for the host (overwritten by the next step)."""

    lprobs: Tensor  # rows x V, after the length rules
    top_scores: Tensor  # sentences x 2 beam
    top_rows: Tensor  # sentences x 2 beam
    flags: Tensor  # step_flags
    tokens: Tensor  # the token histories the step extended (before reordering)
    piece_scores: Tensor  # their piece scores


def run_step(scorer: Scorer, buffers: StepBuffers, cfg: DecodeConfig) -> StepOutputs:
    """One step of beam search, entirely on the device: the buffers advance to the next step."""
    beam = cfg.beam
    lprobs, new_state, _ = scorer.step(buffers.prev, buffers.state, buffers.enc)
    lprobs = constrain_step(lprobs, buffers.step, buffers.max_len, cfg.min_len)
    top_scores, top_rows, top_tokens = top_candidates(buffers.scores, lprobs, beam)
    scores, rows, tokens = next_beams(top_scores, top_rows, top_tokens, beam)
    flags = step_flags(top_scores, top_tokens, scores, buffers.max_len, buffers.step, beam)
    rows, tokens = rows.view(-1), tokens.view(-1)
    history = buffers.tokens.clone(), buffers.piece_scores.clone()
    buffers.tokens.copy_(history[0].index_select(0, rows))
    buffers.tokens.index_copy_(1, buffers.step + 1, tokens.unsqueeze(1))
    buffers.piece_scores.copy_(history[1].index_select(0, rows))
    buffers.piece_scores.index_copy_(1, buffers.step, lprobs[rows, tokens].unsqueeze(1))
    for mine, chosen in zip(
        _leaves(buffers.state), _leaves(scorer.select_state(new_state, rows)), strict=True
    ):
        mine.copy_(chosen)
    buffers.prev.copy_(tokens)
    buffers.scores.copy_(scores)
    buffers.step.add_(1)
    return StepOutputs(lprobs, top_scores, top_rows, flags, *history)


def fixed_shape_beam_search(
    scorer: Scorer, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig, graphs: bool = False
) -> list[list[Hypothesis]]:
    """beam.py's search with every sentence's rows kept to the end; ``graphs``: replay each step
    as a recorded CUDA graph (CUDA only). Returns each sentence's ``cfg.nbest`` best hypotheses."""
    beam, batch, device = cfg.beam, src.size(0), src.device
    enc = scorer.encode(src, src_lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(beam)
    max_len = max_lengths(src_lengths - 1, cfg.max_len_a, cfg.max_len_b).index_select(0, rows)
    width = int(max_len.max()) + 1  # steps until every sentence is done (by its length limit)
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so hypotheses stay distinct
    tokens = torch.zeros(batch * beam, width + 1, dtype=torch.long, device=device)
    tokens[:, 0] = BOS
    buffers = StepBuffers(
        prev=torch.full((batch * beam,), BOS, dtype=torch.long, device=device),
        state=scorer.select_state(scorer.init_state(enc), rows),
        enc=enc,
        scores=scores,
        max_len=max_len,
        step=torch.zeros(1, dtype=torch.long, device=device),
        tokens=tokens,
        piece_scores=torch.zeros(batch * beam, width, device=device),
    )
    step_fn = _recorded(scorer, buffers, cfg) if graphs else None
    if step_fn is not None:
        buffers = step_fn.buffers
    src_len = src_lengths.index_select(0, rows)
    sentences = list(range(batch))
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = set(sentences)
    for step in range(width):
        out = step_fn() if step_fn is not None else run_step(scorer, buffers, cfg)
        ending, stuck = read_flags(out.flags.tolist(), batch, beam)
        history = BeamHistory(
            sentences, out.tokens[:, : step + 1], out.piece_scores[:, :step], None, src_len
        )
        finalize(finished, history, ending, out.top_scores, out.top_rows, out.lprobs, None, cfg)
        leaving = [i for i in sorted(active) if stuck[i] or len(finished[i]) >= beam]
        if leaving:  # their beams die: later steps extend nothing of theirs
            index = torch.tensor(leaving, dtype=torch.long, device=device)
            buffers.scores.index_fill_(0, index, float("-inf"))
            active.difference_update(leaving)
        if not active:
            break
    return [best(hyps, cfg.nbest) for hyps in finished]


class _Recorded:
    """:func:`run_step` recorded as a CUDA graph over ``buffers``; calling it replays one step.

    Recorded on a side stream after one warm-up step there (cuBLAS/cuDNN set up their handles
    and workspaces outside the recording), into ``pool``, the memory pool a scorer's graphs
    share (only one replays at a time, and each step's outputs are read before the next).
    ``torch.cuda.graph`` is not used: it empties the allocator's cache at every recording.
    """

    def __init__(
        self, scorer: Scorer, buffers: StepBuffers, cfg: DecodeConfig, pool: Any, cudnn: bool
    ) -> None:
        device = buffers.prev.device
        initial = [t.clone() for t in buffers.tensors()]
        stream = _capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        try:
            with _cudnn_enabled(cudnn), torch.cuda.stream(stream):
                run_step(scorer, buffers, cfg)  # the warm-up
                self.graph = torch.cuda.CUDAGraph()
                self.graph.capture_begin(pool=pool)
                try:
                    self.outputs = run_step(scorer, buffers, cfg)
                finally:
                    self.graph.capture_end()
        finally:
            torch.cuda.current_stream(device).wait_stream(stream)
            for tensor, value in zip(buffers.tensors(), initial, strict=True):
                tensor.copy_(value)
        self.buffers = buffers

    def __call__(self) -> StepOutputs:
        self.graph.replay()
        return self.outputs


# Recorded graphs per scorer (a scorer's weights stay where they are, so its graphs stay valid),
# their shared memory pool, scorers whose step could not be recorded (beam.py's search then) and
# those whose cuDNN RNN could not.
_GRAPHS: weakref.WeakKeyDictionary[Any, OrderedDict[Any, _Recorded]] = weakref.WeakKeyDictionary()
_POOLS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_UNGRAPHABLE: weakref.WeakSet[Any] = weakref.WeakSet()
_WITHOUT_CUDNN: weakref.WeakSet[Any] = weakref.WeakSet()
_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _recorded(scorer: Scorer, buffers: StepBuffers, cfg: DecodeConfig) -> _Recorded | None:
    """This batch's step as a replayable graph: a recorded one of the same shape refilled with
    ``buffers``' values, or a new recording; None where recording fails (logged).

    cuDNN's RNN is recorded where it can be; else the step is recorded with PyTorch's own
    recurrent kernels (cuDNN off while recording).
    """
    key = (buffers.signature(), cfg.beam, cfg.min_len)
    graphs = _GRAPHS.setdefault(scorer, OrderedDict())
    recorded = graphs.get(key)
    if recorded is not None:
        recorded.buffers.load(buffers)
        graphs.move_to_end(key)
        return recorded
    if scorer not in _POOLS:
        _POOLS[scorer] = torch.cuda.graph_pool_handle()
    failures = []
    for cudnn in (False,) if scorer in _WITHOUT_CUDNN else (True, False):
        try:
            recorded = _Recorded(scorer, buffers, cfg, _POOLS[scorer], cudnn)
            break
        except RuntimeError as error:  # pragma: no cover - CUDA only
            failures.append(f"cuDNN {'on' if cudnn else 'off'}: {error}")
    if recorded is None:  # pragma: no cover - CUDA only
        log.warning("decoding without CUDA graphs: recording a beam step failed (%s)", failures)
        _UNGRAPHABLE.add(scorer)
        return None
    if failures and scorer not in _WITHOUT_CUDNN:  # pragma: no cover - CUDA only
        log.info("beam steps recorded without cuDNN (%s)", failures[0])
        _WITHOUT_CUDNN.add(scorer)
    graphs[key] = recorded
    while len(graphs) > GRAPHS_KEPT:
        graphs.popitem(last=False)
    return recorded


@contextlib.contextmanager
def _cudnn_enabled(enabled: bool) -> Iterator[None]:
    """cuDNN on or off, every other cuDNN setting as it is (``cudnn.flags`` resets them all)."""
    saved = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = saved


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for warm-up and recording (cuDNN keeps workspaces per stream)."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def _leaves(tree: Any) -> list[Tensor]:
    """The tensors of a state or encoder output (tensors, tuples, lists, None), in order."""
    if isinstance(tree, Tensor):
        return [tree]
    if tree is None:
        return []
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    raise TypeError(f"cannot keep a {type(tree).__name__} in step buffers")
