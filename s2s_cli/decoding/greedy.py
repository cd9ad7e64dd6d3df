"""Greedy search, and the single-path loop that sampling shares with it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from s2s_cli.config import DecodeConfig
from s2s_cli.data.spm import BOS, EOS
from s2s_cli.decoding.constraints import final_score, max_lengths, shape_step
from s2s_cli.decoding.hypothesis import Hypothesis
from s2s_cli.decoding.scorer import Scorer

ChooseFn = Callable[[Tensor], Tensor]  # rows x V log-probs -> rows chosen piece ids


def greedy_search(
    scorer: Scorer,
    src: Tensor,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """The most likely next piece at every step; one hypothesis per sentence."""
    return single_path_search(scorer, src, src_lengths, cfg, _argmax, keep_attention)


def _argmax(lprobs: Tensor) -> Tensor:
    return lprobs.argmax(dim=-1)


def single_path_search(
    scorer: Scorer,
    src: Tensor,
    src_lengths: Tensor,
    cfg: DecodeConfig,
    choose: ChooseFn,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Extend one hypothesis per row with ``choose`` until EOS; finished rows leave the batch.

    Per step the host learns only which rows ended (one small device-to-host copy); the finished
    rows' pieces and scores come back together when they leave, so on CUDA the step loop does
    not wait on the device otherwise.
    """
    batch = src.size(0)
    device = src.device
    keep_attention = keep_attention or cfg.coverage_penalty != 0.0
    enc = scorer.encode(src, src_lengths)
    state = scorer.init_state(enc)
    rows = list(range(batch))  # original sentence of each live row (host side)
    src_len = src_lengths.tolist()
    tokens = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    piece_scores = torch.zeros(batch, 0, device=device)
    attention = torch.zeros(batch, 0, src.size(1), device=device) if keep_attention else None
    max_len = max_lengths(src_lengths - 1, cfg.max_len_a, cfg.max_len_b)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    step = 0
    while rows:
        lprobs, state, step_attention = scorer.step(tokens[:, -1], state, enc)
        lprobs = shape_step(lprobs, step, max_len, tokens[:, 1:], cfg)
        chosen = choose(lprobs)
        tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
        piece_scores = torch.cat([piece_scores, lprobs.gather(1, chosen.unsqueeze(1))], dim=1)
        if attention is not None and step_attention is not None:
            attention = torch.cat([attention, step_attention.float().unsqueeze(1)], dim=1)
        ended = (chosen == EOS) | (max_len <= step) | ~torch.isfinite(piece_scores[:, -1])
        ended_rows = ended.nonzero(as_tuple=True)[0].tolist()  # the step's one wait on the device
        if ended_rows:
            index = torch.tensor(ended_rows, device=device)
            done_tokens = tokens.index_select(0, index)[:, 1:].tolist()
            done_scores = piece_scores.index_select(0, index).tolist()
            done_attention = None if attention is None else attention.index_select(0, index).cpu()
            for k, i in enumerate(ended_rows):
                hyp_attention = (
                    None if done_attention is None else done_attention[k, :, : src_len[i]]
                )
                results[rows[i]] = [_hypothesis(done_tokens[k], done_scores[k], hyp_attention, cfg)]
            ended_set = set(ended_rows)
            live = [i for i in range(len(rows)) if i not in ended_set]
            rows = [rows[i] for i in live]
            src_len = [src_len[i] for i in live]
            if not rows:
                break
            keep = torch.tensor(live, device=device)
            tokens, piece_scores, max_len = tokens[keep], piece_scores[keep], max_len[keep]
            attention = None if attention is None else attention[keep]
            enc, state = scorer.select_encoder(enc, keep), scorer.select_state(state, keep)
        step += 1
    return results


def _hypothesis(
    emitted: list[int], scores: list[float], attention: Tensor | None, cfg: DecodeConfig
) -> Hypothesis:
    pieces = emitted
    if pieces and pieces[-1] == EOS:
        pieces = pieces[:-1]
    score = final_score(sum(scores), len(scores), attention, cfg)
    return Hypothesis(pieces, score, scores, attention)
