"""SentencePiece models: training with fixed special ids, loading from bytes, bounded samples."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from s2s_cli.errors import DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_IDS = {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}


MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece skips longer sentences (max_sentence_length)


class SentenceSample:
    """Distinct sentences with their counts, capped at ``limit`` by deterministic hash sampling.

    Duplicates cost one entry, so a corpus repeated ten times needs no more memory than once.
    Past the cap the sample keeps only sentences whose CRC32 lies below a threshold that halves
    whenever the cap is hit: an unbiased, order-independent subsample.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.threshold = 1 << 32

    def add(self, sentence: str) -> None:
        if not sentence.strip():
            return
        counts = self.counts
        if sentence in counts:
            counts[sentence] += 1
            return
        if self.threshold < (1 << 32) and _hash(sentence) >= self.threshold:
            return
        counts[sentence] = 1
        while len(counts) > self.limit:
            self.threshold //= 2
            self.counts = counts = {s: c for s, c in counts.items() if _hash(s) < self.threshold}

    def entries(self) -> dict[str, int]:
        """What SentencePiece trains on: text -> count."""
        return self.counts

    def __len__(self) -> int:
        return len(self.counts)


class WordSample:
    """The space-separated words of a hash sample of sentences, with their counts.

    SentencePiece's BPE and word trainers split every sentence at whitespace and learn from the
    word counts alone, so words with counts give the same model as the sentences did (a test
    compares the pieces and scores) while memory grows with the distinct words, which grow far
    slower than the sentences. (Unigram seeds its pieces from whole sentences and character
    models count the spaces between words: they keep a SentenceSample.)

    Sampling as SentenceSample's, by each sentence's CRC32, except that the cap counts sentences
    with their repeats: counts are kept per halving level (the number of leading zero bits of
    the CRC32), so halving the threshold drops exactly the words of the sentences it excludes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lowest_level = 0  # sentences whose CRC32 has fewer leading zero bits are excluded
        self.levels: list[Counter[str]] = [Counter() for _ in range(33)]
        self.sentences = [0] * 33
        self.kept = 0

    def add(self, sentence: str) -> None:
        if not sentence.strip() or _too_long(sentence):
            return
        level = 32 - _hash(sentence).bit_length()
        if level < self.lowest_level:
            return
        # Only spaces (and tabs) split here: every further split SentencePiece would make
        # (at spaces that its normalization creates) it still makes inside each word.
        self.levels[level].update(sentence.replace("\t", " ").split(" "))
        self.sentences[level] += 1
        self.kept += 1
        while self.kept > self.limit:
            self.kept -= self.sentences[self.lowest_level]
            self.levels[self.lowest_level] = Counter()
            self.sentences[self.lowest_level] = 0
            self.lowest_level += 1

    def entries(self) -> dict[str, int]:
        merged: Counter[str] = Counter()
        for counts in self.levels[self.lowest_level :]:
            merged.update(counts)
        merged.pop("", None)  # from runs of spaces
        return dict(merged)

    def __len__(self) -> int:
        """Sentences in the sample, repeats included."""
        return self.kept


VocabularySample = SentenceSample | WordSample


def vocabulary_sample(model_type: str, limit: int) -> VocabularySample:
    """The smallest sample that trains the same ``model_type`` model as its sentences would."""
    return WordSample(limit) if model_type in ("bpe", "word") else SentenceSample(limit)


def _too_long(sentence: str) -> bool:
    return len(sentence) * 4 > MAX_SENTENCE_BYTES and len(sentence.encode()) > MAX_SENTENCE_BYTES


def _hash(sentence: str) -> int:
    return zlib.crc32(sentence.encode("utf-8"))


def train_model(
    sample: VocabularySample,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    threads: int,
    seed: int,
    origin: str,
) -> bytes:
    """Train a SentencePiece model on the sample (TSV of text and count); returns its bytes."""
    entries = sample.entries()
    if not entries:
        raise DataError(f"{origin}: empty corpus (no non-empty lines to learn a vocabulary from)")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="s2s-spm-") as tmp, _working_directory(Path(tmp)):
        # A relative input path: SentencePiece stores it in the model, which must not depend on
        # where the temporary directory happened to be (byte-identical outputs).
        with open("sample.tsv", "w", encoding="utf-8") as f:
            for text, count in entries.items():
                f.write(f"{text.replace(chr(9), ' ')}\t{count}\n")
        try:
            spm.SentencePieceTrainer.train(
                input="sample.tsv",
                input_format="tsv",
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                # Character models (digits, dates, ...) gain nothing from a "▁" before every
                # sequence; spaces inside still become "▁" pieces, so decoding is unchanged.
                add_dummy_prefix=model_type != "char",
                character_coverage=character_coverage,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                num_threads=threads,
                input_sentence_size=0,  # the sample is already bounded
                max_sentence_length=MAX_SENTENCE_BYTES,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise DataError(f"{origin}: {_explain(str(err), vocab_size)}") from None
    return model.getvalue()


def _explain(message: str, vocab_size: int) -> str:
    limit = re.search(r"value <= (\d+)", message)
    if limit:
        return (
            f"vocabulary size {vocab_size} is larger than this corpus supports "
            f"(at most {limit.group(1)}); lower --vocab-size"
        )
    if "Vocabulary size is smaller than required_chars" in message:
        return f"vocabulary size {vocab_size} is smaller than the corpus's character set"
    detail = message.strip().splitlines()[-1] if message.strip() else "unknown error"
    return f"SentencePiece training failed ({detail})"


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def load_processor(model: bytes, origin: str) -> spm.SentencePieceProcessor:
    """A processor from model bytes, checked to use s2s's fixed special ids."""
    try:
        processor = spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError, TypeError):
        raise DataError(f"{origin}: not a SentencePiece model") from None
    ids = {
        "pad": processor.pad_id(),
        "unk": processor.unk_id(),
        "bos": processor.bos_id(),
        "eos": processor.eos_id(),
    }
    if ids != SPECIAL_IDS:
        raise DataError(
            f"{origin}: SentencePiece special ids {ids} differ from the required {SPECIAL_IDS} "
            "(train it with --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3)"
        )
    return processor


def read_model_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(
            f"{path}: cannot read SentencePiece model ({err.strerror or err})"
        ) from None
