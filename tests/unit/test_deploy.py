"""Restricted output layers (shortlists) and int8 decoding, on small random models: the
restricted search must be exactly the full search with every other piece forbidden, and int8
must stay close to float32."""

from pathlib import Path

import numpy as np
import pytest
import torch

from s2s_cli.config import CELLS, PRESETS, DecodeConfig, from_dict
from s2s_cli.data.spm import BOS, EOS, PAD
from s2s_cli.decoding import output
from s2s_cli.decoding.beam import beam_search
from s2s_cli.decoding.greedy import greedy_search
from s2s_cli.decoding.int8 import Int8Output, quantize_int8
from s2s_cli.decoding.output import RESTRICTED_WIDTH_MULTIPLE, FullOutput, RowsOutput, output_rows
from s2s_cli.decoding.scorer import Ensemble
from s2s_cli.decoding.search import search_all
from s2s_cli.decoding.shortlist import Shortlist, build_shortlist
from s2s_cli.device import check_precision
from s2s_cli.errors import ConfigError, DataError
from s2s_cli.models.build import build_model

VOCAB = 40


def model_for(seed: int = 1, **kwargs) -> torch.nn.Module:
    cfg = from_dict({"model": {"embed_dim": 16, "hidden_size": 24, "dropout": 0.0, **kwargs}})
    torch.manual_seed(seed)
    return build_model(cfg.model, VOCAB, VOCAB).eval()


