"""``s2s preprocess``: raw parallel text -> SentencePiece model(s) -> binarized dataset directory.

Two streaming passes over the training corpus: the first validates it (UTF-8, equal line counts),
hashes it and collects a bounded sentence sample for SentencePiece; the second encodes it in
chunks and writes the flat token files. Everything goes to a temporary directory that is renamed
into place only at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2s_cli.config import DataConfig, ExperimentConfig, dump_yaml
from s2s_cli.data import spm as spm_lib
from s2s_cli.data.dataset import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SHARDED_FORMAT,
    SHARDED_FORMAT_VERSION,
)
from s2s_cli.data.indexed import IndexedWriter, best_dtype
from s2s_cli.errors import ConfigError, DataError, StorageError
from s2s_cli.io import (
    current_umask,
    describe_os_error,
    iter_lines,
    open_binary,
    resolve_text_file,
)
from s2s_cli.locking import destination_lock
from s2s_cli.version import __version__

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class SplitInput:
    name: str
    src: Path
    tgt: Path
    filtered: bool  # only training pairs are filtered; evaluation sets stay line-aligned


@dataclass
class FilterStats:
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    ratio: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "dropped": {"empty": self.empty, "too_long": self.too_long, "ratio": self.ratio},
        }


@dataclass
class SplitResult:
    sentences: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    lines: int = 0
    sha256: dict[str, str] = field(default_factory=dict)
    filter: FilterStats | None = None


def preprocess(
    *,
    src_lang: str,
    tgt_lang: str,
    train: str | Path,
    dest: str | Path,
    valid: str | Path | None = None,
    tests: Sequence[str | Path] = (),
    config: ExperimentConfig | None = None,
    spm_models: Sequence[str | Path] = (),
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Build a dataset directory and return its path.

    ``train``, ``valid`` and each of ``tests`` are prefixes: ``PREFIX.{src_lang}`` and
    ``PREFIX.{tgt_lang}`` (or the same with ``.gz``). ``spm_models`` reuses existing SentencePiece
    model(s): one for a joint vocabulary, or source then target.
    """
    config = config or ExperimentConfig()
    if src_lang == tgt_lang:
        raise ConfigError(f"--src-lang and --tgt-lang are both '{src_lang}'")
    splits = _split_inputs(src_lang, tgt_lang, train, valid, tests)
    dest = Path(dest)
    _check_destination_parent(dest)
    with destination_lock(dest):  # two runs into one --dest: the second is refused
        _check_destination(dest, force)
        _remove_stale_builds(dest)
        progress = progress or (lambda split, done, total: None)
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
            # mkdtemp makes the directory private; a dataset is an ordinary directory
            tmp.chmod(0o777 & ~current_umask())
            manifest = _build(tmp, splits, src_lang, tgt_lang, config, spm_models, progress)
            manifest["config"] = _made_with(config.data)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            (tmp / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
            _move_into_place(tmp, dest)
        except OSError as err:  # a full disk, lost permissions, failing storage
            if err.filename and not str(err.filename).startswith(str(dest.parent)):
                raise  # not ours to describe (the CLI names its file)
            reason = describe_os_error(err)
            raise StorageError(f"{dest}: cannot write the dataset ({reason})") from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _split_inputs(
    src_lang: str,
    tgt_lang: str,
    train: str | Path,
    valid: str | Path | None,
    tests: Sequence[str | Path],
) -> list[SplitInput]:
    named = [("train", train, True)]
    if valid is not None:
        named.append(("valid", valid, False))
    named += [("test" if i == 0 else f"test{i}", t, False) for i, t in enumerate(tests)]
    return [
        SplitInput(name, resolve_text_file(p, src_lang), resolve_text_file(p, tgt_lang), filt)
        for name, p, filt in named
    ]


def _check_destination_parent(dest: Path) -> None:
    if dest.name in ("", ".", ".."):  # the dataset is written beside, then renamed onto, dest
        raise DataError(f"{dest}: name the dataset directory itself (e.g. {dest / 'data-bin'})")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryDirectory(prefix=".s2s-probe-", dir=parent)
        probe.cleanup()
    except OSError as err:
        raise StorageError(
            f"{dest}: cannot write the destination ({describe_os_error(err)})"
        ) from None


def _check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not force:
        raise DataError(f"{dest}: already exists (use --force to replace it)")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a directory")
    if dest.exists() and not (dest / MANIFEST).is_file():
        raise DataError(
            f"{dest}: exists and is not an s2s dataset (no {MANIFEST}); --force replaces only "
            "a dataset directory"
        )


def _remove_stale_builds(dest: Path) -> None:
    """What a killed run into ``dest`` left beside it (its half-built or replaced dataset); only
    called under ``dest``'s lock, so no live run owns them."""
    for prefix in (f".{dest.name}.tmp-", f".{dest.name}.old-"):
        for stale in dest.parent.glob(glob.escape(prefix) + "*"):
            if stale.is_dir() and not stale.is_symlink():
                log.info("removing %s, left by a killed run", stale)
                shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{tmp.name[-8:]}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(
    tmp: Path,
    splits: list[SplitInput],
    src_lang: str,
    tgt_lang: str,
    config: ExperimentConfig,
    spm_models: Sequence[str | Path],
    progress: ProgressFn,
) -> dict[str, Any]:
    """Write the dataset into ``tmp``; returns its manifest (that of a sharded dataset when
    ``data.shard_size`` is set: the shards are complete dataset directories inside ``tmp``)."""
    cfg = config.data
    train = splits[0]
    scan = _scan_training_pairs(train, cfg, need_sample=not spm_models)
    spm_files = _sentencepiece_models(tmp, scan, train, src_lang, tgt_lang, cfg, spm_models)
    processors = {
        side: spm_lib.load_processor((tmp / name).read_bytes(), str(tmp / name))
        for side, name in spm_files.items()
    }
    vocab = {side: p.vocab_size() for side, p in processors.items()}
    dtype = best_dtype(max(vocab.values()))
    if cfg.shard_size is not None:
        return _build_shards(
            tmp, splits, src_lang, tgt_lang, config, spm_files, processors, vocab, scan, progress
        )
    results: dict[str, SplitResult] = {}
    for split in splits:
        total = scan.lines if split.filtered else None
        writer = _PairWriter(tmp, split.name, src_lang, tgt_lang, dtype)
        results[split.name] = _encode_split(
            tmp, split, writer, src_lang, tgt_lang, processors, cfg, total, progress
        )
    results["train"].sha256 = scan.sha256
    return _manifest(splits, results, src_lang, tgt_lang, spm_files, vocab, cfg)


def _manifest(
    splits: list[SplitInput],
    results: dict[str, SplitResult],
    src_lang: str,
    tgt_lang: str,
    spm_files: dict[str, str],
    vocab: dict[str, int],
    cfg: DataConfig,
) -> dict[str, Any]:
    dtype = best_dtype(max(vocab.values()))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "s2s_version": __version__,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "joint": spm_files["src"] == spm_files["tgt"],
        "spm": spm_files,
        "spm_type": cfg.spm_type,
        "vocab_size": vocab,
        "special_ids": dict(spm_lib.SPECIAL_IDS),
        "dtype": dtype.name,
        "splits": {name: _split_entry(splits, name, r) for name, r in results.items()},
    }


