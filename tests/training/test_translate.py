"""Search and Translator behaviour on a really trained tiny model."""

import math
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from s2s_cli import Translator
from s2s_cli.config import DecodeConfig
from s2s_cli.data.loader import source_tensor
from s2s_cli.data.spm import BOS, EOS
from s2s_cli.decoding.alignment import replace_unknowns
from s2s_cli.decoding.beam import beam_search
from s2s_cli.decoding.constraints import length_penalty
from s2s_cli.decoding.graphed_beam import fixed_shape_beam_search
from s2s_cli.decoding.greedy import greedy_search
from s2s_cli.decoding.plot import attention_svg
from s2s_cli.decoding.scorer import Ensemble

from ..conftest import WORDS


@pytest.fixture(scope="module")
def translator(trained_checkpoint: Path) -> Translator:
    return Translator.from_checkpoint(trained_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    import random

    rng = random.Random(5)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(40)]


def test_the_trained_model_translates(translator, sentences):
    out = translator.translate(sentences[:20], beam=5)
    correct = sum(o == " ".join(reversed(s.split())).upper() for s, o in zip(sentences, out))
    assert correct >= 16, out


@pytest.mark.parametrize(("batch_size", "max_tokens"), [(1, None), (3, None), (64, None), (64, 30)])
def test_batched_equals_one_sentence_at_a_time(translator, sentences, batch_size, max_tokens):
    alone = [translator.translate_hypotheses([s], beam=5, nbest=3)[0] for s in sentences[:12]]
    batched = translator.translate_hypotheses(
        sentences[:12], beam=5, nbest=3, batch_size=batch_size, max_tokens=max_tokens
    )
    for a, b in zip(alone, batched):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
        for ha, hb in zip(a.hypotheses, b.hypotheses):
            assert ha.score == pytest.approx(hb.score, abs=1e-4)


def test_bf16_batched_equals_one_sentence_at_a_time(translator, sentences):
    """bf16 steps pad their rows for oneDNN and multiply by packed weights: a sentence's
    hypotheses must not depend on the batch around it all the same."""
    alone = [
        translator.translate_hypotheses([s], beam=5, nbest=3, precision="bf16")[0]
        for s in sentences[:12]
    ]
    batched = translator.translate_hypotheses(sentences[:12], beam=5, nbest=3, precision="bf16")
    for a, b in zip(alone, batched):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
        for ha, hb in zip(a.hypotheses, b.hypotheses):
            assert ha.score == pytest.approx(hb.score, abs=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threads_sharing_a_translator_get_what_one_thread_gets(translator, sentences, precision):
    """The output layers keep a logits buffer per thread: two threads translating at once with
    one Translator must not read each other's scores."""
    import threading

    work = [sentences[i:20:2] for i in range(2)]
    expected = [translator.translate_hypotheses(w, beam=5, precision=precision) for w in work]
    found: list = [None, None]
    start = threading.Barrier(2)

    def run(k: int) -> None:
        start.wait()
        found[k] = [
            translator.translate_hypotheses(work[k], beam=5, precision=precision) for _ in range(2)
        ]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for attempt in found[k]:
            assert [[h.tokens for h in t.hypotheses] for t in attempt] == [
                [h.tokens for h in t.hypotheses] for t in expected[k]
            ]
            assert [t.hypotheses[0].score for t in attempt] == [
                t.hypotheses[0].score for t in expected[k]
            ]


def test_beam_one_equals_greedy_on_a_real_model(translator, sentences):
    scorer = Ensemble(translator.models)
    ids = [translator.src_spm.encode(s) for s in sentences]
    src, lengths = source_tensor([torch.tensor(i).numpy() for i in ids])
    cfg = DecodeConfig(beam=1, nbest=1)
    with torch.no_grad():
        beam = beam_search(scorer, src, lengths, cfg)
        greedy = greedy_search(scorer, src, lengths, cfg)
        fixed = fixed_shape_beam_search(scorer, src, lengths, cfg)  # CUDA's greedy search
    for b, g, f in zip(beam, greedy, fixed, strict=True):
        assert b[0].tokens == g[0].tokens == f[0].tokens
        assert b[0].score == pytest.approx(g[0].score, abs=1e-5)
        assert f[0].score == pytest.approx(g[0].score, abs=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"beam": 5, "nbest": 3},
        {"beam": 4, "nbest": 4, "lenpen": 0.6, "lenpen_style": "gnmt"},
        {"beam": 3, "min_len": 4, "lenpen": 0.0},
        {"beam": 6, "max_len_a": 0.5, "max_len_b": 1},
    ],
    ids=["nbest3", "gnmt", "min-len", "short-limit"],
)
def test_fixed_shape_search_equals_beam_search_on_a_real_model(translator, sentences, options):
    """The search CUDA replays as graphs keeps finished sentences' (dead) rows in the batch; it
    must find exactly what beam.py's, whose finished sentences leave, finds."""
    scorer = Ensemble(translator.models)
    ids = [translator.src_spm.encode(s) for s in sentences]
    src, lengths = source_tensor([torch.tensor(i).numpy() for i in ids])
    cfg = DecodeConfig(**options)
    with torch.no_grad():
        dynamic = beam_search(scorer, src, lengths, cfg)
        fixed = fixed_shape_beam_search(scorer, src, lengths, cfg)
    assert sum(len(h[0].tokens) for h in dynamic) > len(sentences)  # real outputs, not EOS
    for a, b in zip(dynamic, fixed, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert [h.positional_scores for h in a] == [
            pytest.approx(h.positional_scores, abs=1e-5) for h in b
        ]


def test_nbest_lists_are_sorted_and_distinct(translator, sentences):
    for result in translator.translate_hypotheses(sentences[:10], beam=6, nbest=6):
        scores = [h.score for h in result.hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in result.hypotheses}) == len(scores) == 6


