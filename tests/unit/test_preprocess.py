import gzip
import json
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from s2s_cli import Dataset, preprocess
from s2s_cli.config import load_config
from s2s_cli.data.indexed import IndexedDataset, IndexedWriter, best_dtype
from s2s_cli.data.info import dataset_info
from s2s_cli.data.preprocess import _chunks
from s2s_cli.data.spm import (
    SPECIAL_IDS,
    SentenceSample,
    WordSample,
    train_model,
    vocabulary_sample,
)
from s2s_cli.errors import DataError, StorageError


def run(corpus: Path, dest: Path, *overrides: str, **kwargs) -> Path:
    cfg = load_config(overrides=["data.vocab_size=48", *overrides])
    kwargs.setdefault("train", corpus / "train")
    return preprocess(
        src_lang="src",
        tgt_lang="tgt",
        valid=corpus / "valid",
        tests=[corpus / "test"],
        dest=dest,
        config=cfg,
        **kwargs,
    )


def test_round_trip_text_to_ids_and_back(corpus: Path, tmp_path: Path):
    out = run(corpus, tmp_path / "d")
    data = Dataset(out)
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for split in ("train", "valid", "test"):
        pairs = data.split(split)
        sources = (corpus / f"{split}.src").read_text().splitlines()
        targets = (corpus / f"{split}.tgt").read_text().splitlines()
        assert len(pairs) == len(sources)
        for i in range(len(pairs)):
            src, tgt = pairs[i]
            assert processor.decode(src.tolist()) == sources[i]
            assert processor.decode(tgt.tolist()) == targets[i]


def test_manifest_records_everything(corpus: Path, tmp_path: Path):
    out = run(corpus, tmp_path / "d")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["s2s_version"]
    assert manifest["special_ids"] == SPECIAL_IDS == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert manifest["vocab_size"] == {"src": 48, "tgt": 48} and manifest["joint"] is True
    assert manifest["dtype"] == "uint16"
    train = manifest["splits"]["train"]
    assert train["sentences"] == 600 and train["lines"] == 600
    import hashlib

    assert (
        train["inputs"]["src"]["sha256"]
        == hashlib.sha256((corpus / "train.src").read_bytes()).hexdigest()
    )
    assert train["tokens"]["tgt"] == int(Dataset(out).split("train").tgt_sizes.sum())
    assert (out / "config.yaml").exists()  # the resolved config sits next to the output


