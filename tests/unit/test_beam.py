"""Beam search against a scripted scorer whose step probabilities are known, so every expected
hypothesis and score below is worked out by hand."""

import math

import pytest
import torch

from s2s_cli.config import DecodeConfig
from s2s_cli.data.spm import EOS
from s2s_cli.decoding.beam import beam_search, row_topk
from s2s_cli.decoding.constraints import block_repeated_ngrams, length_penalty
from s2s_cli.decoding.graphed_beam import fixed_shape_beam_search
from s2s_cli.decoding.greedy import greedy_search

A, B, VOCAB = 4, 5, 6
TINY = 1e-9  # PAD, UNK, BOS get (almost) nothing


def dist(eos: float, a: float, b: float) -> torch.Tensor:
    p = torch.full((VOCAB,), TINY)
    p[EOS], p[A], p[B] = eos, a, b
    return p


# step 0: a .6  b .3  EOS .1 | step 1: EOS .5  b .4  a .1 | step >= 2: EOS .9  a .05  b .05
SCRIPT = [dist(0.1, 0.6, 0.3), dist(0.5, 0.1, 0.4), dist(0.9, 0.05, 0.05)]


class ScriptedScorer:
    """Next-piece log-probabilities depend only on the step number."""

    def __init__(self, script=SCRIPT):
        self.script = [p.log() for p in script]

    def encode(self, src, lengths):
        return torch.arange(src.size(0))

    def init_state(self, enc):
        return torch.zeros(enc.size(0), dtype=torch.long)

    def step(self, prev, state, enc):
        step = min(int(state[0]), len(self.script) - 1)
        return self.script[step].expand(prev.size(0), VOCAB).clone(), state + 1, None

    def select_encoder(self, enc, index):
        return enc[index]

    def select_state(self, state, index):
        return state[index]


@pytest.fixture(params=["dynamic", "fixed-shape"])
def searcher(request):
    """Both beam searches: beam.py's, whose finished sentences leave the batch, and the
    fixed-shape one CUDA replays as graphs (run eagerly here); every rule must hold in both."""
    return beam_search if request.param == "dynamic" else fixed_shape_beam_search


def search(searcher, sentences=1, **cfg):
    src = torch.full((sentences, 5), 7)
    src[:, -1] = EOS
    lengths = torch.full((sentences,), 5)
    options = DecodeConfig(**{"beam": 2, "nbest": 2, "lenpen": 0.0, "min_len": 0, **cfg})
    return searcher(ScriptedScorer(), src, lengths, options)


def test_hand_computed_hypotheses_without_length_penalty(searcher):
    # step 1: a+EOS .30 ranks first -> finished; next beams a b (.24), b b (.12);
    # step 2: a b EOS .216 finishes the second hypothesis.
    (hyps,) = search(searcher)
    assert [h.tokens for h in hyps] == [[A], [A, B]]
    assert hyps[0].score == pytest.approx(math.log(0.30), abs=1e-6)
    assert hyps[1].score == pytest.approx(math.log(0.216), abs=1e-6)
    assert hyps[1].positional_scores == pytest.approx(
        [math.log(0.6), math.log(0.4), math.log(0.9)], abs=1e-6
    )


def test_length_penalty_reorders_hand_computed_hypotheses(searcher):
    # average: log(.30)/2 = -0.602 < log(.216)/3 = -0.511, so the longer one wins
    (hyps,) = search(searcher, lenpen=1.0, lenpen_style="average")
    assert [h.tokens for h in hyps] == [[A, B], [A]]
    assert hyps[0].score == pytest.approx(math.log(0.216) / 3, abs=1e-6)
    assert hyps[1].score == pytest.approx(math.log(0.30) / 2, abs=1e-6)
    # GNMT's milder penalty: log(.30)/(7/6) = -1.032 beats log(.216)/(8/6) = -1.149
    (gnmt,) = search(searcher, lenpen=1.0, lenpen_style="gnmt")
    assert [h.tokens for h in gnmt] == [[A], [A, B]]
    assert gnmt[0].score == pytest.approx(math.log(0.30) / (7 / 6), abs=1e-6)


def test_early_eos_outside_the_top_beam_is_not_finished(searcher):
    # step 0 EOS (.1) ranks third of 2*beam candidates: never a hypothesis with beam 2...
    (hyps,) = search(searcher)
    assert [] not in [h.tokens for h in hyps]
    # ...but with beam 3 it ranks within the beam and finishes at once.
    (hyps,) = search(searcher, beam=3, nbest=3)
    assert [] in [h.tokens for h in hyps]
    empty = next(h for h in hyps if h.tokens == [])
    assert empty.score == pytest.approx(math.log(0.1), abs=1e-6)