@pytest.mark.parametrize(("lenpen", "style"), [(0.0, "average"), (1.0, "average"), (0.6, "gnmt")])
def test_reported_score_equals_forced_decoding_score(translator, sentences, lenpen, style):
    model = translator.models[0]
    for result in translator.translate_hypotheses(
        sentences[:8], beam=4, nbest=2, lenpen=lenpen, lenpen_style=style
    ):
        src, lengths = source_tensor(
            [torch.tensor(translator.src_spm.encode(result.source)).numpy()]
        )
        for hyp in result.hypotheses:
            tgt_in = torch.tensor([[BOS, *hyp.tokens]])
            target = torch.tensor([*hyp.tokens, EOS])
            with torch.no_grad():
                lprobs = torch.log_softmax(model(src, lengths, tgt_in)[0].float(), -1)
            forced = float(lprobs.gather(1, target.unsqueeze(1)).sum())
            expected = forced / length_penalty(len(target), lenpen, style)
            assert hyp.score == pytest.approx(expected, abs=1e-4)


def test_an_ensemble_of_a_model_with_itself_equals_the_model(
    trained_checkpoint, translator, sentences
):
    pair = Translator.from_checkpoint([trained_checkpoint, trained_checkpoint], device="cpu")
    single = translator.translate_hypotheses(sentences[:10], beam=5, nbest=2)
    double = pair.translate_hypotheses(sentences[:10], beam=5, nbest=2)
    for a, b in zip(single, double):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
        assert [h.score for h in a.hypotheses] == pytest.approx(
            [h.score for h in b.hypotheses], abs=1e-5
        )


def test_empty_lines_and_order_are_preserved(translator, sentences):
    lines = [sentences[0], "", sentences[1], "   ", sentences[2]]
    out = translator.translate(lines, beam=3)
    assert out[1] == "" and out[3] == ""
    assert out[0] == translator.translate([sentences[0]], beam=3)[0]
    assert out[4] == translator.translate([sentences[2]], beam=3)[0]


def test_long_input_is_truncated_and_flagged(translator):
    long_line = " ".join(["one two three"] * 20)
    (result,) = translator.translate_hypotheses([long_line], max_source_len=10)
    assert result.truncated and len(result.source_pieces) == 10
    (short,) = translator.translate_hypotheses(["one two"], max_source_len=10)
    assert not short.truncated


def test_sampling_is_seeded_and_scored_by_the_model(translator, sentences):
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return translator.translate_hypotheses(
            sentences[:5], sampling=True, nbest=3, temperature=1.5, generator=generator
        )

    a, b = draw(1), draw(1)
    assert [[h.tokens for h in r.hypotheses] for r in a] == [
        [h.tokens for h in r.hypotheses] for r in b
    ]
    for result in a:
        assert len(result.hypotheses) == 3
        for hyp in result.hypotheses:
            assert hyp.score == pytest.approx(
                sum(hyp.positional_scores) / len(hyp.positional_scores), abs=1e-5
            )