def sources(count: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (count,), generator=g)
    src = torch.full((count, int(lengths.max())), PAD)
    for i, n in enumerate(lengths.tolist()):
        src[i, : n - 1] = torch.randint(EOS + 1, VOCAB, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src, lengths


SUBSET = torch.tensor([0, 1, 2, 3, 5, 8, 9, 13, 17, 21, 22, 30, 31, 39])


class MaskedOutput:
    """The full output layer with every piece outside ``ids`` forbidden: what a restricted
    search must reproduce."""

    def __init__(self, decoder, ids):
        self.full, self.ids = FullOutput(decoder), ids

    def __call__(self, features):
        logits = self.full(features)
        mask = torch.ones(logits.size(-1), dtype=torch.bool)
        mask[self.ids] = False
        return logits.masked_fill(mask, float("-inf"))


@pytest.mark.parametrize("preset", PRESETS)
def test_restricted_scores_are_the_full_softmax_over_the_subset(preset):
    model = model_for(preset=preset)
    src, lengths = sources()
    full, restricted = Ensemble([model]), Ensemble([model]).restricted(SUBSET)
    with torch.no_grad():
        enc = full.encode(src, lengths)
        state = full.init_state(enc)
        prev_columns = torch.tensor([BOS, 4, 7, 13, 2, 5])  # column numbers of the subset
        lp_full, _, _ = full.step(SUBSET[prev_columns], state, enc)
        lp_restricted, _, _ = restricted.step(prev_columns, state, enc)
    expected = torch.log_softmax(lp_full[:, SUBSET], dim=-1)
    torch.testing.assert_close(lp_restricted, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("beam", [1, 4])
def test_restricted_search_equals_the_full_search_with_other_pieces_forbidden(preset, beam):
    model = model_for(preset=preset)
    src, lengths = sources(seed=3)
    cfg = DecodeConfig(beam=beam, nbest=1 if beam == 1 else 3, max_len_b=6)
    masked = Ensemble([model], [MaskedOutput(model.decoder, SUBSET)])
    restricted = Ensemble([model]).restricted(SUBSET)
    search = greedy_search if beam == 1 else beam_search
    with torch.no_grad():
        expected = search(masked, src, lengths, cfg)
        got = search(restricted, src, lengths, cfg)
    for want, have in zip(expected, got, strict=True):
        assert [h.tokens for h in want] == [[int(SUBSET[t]) for t in h.tokens] for h in have]
        for a, b in zip(want, have, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.positional_scores == pytest.approx(b.positional_scores, abs=1e-4)


def test_a_restricted_vocabulary_must_keep_the_special_pieces():
    with pytest.raises(ValueError, match="special pieces"):
        Ensemble([model_for()]).restricted(torch.tensor([0, 1, 3, 4]))


def bf16_model(**kwargs) -> torch.nn.Module:
    """A model whose weights were cast to bf16 for decoding, as ``--precision bf16`` casts them."""
    return model_for(**kwargs).to(torch.bfloat16)


def test_a_bf16_restricted_layer_pads_its_width_with_pieces_that_are_never_scored():
    model = bf16_model()
    src, lengths = sources()
    restricted = Ensemble([model]).restricted(SUBSET)
    unpadded = Ensemble([model], [RowsOutput(model.decoder.pre_output, *plain_rows(model))], SUBSET)
    prev_columns = torch.tensor([BOS, 4, 7, 13, 2, 5])
    with torch.no_grad():
        enc = restricted.encode(src, lengths)
        padded_lp = restricted.step(prev_columns, restricted.init_state(enc), enc)[0]
        plain_lp = unpadded.step(prev_columns, unpadded.init_state(enc), enc)[0]
    width = SUBSET.numel()
    assert padded_lp.size(1) % RESTRICTED_WIDTH_MULTIPLE == 0 and padded_lp.size(1) > width
    assert torch.isneginf(padded_lp[:, width:]).all()
    torch.testing.assert_close(padded_lp[:, :width], plain_lp, atol=1e-3, rtol=0)


def test_a_bf16_restricted_ensemble_averages_over_the_list_only(monkeypatch):
    """Two bf16 models: their padded columns stay -inf through the average (no NaN), and the
    columns of the list are what the unpadded ensemble gives."""
    models = [bf16_model(seed=1), bf16_model(seed=2)]
    src, lengths = sources()
    prev_columns = torch.tensor([BOS, 4, 7, 13, 2, 5])

    def first_step(ensemble):
        with torch.no_grad():
            enc = ensemble.encode(src, lengths)
            return ensemble.step(prev_columns, ensemble.init_state(enc), enc)[0]

    padded = first_step(Ensemble(models).restricted(SUBSET))
    monkeypatch.setattr(output, "RESTRICTED_WIDTH_MULTIPLE", 1)
    plain = first_step(Ensemble(models).restricted(SUBSET))
    width = SUBSET.numel()
    assert padded.size(1) % RESTRICTED_WIDTH_MULTIPLE == 0 and plain.size(1) == width
    assert torch.isneginf(padded[:, width:]).all() and not padded.isnan().any()
    torch.testing.assert_close(padded[:, :width], plain, atol=1e-3, rtol=0)


def plain_rows(model) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = model.decoder.output_matrix()
    return weight.index_select(0, SUBSET), bias.index_select(0, SUBSET)


def test_a_float32_restricted_layer_is_as_wide_as_its_list():
    weight, bias = output_rows(torch.randn(VOCAB, 8), torch.randn(VOCAB), SUBSET)
    assert weight.shape == (SUBSET.numel(), 8) and bias.shape == (SUBSET.numel(),)


@pytest.mark.parametrize("beam", [1, 4])
def test_a_padded_bf16_search_returns_what_the_unpadded_one_does(beam, monkeypatch):
    model = bf16_model(preset="luong")
    src, lengths = sources(seed=3)
    cfg = DecodeConfig(beam=beam, nbest=1 if beam == 1 else 3, max_len_b=6)
    search = greedy_search if beam == 1 else beam_search
    with torch.no_grad():
        padded = search(Ensemble([model]).restricted(SUBSET), src, lengths, cfg)
        monkeypatch.setattr(output, "RESTRICTED_WIDTH_MULTIPLE", 1)
        plain = search(Ensemble([model]).restricted(SUBSET), src, lengths, cfg)
    for want, have in zip(plain, padded, strict=True):
        assert [h.tokens for h in want] == [h.tokens for h in have]
        assert max(max(h.tokens, default=0) for h in have) < SUBSET.numel()
        for a, b in zip(want, have, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-3)


class FixedShortlist(Shortlist):
    def for_batch(self, src):
        return SUBSET.clone()


def test_search_all_maps_columns_back_to_piece_ids():
    model = model_for()
    src, lengths = sources(count=5, seed=4)
    sentences = [src[i, : lengths[i]].numpy() for i in range(5)]
    shortlist = FixedShortlist(np.full((VOCAB, 1), -1), np.zeros(0, np.int64), VOCAB, "", "")
    cfg = DecodeConfig(beam=3, nbest=2, max_len_b=6)
    masked = Ensemble([model], [MaskedOutput(model.decoder, SUBSET)])
    expected = search_all(masked, sentences, cfg, torch.device("cpu"))
    got = search_all(Ensemble([model]), sentences, cfg, torch.device("cpu"), shortlist=shortlist)
    assert [[h.tokens for h in hyps] for hyps in got] == [
        [h.tokens for h in hyps] for hyps in expected
    ]
    assert set().union(*(h.tokens for hyps in got for h in hyps)) <= set(SUBSET.tolist())


def test_for_batch_unites_specials_frequent_pieces_and_candidates():
    candidates = np.full((VOCAB, 2), -1)
    candidates[10] = [20, 21]
    candidates[11] = [21, -1]
    candidates[12] = [33, 34]  # not in the batch
    shortlist = Shortlist(candidates, np.array([7, 5]), VOCAB, "", "")
    ids = shortlist.for_batch(torch.tensor([[10, 11, EOS], [11, EOS, PAD]]))
    assert ids.tolist() == [0, 1, 2, 3, 5, 7, 20, 21]


def test_shortlist_files_round_trip_and_bad_ones_are_named(tmp_path: Path):
    candidates = np.arange(VOCAB * 3).reshape(VOCAB, 3) % VOCAB
    shortlist = Shortlist(candidates, np.array([4, 9]), VOCAB, "a" * 64, "b" * 64)
    path = tmp_path / "list.npz"
    shortlist.save(path)
    loaded = Shortlist.load(path)
    assert np.array_equal(loaded.candidates, candidates)
    assert loaded.frequent.tolist() == [4, 9]
    assert (loaded.tgt_vocab, loaded.src_spm_sha256) == (VOCAB, "a" * 64)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="damaged.npz: not an s2s shortlist"):
        Shortlist.load(damaged)
    with pytest.raises(DataError, match="missing.npz: cannot read"):
        Shortlist.load(tmp_path / "missing.npz")


def test_model_one_learns_each_piece_s_translation(tiny_dataset: Path):
    """The reverse task upper-cases every word, so a lower-case source piece usually translates
    to its upper-case form (not always: "four" and "FOUR" may be cut into different pieces).
    Model 1 must rank that form first for nearly all pieces, although every target piece of a
    sentence co-occurs with every source piece."""
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.data.spm import load_processor

    spm = load_processor(Dataset(tiny_dataset).spm_bytes("src"), "src")  # joint: one model
    shortlist = build_shortlist(tiny_dataset, per_source=2, frequent=0)
    outcomes = []
    for piece_id in range(EOS + 1, spm.get_piece_size()):
        piece = spm.id_to_piece(piece_id)
        upper = spm.piece_to_id(piece.upper())
        if (
            piece == piece.lower()
            and upper != spm.unk_id()
            and shortlist.candidates[piece_id, 0] >= 0
        ):
            outcomes.append(shortlist.candidates[piece_id, 0] == upper)
    assert len(outcomes) >= 10
    assert sum(outcomes) >= 0.8 * len(outcomes), outcomes


def test_quantized_output_rows_equal_the_full_quantized_layer():
    torch.manual_seed(0)
    weight, bias = torch.randn(VOCAB, 16), torch.randn(VOCAB)
    full = Int8Output(None, weight, bias)
    features = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            full.restrict(SUBSET)(features), full(features)[:, SUBSET], atol=1e-5, rtol=0
        )
        exact = torch.nn.functional.linear(features, weight, bias)
        # 8-bit weights and activations: within a few percent of the largest logit
        assert (full(features) - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_int8_log_probabilities_stay_close_to_float32(cell, preset):
    model = model_for(preset=preset, cell=cell)
    quantized, output = quantize_int8(model)
    src, lengths = sources()
    prev = torch.tensor([BOS, 4, 7, 13, 2, 5])
    with torch.no_grad():
        outs = []
        for scorer in (Ensemble([model]), Ensemble([quantized], [output])):
            enc = scorer.encode(src, lengths)
            outs.append(scorer.step(prev, scorer.init_state(enc), enc)[0])
    probs_fp32, probs_int8 = outs[0].exp(), outs[1].exp()
    assert (probs_fp32 - probs_int8).abs().max() < 0.02
    assert not any(isinstance(m, torch.nn.LSTM | torch.nn.GRU) for m in quantized.decoder.modules())
    assert any(isinstance(m, torch.nn.RNNBase) for m in model.decoder.modules())  # untouched


def test_int8_is_refused_off_the_cpu():
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        check_precision(torch.device("cuda"), "int8", "decode.precision")
    check_precision(torch.device("cpu"), "int8", "decode.precision")