def test_min_len_blocks_eos(searcher):
    # EOS blocked at steps 0 and 1: a b (.24) and b b (.12) survive, then end at step 2
    (hyps,) = search(searcher, min_len=2)
    assert [h.tokens for h in hyps] == [[A, B], [B, B]]
    assert hyps[1].score == pytest.approx(math.log(0.3 * 0.4 * 0.9), abs=1e-6)


def test_max_len_forces_eos(searcher):
    (hyps,) = search(searcher, max_len_a=0.0, max_len_b=1)
    assert [h.tokens for h in hyps] == [[A], [B]]
    assert hyps[1].score == pytest.approx(math.log(0.3 * 0.5), abs=1e-6)


# Per-source scripts: what a sentence's search finds depends on its own source only.
SCRIPTS = {
    7: SCRIPT,
    8: [dist(0.1, 0.3, 0.6), dist(0.5, 0.4, 0.1), dist(0.9, 0.05, 0.05)],  # a and b swapped
    9: [dist(0.2, 0.5, 0.3), dist(0.1, 0.2, 0.7), dist(0.3, 0.6, 0.1), dist(0.9, 0.05, 0.05)],
}


class SourceScriptedScorer(ScriptedScorer):
    """Each row follows the script its source's first piece names (the encoder output)."""

    def __init__(self):
        self.scripts = {k: [p.log() for p in v] for k, v in SCRIPTS.items()}

    def encode(self, src, lengths):
        return src[:, 0].clone()

    def step(self, prev, state, enc):
        rows = []
        sources = enc.repeat_interleave(len(state) // len(enc))  # a row per sentence: its beams
        for source, step in zip(sources.tolist(), state.tolist(), strict=True):
            script = self.scripts[source]
            rows.append(script[min(step, len(script) - 1)])
        return torch.stack(rows), state + 1, None


def test_batched_sentences_are_independent(searcher):
    """Distinct sources, of different lengths: each sentence's hypotheses and scores in a batch
    equal those it gets alone, and they differ from sentence to sentence."""
    sources = [[7, 7, 7, EOS], [8, EOS, 0, 0], [9, 9, EOS, 0]]
    lengths = [4, 2, 3]
    options = DecodeConfig(beam=3, nbest=3, lenpen=1.0, min_len=0)
    batched = searcher(
        SourceScriptedScorer(), torch.tensor(sources), torch.tensor(lengths), options
    )
    alone = [
        beam_search(SourceScriptedScorer(), torch.tensor([s[:n]]), torch.tensor([n]), options)[0]
        for s, n in zip(sources, lengths)
    ]
    for together, single in zip(batched, alone):
        assert [h.tokens for h in together] == [h.tokens for h in single]
        assert [h.score for h in together] == pytest.approx([h.score for h in single])
    assert len({tuple(map(tuple, (h.tokens for h in hyps))) for hyps in batched}) == 3


def test_beam_one_equals_greedy():
    options = DecodeConfig(beam=1, nbest=1, lenpen=1.0, min_len=0)
    src = torch.tensor([[7, 7, EOS]])
    lengths = torch.tensor([3])
    (beam,) = beam_search(ScriptedScorer(), src, lengths, options)
    (greedy,) = greedy_search(ScriptedScorer(), src, lengths, options)
    # greedy: a (.6), then EOS (.5)
    assert beam[0].tokens == greedy[0].tokens == [A]
    assert beam[0].score == pytest.approx(greedy[0].score) == pytest.approx(math.log(0.3) / 2)


def test_beam_one_breaks_ties_as_greedy_does(searcher):
    """Reduced-precision logits tie often: beam 1 must pick what greedy search picks among equal
    scores (the lowest piece id), whichever way topk would order them."""
    tied = [dist(0.1, 0.45, 0.45), dist(0.1, 0.45, 0.45), dist(0.9, 0.05, 0.05)]
    options = DecodeConfig(beam=1, nbest=1, lenpen=1.0, min_len=0)
    src, lengths = torch.tensor([[7, 7, EOS]] * 3), torch.tensor([3] * 3)
    greedy = greedy_search(ScriptedScorer(tied), src, lengths, options)
    beam = searcher(ScriptedScorer(tied), src, lengths, options)
    assert [h[0].tokens for h in greedy] == [[A, A]] * 3
    assert [h[0].tokens for h in beam] == [h[0].tokens for h in greedy]


def test_nbest_is_sorted_and_distinct(searcher):
    (hyps,) = search(searcher, beam=4, nbest=4, lenpen=1.0)
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.tokens) for h in hyps}) == len(hyps) == 4


