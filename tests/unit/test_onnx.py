"""ONNX exports against the PyTorch model they came from: every architecture, several batch sizes
and source lengths (the graphs' axes must stay dynamic), whole searches."""

import json
from pathlib import Path

import pytest
import torch

from s2s_cli.checkpoint import Checkpoint, Vocabulary
from s2s_cli.config import CELLS, PRESETS, DecodeConfig, from_dict
from s2s_cli.data.spm import BOS, EOS, PAD
from s2s_cli.decoding.beam import beam_search
from s2s_cli.decoding.scorer import Ensemble
from s2s_cli.errors import CheckpointError, StorageError
from s2s_cli.models.build import build_model

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the onnx extra (onnx) is not installed")

from s2s_cli.decoding.onnx_model import OnnxScorer, export_onnx, load_onnx_export

VOCAB = 30


def checkpoint_for(**model) -> Checkpoint:
    torch.manual_seed(2)
    cfg = from_dict({"model": {"embed_dim": 16, "hidden_size": 24, "dropout": 0.0, **model}})
    net = build_model(cfg.model, VOCAB, VOCAB).eval()
    return Checkpoint(
        config=cfg,
        vocab=Vocabulary(VOCAB, VOCAB, joint=False),
        spm={"src": b"source model bytes", "tgt": b"target model bytes"},
        model=net.state_dict(),
    ), net


def batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(EOS + 1, VOCAB, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src, torch.tensor(lengths)


ARCHITECTURES = (
    [{"preset": p} for p in PRESETS]
    + [{"preset": "luong", "cell": cell} for cell in CELLS]
    + [
        {
            "preset": "fast",
            "encoder_layers": 3,
            "bidirectional_layers": 1,
            "decoder_layers": 2,
            "bridge": "bridge",
        },
        {"preset": "sutskever", "reverse_source": True, "bidirectional": False},
        {"preset": "cho", "peeky": True},
        {"preset": "fast", "attention": "none"},
    ]
)


@pytest.mark.parametrize("model", ARCHITECTURES, ids=lambda m: "-".join(map(str, m.values())))
def test_an_export_scores_like_the_model_at_any_batch_size_and_length(model, tmp_path):
    checkpoint, net = checkpoint_for(**model)
    scorer = OnnxScorer(load_onnx_export(export_onnx(checkpoint, tmp_path / "onnx")))
    reference = Ensemble([net])
    for seed, lengths in enumerate([[5, 3], [1 + 1, 9, 4, 7, 12], [17], [6, 6, 2]]):
        src, src_lengths = batch(lengths, seed)
        with torch.no_grad():
            states = reference.init_state(reference.encode(src, src_lengths))
            encs = reference.encode(src, src_lengths)
            enc = scorer.encode(src, src_lengths)
            state = scorer.init_state(enc)
            prev = torch.full((len(lengths),), BOS)
            for _ in range(4):  # a few steps, each fed the previous step's state
                want, states, want_attention = reference.step(prev, states, encs)
                got, state, got_attention = scorer.step(prev, state, enc)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
                if want_attention is not None:
                    torch.testing.assert_close(got_attention, want_attention, atol=1e-5, rtol=1e-4)
                prev = want.argmax(-1)


@pytest.mark.parametrize("model", [{"preset": "luong"}, {"preset": "bahdanau"}])
def test_beam_search_over_an_export_finds_what_the_model_finds(model, tmp_path):
    checkpoint, net = checkpoint_for(**model)
    scorer = OnnxScorer(load_onnx_export(export_onnx(checkpoint, tmp_path / "onnx")))
    src, lengths = batch([6, 3, 8, 5], seed=7)
    cfg = DecodeConfig(beam=4, nbest=2, max_len_b=8)
    with torch.no_grad():
        want = beam_search(Ensemble([net]), src, lengths, cfg)
        got = beam_search(scorer, src, lengths, cfg)
    for a, b in zip(want, got, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_a_damaged_export_is_named_and_only_exports_are_replaced(tmp_path):
    checkpoint, _ = checkpoint_for(preset="fast")
    directory = export_onnx(checkpoint, tmp_path / "onnx")
    manifest = json.loads((directory / "model.json").read_text())
    assert manifest["format"] == "s2s-onnx" and set(manifest["sha256"]) == {
        "encoder.onnx",
        "step.onnx",
        "src.spm",
        "tgt.spm",
    }
    export_onnx(checkpoint, directory)  # an export is replaced
    data = bytearray((directory / "step.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "step.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step\.onnx: damaged"):
        load_onnx_export(directory)
    other = tmp_path / "not-an-export"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match="is not an s2s ONNX export"):
        export_onnx(checkpoint, other)
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-an-export", "onnx"]


def test_exports_leave_no_temporary_behind(tmp_path: Path):
    checkpoint, _ = checkpoint_for(preset="cho")
    export_onnx(checkpoint, tmp_path / "a")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
