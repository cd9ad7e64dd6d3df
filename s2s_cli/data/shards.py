"""Training data in shards: several dataset directories trained on in turn.

Epoch ``e`` (1-based) trains on shard ``(e - 1) % n`` (fairseq's convention), so the data one
epoch reads stays bounded however large the corpus, and a resumed run, which knows its epoch,
reads the shard it stopped in. Validation, the vocabularies and the data settings come from the
first shard. Shards must share languages and SentencePiece models: one model reads them all.

``--data`` names the shards in one of two ways: a sharded dataset (``s2s preprocess
--shard-size N``: a directory whose manifest lists its shards, each a complete dataset
directory), or dataset directories joined by ``:`` (``A:B:C``, e.g. from several ``s2s
preprocess --spm-model`` runs). A plain dataset directory is one shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s2s_cli.data.dataset import (
    MANIFEST,
    SHARDED_FORMAT,
    SHARDED_FORMAT_VERSION,
    Dataset,
    ParallelSplit,
)
from s2s_cli.errors import DataError


def dataset_dirs(spec: str | Path) -> list[Path]:
    """The dataset directories ``spec`` names, in training order (see the module docstring)."""
    text = str(spec)
    if Path(text).is_dir() or ":" not in text:
        return _shards_of(Path(text))
    parts = text.split(":")
    if not all(parts):
        raise DataError(f"{text}: an empty name among the shards (expected A:B:C)")
    return [shard for part in parts for shard in _shards_of(Path(part))]


def sharded_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a sharded dataset directory, or None for anything else (a plain dataset,
    or a directory :func:`~s2s_cli.data.dataset.read_manifest` will reject with the reason)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
        return None
    version = manifest.get("format_version")
    shards = manifest.get("shards")
    if version != SHARDED_FORMAT_VERSION or not isinstance(shards, list) or not shards:
        raise DataError(
            f"{directory / MANIFEST}: sharded dataset format version {version} with "
            f"{shards!r} as shards is not supported (expects version {SHARDED_FORMAT_VERSION})"
        )
    return manifest


def _shards_of(directory: Path) -> list[Path]:
    manifest = sharded_manifest(directory)
    if manifest is None:
        return [directory]
    return [directory / str(name) for name in manifest["shards"]]


class TrainingShards:
    """The training data of a run: one or more datasets, one per epoch in turn."""

    def __init__(self, spec: str | Path) -> None:
        self.datasets = [Dataset(d) for d in dataset_dirs(spec)]
        _check_compatible(self.datasets)
        self._open: tuple[int, ParallelSplit] | None = None

    @property
    def first(self) -> Dataset:
        """Where validation, vocabularies and data settings come from."""
        return self.datasets[0]

    def __len__(self) -> int:
        return len(self.datasets)

    def index(self, epoch: int) -> int:
        """The shard epoch ``epoch`` (1-based) trains on."""
        return (epoch - 1) % len(self.datasets)

    def train_split(self, epoch: int) -> ParallelSplit:
        """Epoch ``epoch``'s training split (only the current shard's memory maps stay open)."""
        index = self.index(epoch)
        if self._open is None or self._open[0] != index:
            self._open = index, self.datasets[index].split("train")
        return self._open[1]


def _check_compatible(datasets: list[Dataset]) -> None:
    """Every shard has training data in the first shard's languages and vocabularies."""
    first = datasets[0]
    models = {side: first.spm_bytes(side) for side in ("src", "tgt")}
    for shard in datasets:
        if "train" not in shard.splits:
            raise DataError(f"{shard.dir}: no training split, so it cannot be a training shard")
        if shard is first:
            continue
        differences = [
            what
            for what, same in (
                ("languages", (shard.src_lang, shard.tgt_lang) == (first.src_lang, first.tgt_lang)),
                ("vocabulary sizes", shard.vocab_sizes == first.vocab_sizes),
                ("joint vocabulary", shard.joint == first.joint),
                (
                    "SentencePiece models",
                    all(shard.spm_bytes(side) == models[side] for side in ("src", "tgt")),
                ),
            )
            if not same
        ]
        if differences:
            raise DataError(
                f"{shard.dir}: {', '.join(differences)} differ from the first shard's "
                f"({first.dir}); shards must share their SentencePiece models (make them with "
                "`s2s preprocess --shard-size N`, or with --spm-model from the first)"
            )