def test_block_repeated_ngrams():
    history = torch.tensor([[4, 5, 4, 6], [4, 5, 6, 7]])
    lprobs = torch.zeros(2, 10)
    blocked = block_repeated_ngrams(lprobs.clone(), history, 2)
    # row 0 ends with 6; no earlier bigram starts with 6 -> nothing blocked
    assert torch.all(blocked[0] == 0)
    blocked = block_repeated_ngrams(lprobs.clone(), torch.tensor([[4, 5, 6, 4]]), 2)
    assert blocked[0, 5] == float("-inf") and torch.isfinite(blocked[0, [4, 6, 7]]).all()
    trigram = block_repeated_ngrams(torch.zeros(1, 10), torch.tensor([[4, 5, 6, 4, 5]]), 3)
    assert trigram[0, 6] == float("-inf") and (trigram[0] == float("-inf")).sum() == 1


def test_no_repeat_ngram_in_search():
    looping = [dist(0.01, 0.98, 0.01)] * 3  # the model wants "a a a ..."
    options = DecodeConfig(
        beam=1, nbest=1, lenpen=0.0, min_len=0, no_repeat_ngram=1, max_len_a=0.0, max_len_b=4
    )
    src, lengths = torch.tensor([[7, EOS]]), torch.tensor([2])
    (hyps,) = greedy_search(ScriptedScorer(looping), src, lengths, options)
    assert len(hyps[0].tokens) == len(set(hyps[0].tokens))


def test_length_penalty_values():
    assert length_penalty(4, 0.0, "average") == 1.0
    assert length_penalty(4, 1.0, "average") == 4
    assert length_penalty(7, 0.6, "gnmt") == pytest.approx((12 / 6) ** 0.6)


def test_coverage_penalty_by_hand():
    from s2s_cli.decoding.constraints import coverage_penalty, final_score

    # two target steps over three source positions: coverage per source 0.9, 0.7, 0.4 (capped at 1)
    attention = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    expected = 0.5 * (math.log(0.9) + math.log(0.7) + math.log(0.4))
    assert coverage_penalty(attention, 0.5) == pytest.approx(expected)
    assert coverage_penalty(attention, 0.0) == 0.0
    full = torch.tensor([[0.9, 0.1], [0.6, 0.4]])  # 1.5 and 0.5: the first is capped at 1
    assert coverage_penalty(full, 1.0) == pytest.approx(math.log(0.5))
    cfg = DecodeConfig(lenpen=1.0, coverage_penalty=0.5)
    assert final_score(-3.0, 3, attention, cfg) == pytest.approx(-1.0 + expected)