def test_gzip_input_gives_identical_dataset(corpus: Path, tmp_path: Path):
    gz = tmp_path / "gz"
    gz.mkdir()
    for f in corpus.iterdir():
        (gz / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    plain, zipped = run(corpus, tmp_path / "a"), run(gz, tmp_path / "b")
    for name in ("train.src.bin", "train.tgt.bin", "test.tgt.idx", "spm.model"):
        assert (plain / name).read_bytes() == (zipped / name).read_bytes()


def test_separate_vocabularies(corpus: Path, tmp_path: Path):
    out = run(corpus, tmp_path / "d", "data.joint=false", "data.vocab_size=40")
    data = Dataset(out)
    assert not data.joint
    src_model = spm.SentencePieceProcessor(model_file=str(out / "spm.src.model"))
    tgt_model = spm.SentencePieceProcessor(model_file=str(out / "spm.tgt.model"))
    # lower-case source, upper-case target: separate models learn disjoint pieces
    assert src_model.encode("one", out_type=str) != tgt_model.encode("one", out_type=str)
    assert (
        tgt_model.decode(data.split("valid").tgt[0].tolist())
        == (corpus / "valid.tgt").read_text().splitlines()[0]
    )


def test_reusing_spm_model(corpus: Path, tmp_path: Path):
    first = run(corpus, tmp_path / "a")
    second = run(corpus, tmp_path / "b", spm_models=[first / "spm.model"])
    assert (first / "train.src.bin").read_bytes() == (second / "train.src.bin").read_bytes()


def test_filter_statistics(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    src = ["a b c", "", "a " * 30, "a", "b c"]
    tgt = ["x y z", "x", "x", "x y z w v u t s r q", "y z"]
    (raw / "train.src").write_text("\n".join(src) + "\n")
    (raw / "train.tgt").write_text("\n".join(tgt) + "\n")
    cfg = load_config(
        overrides=["data.vocab_size=20", "data.max_length=25", "data.max_length_ratio=3"]
    )
    out = preprocess(
        src_lang="src", tgt_lang="tgt", train=raw / "train", dest=tmp_path / "d", config=cfg
    )
    stats = json.loads((out / "manifest.json").read_text())["splits"]["train"]["filter"]
    assert stats == {"kept": 2, "dropped": {"empty": 1, "too_long": 1, "ratio": 1}}
    assert len(Dataset(out).split("train")) == 2


def test_same_inputs_give_byte_identical_datasets(corpus: Path, tmp_path: Path):
    a, b = run(corpus, tmp_path / "a"), run(corpus, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "manifest.json":  # the manifest records input paths, which differ here
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_chunks_end_at_their_line_or_character_budget_and_change_nothing(
    corpus: Path, tmp_path: Path
):
    pairs = [("a" * n, "b") for n in (1, 2, 30, 1, 1, 1, 1, 1)]
    sizes = [len(c) for c in _chunks(iter(pairs), max_lines=4, max_chars=20)]
    assert sizes == [3, 4, 1]  # the long pair ends the first chunk early; then four lines each
    assert sum(sizes) == len(pairs)
    default = run(corpus, tmp_path / "a")
    small = run(corpus, tmp_path / "b", "data.chunk_lines=7", "data.chunk_chars=90")
    for name in sorted(p.name for p in default.iterdir()):
        if name not in ("manifest.json", "config.yaml"):  # these record the config
            assert (default / name).read_bytes() == (small / name).read_bytes(), name


def test_existing_destination_needs_force(corpus: Path, tmp_path: Path):
    out = run(corpus, tmp_path / "d")
    marker = (out / "train.src.bin").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        run(corpus, out)
    assert (out / "train.src.bin").read_bytes() == marker
    run(corpus, out, "data.vocab_size=40", force=True)
    assert json.loads((out / "manifest.json").read_text())["vocab_size"]["src"] == 40


def test_force_replaces_only_a_dataset_directory(corpus: Path, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work\n")
    with pytest.raises(DataError, match="is not an s2s dataset") as info:
        run(corpus, victim, force=True)
    assert str(victim) in str(info.value) and "\n" not in str(info.value)
    assert (victim / "thesis.tex").read_text() == "years of work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "victim"]  # no temporaries


@pytest.mark.parametrize("name", [".", "sub/..", ""])
def test_dot_destinations_are_refused_in_one_line(corpus: Path, tmp_path: Path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match="name the dataset directory itself"):
        run(corpus, Path(name), force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith((name, f".{name}"))]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"train\.src: no such file"),
        ("counts", r"train\.src has 3 lines but .*train\.tgt has 2"),
        ("utf8", r"train\.src: line 2: invalid UTF-8"),
        ("empty", r"empty corpus"),
        ("vocab", r"vocabulary size 5000 is larger than this corpus supports"),
    ],
)
def test_bad_input_is_one_line_error_and_leaves_nothing(tmp_path: Path, case: str, message: str):
    raw = tmp_path / "raw"
    raw.mkdir()
    src, tgt = b"a b\nc d\ne f\n", b"x\ny\nz\n"
    if case == "counts":
        tgt = b"x\ny\n"
    if case == "utf8":
        src = b"a b\n\xff\xfe broken\ne f\n"
    if case == "empty":
        src = tgt = b""
    if case != "missing":
        (raw / "train.src").write_bytes(src)
        (raw / "train.tgt").write_bytes(tgt)
    vocab = "5000" if case == "vocab" else "8"
    cfg = load_config(overrides=[f"data.vocab_size={vocab}"])
    with pytest.raises(DataError, match=message) as info:
        preprocess(
            src_lang="src", tgt_lang="tgt", train=raw / "train", dest=tmp_path / "out", config=cfg
        )
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path, "out") == []


def test_unwritable_destination(corpus: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write the destination"):
        run(corpus, blocker / "sub" / "d")


def test_indexed_dataset_round_trip_dtype_and_pickling(tmp_path: Path):
    sentences = [[5, 6, 7], [], [70000 % 65536, 9], [4]]
    with IndexedWriter(tmp_path / "x", best_dtype(64)) as writer:
        writer.add(sentences[:2])
        writer.add(sentences[2:])
    data = IndexedDataset(tmp_path / "x")
    assert data.dtype == np.uint16 and len(data) == 4
    assert [data[i].tolist() for i in range(4)] == sentences
    assert data.sizes.tolist() == [3, 0, 2, 1]
    clone = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < 300  # pickles as its path, not its contents
    assert clone[2].tolist() == sentences[2]
    assert best_dtype(70000) == np.int32


def test_corrupt_index_is_a_data_error(tmp_path: Path):
    (tmp_path / "x.idx").write_bytes(b"garbage!" * 4)
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="not an s2s index file"):
        IndexedDataset(tmp_path / "x")


def _awkward_sentences(count: int) -> list[str]:
    """Deterministic sentences with every whitespace SentencePiece treats specially: runs of
    spaces, tabs, leading and trailing blanks, a no-break and an ideographic space, and a
    diaeresis (NFKC makes it a space plus a combining mark), with repeated lines; and characters
    Python counts as whitespace but SentencePiece's normalization deletes or keeps (so splitting
    there would differ)."""
    rng = np.random.default_rng(7)
    words = ["ein", "Mann", "fährt", "Rad", "auf", "der", "Straße", "a", "man", "rides",
             "bike", "on", "the", "road", "x\u00a0y", "x\u3000y", "a\u00a8b", "Ⅻ", "ﬁne", "p\x1cq", "p\x0bq", "p\x85q"]  # fmt: skip
    gaps = [" ", " ", " ", "  ", "\t", " \t "]
    sentences = []
    for i in range(count):
        picked = rng.choice(words, size=int(rng.integers(1, 9))).tolist()
        text = picked[0]
        for word in picked[1:]:
            text += gaps[int(rng.integers(len(gaps)))] + word
        sentences.append((" " if i % 7 == 0 else "") + text + (" " if i % 5 == 0 else ""))
    return sentences + sentences[:50]