def test_alignment_and_attention_are_returned(translator):
    (result,) = translator.translate_hypotheses(["one two three"], keep_attention=True, beam=3)
    best = result.hypotheses[0]
    assert best.attention.shape == (len(best.pieces) + 1, len(result.source_pieces) + 1)
    assert torch.allclose(best.attention.sum(1), torch.ones(len(best.pieces) + 1), atol=1e-4)
    assert len(best.alignment) == len(best.pieces)
    assert all(0 <= s < len(result.source_pieces) for s, _ in best.alignment)
    svg = attention_svg(
        best.attention, [*result.source_pieces, "</s>"], [*best.pieces, "</s>"], "t"
    )
    root = ElementTree.fromstring(svg)
    assert root.tag.endswith("svg")
    cells = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if len(r)]  # titled
    assert len(cells) == best.attention.numel()


def test_replace_unknowns_copies_the_aligned_source_piece():
    out = replace_unknowns(
        ["▁a", "<unk>", "▁c"], ["▁x", "▁Zürich", "▁y"], [(0, 0), (1, 1), (2, 2)], "<unk>"
    )
    assert out == ["▁a", "▁Zürich", "▁c"]


def test_bf16_translation_agrees_with_fp32(translator, sentences):
    fp32 = translator.translate(sentences[:20], beam=5)
    bf16 = translator.translate(sentences[:20], beam=5, precision="bf16")
    same = sum(a == b for a, b in zip(fp32, bf16))
    assert same >= 17


@pytest.mark.parametrize("search", [{"beam": 5}, {"beam": 1}, {"sampling": True, "topk": 1}])
def test_int8_translation_agrees_with_fp32_in_every_search(translator, sentences, search):
    fp32 = translator.translate(sentences[:20], **search)
    int8 = translator.translate(sentences[:20], precision="int8", **search)
    assert sum(a == b for a, b in zip(fp32, int8)) >= 17
    assert translator._scorer("int8") is translator._scorer("int8")  # quantized once


def test_int8_ensembles_and_reference_scores(trained_checkpoint, sentences):
    pair = Translator.from_checkpoint([trained_checkpoint, trained_checkpoint], device="cpu")
    single = Translator.from_checkpoint(trained_checkpoint, device="cpu")
    assert pair.translate(sentences[:10], precision="int8") == single.translate(
        sentences[:10], precision="int8"
    )
    references = single.translate(sentences[:10])
    fp32 = single.score_references(sentences[:10], references)
    int8 = single.score_references(sentences[:10], references, precision="int8")
    for a, b in zip(fp32, int8, strict=True):
        assert a.pieces == b.pieces and b.logprob == pytest.approx(a.logprob, abs=0.1 * a.pieces)


def test_a_shortlist_of_every_piece_changes_nothing_and_a_small_one_stays_inside(
    translator, sentences, tiny_dataset, tmp_path
):
    import dataclasses

    import numpy as np

    from s2s_cli.decoding.shortlist import build_shortlist

    small = build_shortlist(tiny_dataset, per_source=3, frequent=0)
    vocab = translator.tgt_spm.get_piece_size()
    everything = dataclasses.replace(small, frequent=np.arange(vocab))  # every piece "frequent"
    everything.save(tmp_path / "all.npz")
    full = translator.translate_hypotheses(sentences[:20], beam=5)
    listed = translator.translate_hypotheses(
        sentences[:20], beam=5, shortlist=str(tmp_path / "all.npz")
    )
    for a, b in zip(full, listed, strict=True):
        assert a.hypotheses[0].tokens == b.hypotheses[0].tokens
        assert a.hypotheses[0].score == pytest.approx(b.hypotheses[0].score, abs=1e-4)
    small.save(tmp_path / "small.npz")
    hypotheses = translator.translate_hypotheses(
        sentences[:20], shortlist=str(tmp_path / "small.npz")
    )
    results = [h.text for h in hypotheses]
    batch_src = torch.tensor([p for s in sentences[:20] for p in translator.src_spm.encode(s)])
    allowed = set(small.for_batch(batch_src.unsqueeze(0)).tolist())  # the one batch's list
    assert len(allowed) < translator.tgt_spm.get_piece_size()
    for hypothesis in hypotheses:
        assert set(hypothesis.hypotheses[0].tokens) <= allowed
    # three candidates per source piece still translate the reverse task
    correct = sum(o == " ".join(reversed(s.split())).upper() for s, o in zip(sentences, results))
    assert correct >= 16, results