def test_row_topk_is_topk_over_the_row():
    """The blocked top-k takes the same values and columns as topk over each whole row, also
    when one block holds all the best, and where forbidden (-inf) pieces fill a row."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, 64 * 48, generator=g)
    scores[3, 640:650] += 100.0  # row 3's best ten all in one block
    scores[5, :] = float("-inf")
    scores[5, 7] = 0.0  # one live piece: the rest of its top ten are -inf
    values, columns = row_topk(scores, 10)
    expected_values, expected_columns = scores.topk(10, dim=1)
    assert torch.equal(values, expected_values)
    live = torch.isfinite(expected_values)
    assert torch.equal(columns[live], expected_columns[live])
    assert sorted(columns[3].tolist()) == list(range(640, 650))


@pytest.mark.parametrize("columns", [64 * 40, 1000])  # too few blocks; not whole blocks
def test_row_topk_falls_back_to_topk(columns):
    scores = torch.randn(4, columns, generator=torch.Generator().manual_seed(1))
    values, found = row_topk(scores, 10)
    expected_values, expected_columns = scores.topk(10, dim=1)
    assert torch.equal(values, expected_values) and torch.equal(found, expected_columns)


class TableScorer:
    """Log-probabilities that depend on the previous piece, over a vocabulary large enough for
    the blocked top-k (64 blocks of 64 pieces)."""

    vocab = 4096

    def __init__(self):
        g = torch.Generator().manual_seed(2)
        self.embed = torch.randn(self.vocab, 8, generator=g)
        self.out = torch.randn(8, self.vocab, generator=g) * 2.0
        self.out[:, EOS] += 0.8  # sentences end within a few steps

    def encode(self, src, lengths):
        return src[:, 0].float()

    def init_state(self, enc):
        return enc

    def step(self, prev, state, enc):
        return torch.log_softmax(self.embed[prev] @ self.out, dim=-1), state, None

    def select_encoder(self, enc, index):
        return enc[index]

    def select_state(self, state, index):
        return state[index]


def reference_top_candidates(scores, lprobs, beam):
    """The single-stage ranking the two-stage one replaced: every row x V sum at once."""
    sentences, vocab = scores.size(0), lprobs.size(1)
    per_sentence = scores.size(1)  # beam, or 1 at the first step
    candidates = (scores.view(-1, 1) + lprobs).view(sentences, per_sentence * vocab)
    top_scores, flat = candidates.topk(2 * beam, dim=1)
    row_base = torch.arange(sentences).unsqueeze(1) * per_sentence
    return top_scores, row_base + flat // vocab, flat % vocab


def test_two_stage_ranking_finds_what_ranking_every_extension_finds(monkeypatch):
    from s2s_cli.decoding import beam as beam_module

    src = torch.randint(4, 50, (6, 5), generator=torch.Generator().manual_seed(3))
    src[:, -1] = EOS
    lengths = torch.full((6,), 5)
    cfg = DecodeConfig(beam=5, nbest=5, max_len_a=0.0, max_len_b=8)
    found = beam_search(TableScorer(), src, lengths, cfg)
    monkeypatch.setattr(beam_module, "top_candidates", reference_top_candidates)
    expected = beam_search(TableScorer(), src, lengths, cfg)
    assert [[(h.tokens, h.score) for h in hyps] for hyps in found] == [
        [(h.tokens, h.score) for h in hyps] for hyps in expected
    ]
    assert any(len(h.tokens) > 1 for hyps in found for h in hyps)


@pytest.mark.parametrize("first_step", [False, True])
def test_two_stage_ranking_equals_ranking_every_extension(first_step):
    """Per step: the same 2k extensions per sentence, also when all come from one beam (the
    first step, where only beam 0 is alive)."""
    from s2s_cli.decoding.beam import top_candidates

    g = torch.Generator().manual_seed(4)
    sentences, beam, vocab = 4, 5, 64 * 64
    scores = torch.randn(sentences, beam, generator=g) * 3
    if first_step:
        scores[:, 1:] = float("-inf")
    lprobs = torch.log_softmax(torch.randn(sentences * beam, vocab, generator=g) * 4, dim=-1)
    found = top_candidates(scores, lprobs, beam)
    expected = reference_top_candidates(scores, lprobs, beam)
    for got, want in zip(found, expected, strict=True):
        assert torch.equal(got, want)


def test_the_first_step_scores_one_row_per_sentence():
    """A sentence's beams all start as BOS, so the first step scores one row per sentence: its
    candidates are those of the beam rows with only beam 0 alive (what the search scored
    before), their rows numbered per sentence."""
    from s2s_cli.decoding.beam import top_candidates

    g = torch.Generator().manual_seed(6)
    sentences, beam, vocab = 3, 5, 700
    lprobs = torch.log_softmax(torch.randn(sentences, vocab, generator=g) * 4, dim=-1)
    one_row = top_candidates(torch.zeros(sentences, 1), lprobs, beam)
    scores = torch.full((sentences, beam), float("-inf"))
    scores[:, 0] = 0.0
    every_row = top_candidates(scores, lprobs.repeat_interleave(beam, dim=0), beam)
    assert torch.equal(one_row[0], every_row[0]) and torch.equal(one_row[2], every_row[2])
    assert torch.equal(one_row[1] * beam, every_row[1])
    small = top_candidates(torch.zeros(2, 1), torch.log_softmax(torch.randn(2, 3), -1), beam)
    assert small[0].shape == (2, beam) and torch.isinf(small[0][:, 3:]).all()  # 3 pieces < beam


def test_a_search_scores_one_row_per_sentence_at_its_first_step():
    seen = []

    class Spy(TableScorer):
        def step(self, prev_tokens, state, enc):
            seen.append(prev_tokens.numel())
            return super().step(prev_tokens, state, enc)

    src = torch.randint(4, 50, (4, 5), generator=torch.Generator().manual_seed(3))
    src[:, -1] = EOS
    results = beam_search(Spy(), src, torch.full((4,), 5), DecodeConfig(beam=5, max_len_b=6))
    assert seen[0] == 4 and seen[1] == 4 * 5
    assert all(hyps for hyps in results)