@pytest.mark.parametrize(("model_type", "vocab_size"), [("bpe", 60), ("word", 20)])
def test_word_counts_train_the_same_model_as_the_sentences(model_type: str, vocab_size: int):
    sentences = _awkward_sentences(800)
    by_sentence, by_word = SentenceSample(10_000), WordSample(10_000)
    for sentence in sentences:
        by_sentence.add(sentence)
        by_word.add(sentence)
    assert len(by_word.entries()) < len(by_sentence.entries()) / 10

    def model(sample: SentenceSample | WordSample) -> bytes:
        return train_model(sample, vocab_size, model_type, 1.0, 1, 1, "corpus")

    assert model(by_word) == model(by_sentence)


def test_vocabulary_sample_counts_words_only_where_the_model_is_the_same():
    assert isinstance(vocabulary_sample("bpe", 10), WordSample)
    assert isinstance(vocabulary_sample("word", 10), WordSample)
    # unigram seeds its pieces from whole sentences; char models count the spaces between words
    assert isinstance(vocabulary_sample("unigram", 10), SentenceSample)
    assert isinstance(vocabulary_sample("char", 10), SentenceSample)


def test_word_sample_is_bounded_and_drops_exactly_the_excluded_sentences():
    sentences = [f"w{i % 97} v{i % 13} w{i % 97}" for i in range(1000)]
    sample = WordSample(limit=100)
    for sentence in sentences:
        sample.add(sentence)
    assert 0 < len(sample) <= 100 and sample.lowest_level > 0
    # the kept sentences are those at or past the final level, whatever the order of arrival
    kept = [s for s in sentences if 32 - zlib.crc32(s.encode()).bit_length() >= sample.lowest_level]
    assert len(kept) == len(sample)
    recount = WordSample(limit=10_000)
    for sentence in kept:
        recount.add(sentence)
    assert sample.entries() == recount.entries()
    shuffled = WordSample(limit=100)
    for sentence in reversed(sentences):
        shuffled.add(sentence)
    assert shuffled.entries() == sample.entries()


def test_sentence_sample_is_bounded_and_counts_duplicates():
    sample = SentenceSample(limit=50)
    for _ in range(10):
        for i in range(40):
            sample.add(f"sentence {i}")
    assert len(sample) == 40 and sample.counts["sentence 3"] == 10
    for i in range(1000):
        sample.add(f"other {i}")
    assert len(sample) <= 50


def test_dataset_info_reports_lengths_and_unknown_rate(corpus: Path, tmp_path: Path):
    out = run(corpus, tmp_path / "d")
    info = dataset_info(out)
    train = info["splits"]["train"]
    assert train["sentences"] == 600
    assert train["src"]["length"]["max"] >= train["src"]["length"]["p50"] > 0
    assert train["src"]["unk_rate"] == 0.0
    # a test set with an unseen character produces unknown pieces
    raw = tmp_path / "raw2"
    raw.mkdir()
    (raw / "t.src").write_text("one ☃ two\n")
    (raw / "t.tgt").write_text("TWO ONE\n")
    cfg = load_config(overrides=["data.vocab_size=48"])
    out2 = preprocess(
        src_lang="src",
        tgt_lang="tgt",
        train=corpus / "train",
        tests=[raw / "t"],
        dest=tmp_path / "d2",
        config=cfg,
    )
    assert dataset_info(out2)["splits"]["test"]["src"]["unk_rate"] > 0


@pytest.mark.parametrize("keep", [0, 5, 17, 24, 40, -8])
def test_a_truncated_index_is_named_in_one_line(corpus: Path, tmp_path: Path, keep: int):
    """Cut anywhere (header, mid-offset, whole offsets), the error names the .idx, not the .bin."""
    out = run(corpus, tmp_path / "d")
    idx = out / "train.src.idx"
    data = idx.read_bytes()
    idx.write_bytes(data[:keep])  # -8: one whole offset short
    with pytest.raises(DataError) as info:
        Dataset(out).split("train")
    message = str(info.value)
    assert message.startswith(f"{idx}:") and "\n" not in message
    assert "index" in message


def test_a_file_given_as_prefix_gets_a_hint(corpus: Path, tmp_path: Path):
    with pytest.raises(DataError) as info:
        run(corpus, tmp_path / "d", train=corpus / "train.src")
    assert str(info.value) == (
        f"{corpus}/train.src.src: no such file (nor train.src.src.gz); a PREFIX names the files "
        f"without their language: did you mean {corpus}/train?"
    )