def _made_with(cfg: DataConfig) -> dict[str, Any]:
    """The manifest's record of the data settings (not ``path``: where a dataset is used)."""
    return {"data": {k: v for k, v in cfg.__dict__.items() if k != "path"}}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _build_shards(
    tmp: Path,
    splits: list[SplitInput],
    src_lang: str,
    tgt_lang: str,
    config: ExperimentConfig,
    spm_files: dict[str, str],
    processors: dict[str, Any],
    vocab: dict[str, int],
    scan: TrainingScan,
    progress: ProgressFn,
) -> dict[str, Any]:
    """The training pairs in shards of ``data.shard_size`` (the last may be smaller), each a
    complete dataset directory with its own copy of the SentencePiece model(s); the evaluation
    splits go to the first shard, which validation reads."""
    cfg = config.data
    assert cfg.shard_size is not None
    dtype = best_dtype(max(vocab.values()))
    writer = _ShardWriter(tmp, cfg.shard_size, src_lang, tgt_lang, dtype)
    train = _encode_split(
        tmp, splits[0], writer, src_lang, tgt_lang, processors, cfg, scan.lines, progress
    )
    train.sha256 = scan.sha256
    first = tmp / shard_name(0)
    evaluation = {
        split.name: _encode_split(
            first,
            split,
            _PairWriter(first, split.name, src_lang, tgt_lang, dtype),
            src_lang,
            tgt_lang,
            processors,
            cfg,
            None,
            progress,
        )
        for split in splits[1:]
    }
    names = [shard_name(i) for i in range(len(writer.shards))]
    for index, (name, part) in enumerate(zip(names, writer.shards, strict=True)):
        part.sha256 = scan.sha256  # the corpus the shard was cut from
        results = {"train": part, **(evaluation if index == 0 else {})}
        manifest = _manifest(splits, results, src_lang, tgt_lang, spm_files, vocab, cfg)
        manifest["shard"] = {"index": index, "of": len(names)}
        manifest["config"] = _made_with(cfg)
        for model in set(spm_files.values()):
            shutil.copyfile(tmp / model, tmp / name / model)
        (tmp / name / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (tmp / name / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    results = {"train": train, **evaluation}
    whole = _manifest(splits, results, src_lang, tgt_lang, spm_files, vocab, cfg)
    whole.update(format=SHARDED_FORMAT, format_version=SHARDED_FORMAT_VERSION, shards=names)
    whole["shard_size"] = cfg.shard_size
    return whole


def _split_entry(splits: list[SplitInput], name: str, result: SplitResult) -> dict[str, Any]:
    split = next(s for s in splits if s.name == name)
    entry: dict[str, Any] = {
        "sentences": result.sentences,
        "lines": result.lines,
        "tokens": {"src": result.src_tokens, "tgt": result.tgt_tokens},
        "inputs": {
            "src": {"path": str(split.src), "sha256": result.sha256["src"]},
            "tgt": {"path": str(split.tgt), "sha256": result.sha256["tgt"]},
        },
    }
    if result.filter is not None:
        entry["filter"] = result.filter.as_dict()
    return entry


# ---------------------------------------------------------------------------------------------
# pass 1: validate, hash, sample


@dataclass
class TrainingScan:
    lines: int
    sha256: dict[str, str]
    samples: dict[str, spm_lib.VocabularySample]


def _scan_training_pairs(split: SplitInput, cfg: DataConfig, need_sample: bool) -> TrainingScan:
    if cfg.joint:
        shared = spm_lib.vocabulary_sample(cfg.spm_type, cfg.spm_sample_size)
        samples = {"src": shared, "tgt": shared}
    else:
        samples = {
            "src": spm_lib.vocabulary_sample(cfg.spm_type, cfg.spm_sample_size),
            "tgt": spm_lib.vocabulary_sample(cfg.spm_type, cfg.spm_sample_size),
        }
    hashes = {"src": hashlib.sha256(), "tgt": hashlib.sha256()}
    lines = 0
    with _paired_lines(split, hashes) as pairs:
        for src, tgt in pairs:
            lines += 1
            if need_sample:
                samples["src"].add(src)
                samples["tgt"].add(tgt)
    if lines == 0:
        raise DataError(f"{split.src}: empty corpus (no lines)")
    return TrainingScan(lines, {k: h.hexdigest() for k, h in hashes.items()}, samples)


@contextlib.contextmanager
def _paired_lines(
    split: SplitInput, hashes: dict[str, Any] | None = None
) -> Iterator[Iterator[tuple[str, str]]]:
    """Source and target lines in lockstep; a DataError naming both counts if they differ."""
    with open_binary(split.src) as fs, open_binary(split.tgt) as ft:
        src = iter_lines(_hashing(fs, hashes and hashes["src"]), split.src)
        tgt = iter_lines(_hashing(ft, hashes and hashes["tgt"]), split.tgt)
        yield _lockstep(src, tgt, split)


def _hashing(stream: Iterable[bytes], hasher: Any) -> Iterator[bytes]:
    for raw in stream:
        if hasher is not None:
            hasher.update(raw)
        yield raw


def _lockstep(
    src: Iterator[str], tgt: Iterator[str], split: SplitInput
) -> Iterator[tuple[str, str]]:
    for count, (s, t) in enumerate(itertools.zip_longest(src, tgt)):
        if s is None or t is None:
            src_count = count + (s is not None) + sum(1 for _ in src)
            tgt_count = count + (t is not None) + sum(1 for _ in tgt)
            raise DataError(
                f"{split.src} has {src_count} lines but {split.tgt} has {tgt_count}; "
                "parallel files must have equal line counts"
            )
        yield s, t


# ---------------------------------------------------------------------------------------------
# SentencePiece


def _sentencepiece_models(
    tmp: Path,
    scan: TrainingScan,
    train: SplitInput,
    src_lang: str,
    tgt_lang: str,
    cfg: DataConfig,
    spm_models: Sequence[str | Path],
) -> dict[str, str]:
    """Train or copy the SentencePiece model(s) into ``tmp``; returns side -> file name."""
    if spm_models:
        return _reuse_models(tmp, [Path(p) for p in spm_models], cfg)
    if cfg.joint:
        model = _train(scan.samples["src"], cfg, f"{train.src} + {train.tgt}")
        (tmp / "spm.model").write_bytes(model)
        return {"src": "spm.model", "tgt": "spm.model"}
    files = {}
    for side, lang, path in (("src", src_lang, train.src), ("tgt", tgt_lang, train.tgt)):
        (tmp / f"spm.{lang}.model").write_bytes(_train(scan.samples[side], cfg, str(path)))
        files[side] = f"spm.{lang}.model"
    return files


def _train(sample: spm_lib.VocabularySample, cfg: DataConfig, origin: str) -> bytes:
    return spm_lib.train_model(
        sample, cfg.vocab_size, cfg.spm_type, cfg.character_coverage, cfg.workers, cfg.seed, origin
    )


def _reuse_models(tmp: Path, paths: list[Path], cfg: DataConfig) -> dict[str, str]:
    if len(paths) > 2:
        raise ConfigError("--spm-model takes one model (joint) or two (source, then target)")
    if len(paths) == 1 and not cfg.joint:
        raise ConfigError("--separate with --spm-model needs two models: source, then target")
    if len(paths) == 2 and cfg.joint:
        raise ConfigError("two --spm-model files need --separate")
    names = ["spm.model"] if len(paths) == 1 else ["spm.src.model", "spm.tgt.model"]
    for path, name in zip(paths, names, strict=True):
        data = spm_lib.read_model_file(path)
        spm_lib.load_processor(data, str(path))
        (tmp / name).write_bytes(data)
    return {"src": names[0], "tgt": names[-1]}


# ---------------------------------------------------------------------------------------------
# pass 2: encode and write


class _PairWriter:
    """Source and target token files of one split of one dataset directory."""

    def __init__(self, directory: Path, name: str, src_lang: str, tgt_lang: str, dtype: Any):
        self.src = IndexedWriter(directory / f"{name}.{src_lang}", dtype)
        self.tgt = IndexedWriter(directory / f"{name}.{tgt_lang}", dtype)

    def add(self, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> None:
        self.src.add(src_ids)
        self.tgt.add(tgt_ids)

    def close(self) -> None:
        self.src.close()
        self.tgt.close()

    def fill(self, result: SplitResult) -> None:
        result.sentences = self.src.sentences
        result.src_tokens, result.tgt_tokens = self.src.tokens, self.tgt.tokens


class _ShardWriter:
    """Training pairs into shard directories of ``size`` pairs each, opened as pairs arrive (so
    no shard is empty); ``shards`` holds each shard's counts once closed."""

    def __init__(self, root: Path, size: int, src_lang: str, tgt_lang: str, dtype: Any):
        self.root, self.size = root, size
        self.langs, self.dtype = (src_lang, tgt_lang), dtype
        self.current: _PairWriter | None = None
        self.shards: list[SplitResult] = []

    def add(self, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> None:
        start = 0
        while start < len(src_ids):
            if self.current is None or self.current.src.sentences == self.size:
                self._next()
            assert self.current is not None
            end = start + self.size - self.current.src.sentences
            self.current.add(src_ids[start:end], tgt_ids[start:end])
            start = end

    def _next(self) -> None:
        self._close_current()
        directory = self.root / shard_name(len(self.shards))
        directory.mkdir()
        self.current = _PairWriter(directory, "train", *self.langs, self.dtype)

    def _close_current(self) -> None:
        if self.current is not None:
            self.current.close()
            result = SplitResult()
            self.current.fill(result)
            result.lines = result.sentences  # the pairs it holds (the corpus lines: the whole's)
            self.shards.append(result)
            self.current = None

    def close(self) -> None:
        self._close_current()

    def fill(self, result: SplitResult) -> None:
        result.sentences = sum(s.sentences for s in self.shards)
        result.src_tokens = sum(s.src_tokens for s in self.shards)
        result.tgt_tokens = sum(s.tgt_tokens for s in self.shards)


def _encode_split(
    tmp: Path,
    split: SplitInput,
    writer: _PairWriter | _ShardWriter,
    src_lang: str,
    tgt_lang: str,
    processors: dict[str, Any],
    cfg: DataConfig,
    total: int | None,
    progress: ProgressFn,
) -> SplitResult:
    """Encode ``split`` through ``writer`` (evaluation sets also keep their raw text in ``tmp``)."""
    result = SplitResult(filter=FilterStats() if split.filtered else None)
    hashes = {"src": hashlib.sha256(), "tgt": hashlib.sha256()}
    with contextlib.ExitStack() as stack:
        stack.callback(writer.close)
        pairs = stack.enter_context(_paired_lines(split, None if split.filtered else hashes))
        raw_copies = None
        if not split.filtered:  # evaluation sets keep their raw text, for BLEU against it
            raw_copies = [
                stack.enter_context(open(tmp / f"{split.name}.raw.{lang}", "w", encoding="utf-8"))
                for lang in (src_lang, tgt_lang)
            ]
        for chunk in _chunks(pairs, cfg.chunk_lines, cfg.chunk_chars):
            src_lines, tgt_lines = zip(*chunk, strict=True)
            src_ids = processors["src"].encode(
                list(src_lines), out_type=int, num_threads=cfg.workers
            )
            tgt_ids = processors["tgt"].encode(
                list(tgt_lines), out_type=int, num_threads=cfg.workers
            )
            if result.filter is not None:
                src_ids, tgt_ids = _filter(src_ids, tgt_ids, cfg, result.filter)
            if raw_copies is not None:
                raw_copies[0].writelines(f"{s}\n" for s in src_lines)
                raw_copies[1].writelines(f"{t}\n" for t in tgt_lines)
            writer.add(src_ids, tgt_ids)
            result.lines += len(chunk)
            progress(split.name, result.lines, total)
    writer.fill(result)
    if not split.filtered:
        result.sha256 = {k: h.hexdigest() for k, h in hashes.items()}
    if split.filtered and result.sentences == 0:
        raise DataError(f"{split.src}: no training pairs left after filtering ({result.filter})")
    return result


def _chunks(
    pairs: Iterator[tuple[str, str]], max_lines: int, max_chars: int
) -> Iterator[list[tuple[str, str]]]:
    """Pairs in chunks of at most ``max_lines`` pairs, ended early once they hold ``max_chars``
    characters: a chunk's memory (its text and ids) follows its text, so long lines must not
    make chunks larger than short ones do."""
    chunk: list[tuple[str, str]] = []
    chars = 0
    for pair in pairs:
        chunk.append(pair)
        chars += len(pair[0]) + len(pair[1])
        if len(chunk) == max_lines or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _filter(
    src_ids: list[list[int]], tgt_ids: list[list[int]], cfg: DataConfig, stats: FilterStats
) -> tuple[list[list[int]], list[list[int]]]:
    kept_src, kept_tgt = [], []
    max_len, max_ratio = cfg.max_length, cfg.max_length_ratio
    for s, t in zip(src_ids, tgt_ids, strict=True):
        ls, lt = len(s), len(t)
        if ls == 0 or lt == 0:
            stats.empty += 1
        elif ls > max_len or lt > max_len:
            stats.too_long += 1
        elif max_ratio is not None and max(ls, lt) > max_ratio * min(ls, lt):
            stats.ratio += 1
        else:
            kept_src.append(s)
            kept_tgt.append(t)
    stats.kept += len(kept_src)
    return kept_src, kept_tgt