def test_an_int8_export_is_a_quarter_of_the_weights_and_translates_like_int8(
    translator, trained_checkpoint, sentences, tmp_path
):
    from s2s_cli.checkpoint import load_checkpoint, save_checkpoint
    from s2s_cli.decoding.int8 import int8_checkpoint, row_scales
    from s2s_cli.errors import CheckpointError
    from s2s_cli.training.average import average_checkpoints

    original = load_checkpoint(trained_checkpoint)
    exported = int8_checkpoint(original)
    save_checkpoint(exported, tmp_path / "int8.pt")
    loaded = load_checkpoint(tmp_path / "int8.pt")  # digest verified
    assert loaded.config.decode.precision == "int8" and loaded.training is None

    def weight_bytes(checkpoint):
        return sum(t.numel() * t.element_size() for t in checkpoint.model.values())

    scale_bytes = sum(t.numel() * t.element_size() for t in loaded.int8_scales.values())
    assert weight_bytes(loaded) + scale_bytes <= 0.3 * weight_bytes(original)
    for key, scale in loaded.int8_scales.items():
        weight = original.model[key].float()
        restored = loaded.model[key].float() * scale.unsqueeze(1)
        assert (restored - weight).abs().max() <= scale.max() / 2 + 1e-7
        # quantizing the restored rows again gives back the stored integers
        again = (restored / row_scales(restored).float().unsqueeze(1)).round()
        assert torch.equal(again, loaded.model[key].float()), key
    shipped = Translator.from_checkpoint(tmp_path / "int8.pt", device="cpu")
    int8 = translator.translate(sentences[:20], precision="int8")
    assert sum(a == b for a, b in zip(shipped.translate(sentences[:20]), int8)) >= 17
    with pytest.raises(CheckpointError, match="already an int8 export"):
        int8_checkpoint(loaded)
    with pytest.raises(CheckpointError, match="int8.pt: an int8 export"):
        average_checkpoints([tmp_path / "int8.pt", trained_checkpoint], tmp_path / "avg.pt")


def test_an_onnx_export_translates_the_test_set_exactly_like_the_model(
    translator, trained_checkpoint, tiny_dataset, tmp_path
):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from s2s_cli.checkpoint import load_checkpoint
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.decoding.onnx_model import export_onnx
    from s2s_cli.io import read_lines

    export_onnx(load_checkpoint(trained_checkpoint), tmp_path / "onnx")
    onnx = Translator.from_checkpoint(tmp_path / "onnx", device="cpu")
    lines = list(read_lines(Dataset(tiny_dataset).raw_text_path("test", "src")))
    for options in ({"beam": 5, "nbest": 2}, {"beam": 1}):
        want = translator.translate_hypotheses(lines, **options)
        got = onnx.translate_hypotheses(lines, **options)
        for a, b in zip(want, got, strict=True):
            assert [h.text for h in a.hypotheses] == [h.text for h in b.hypotheses]
            for ha, hb in zip(a.hypotheses, b.hypotheses, strict=True):
                assert ha.score == pytest.approx(hb.score, abs=1e-4)


def test_reference_scores_equal_the_teacher_forced_validation_loss(
    tiny_dataset, trained_checkpoint
):
    """--score-reference is consistent with training: the same NLL per piece on the same data,
    whatever the batching (padding never changes a score)."""
    import dataclasses

    from s2s_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.data.spm import load_processor
    from s2s_cli.decoding.forced import corpus_perplexity
    from s2s_cli.io import read_lines
    from s2s_cli.training.validate import Validator

    dataset = Dataset(tiny_dataset)
    sources = list(read_lines(dataset.raw_text_path("valid", "src")))
    references = list(read_lines(dataset.raw_text_path("valid", "tgt")))
    translator = Translator.from_checkpoint(trained_checkpoint, device="cpu")
    scores = translator.score_references(sources, references, batch_size=64)
    one_by_one = translator.score_references(sources, references, batch_size=1)
    for batched, single in zip(scores, one_by_one, strict=True):
        assert batched.pieces == single.pieces
        assert batched.logprob == pytest.approx(single.logprob, abs=1e-4)
    total, pieces, perplexity = corpus_perplexity(scores)
    checkpoint = load_checkpoint(trained_checkpoint)
    cfg = checkpoint.config
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, valid_max_sentences=None))
    validator = Validator(dataset, cfg, load_processor(checkpoint.spm["tgt"], "tgt"), "cpu")
    _, nll_per_piece = validator.loss(model_from_checkpoint(checkpoint))
    assert pieces == int(dataset.split("valid").tgt_sizes.sum()) + len(references)  # + EOS each
    assert -total / pieces == pytest.approx(nll_per_piece, rel=1e-5)
    assert perplexity == pytest.approx(math.exp(nll_per_piece), rel=1e-5)
    assert all(s.logprob == pytest.approx(sum(s.positional_scores)) for s in scores)
