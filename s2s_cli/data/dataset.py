"""A preprocessed dataset directory: its manifest, SentencePiece models and parallel splits."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2s_cli.data.indexed import IndexedDataset
from s2s_cli.errors import DataError

FORMAT = "s2s-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# a directory of dataset directories, one per training shard (s2s_cli/data/shards.py)
SHARDED_FORMAT = "s2s-sharded-dataset"
SHARDED_FORMAT_VERSION = 1


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The dataset's manifest, checked for format and version."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such dataset directory (make one with `s2s preprocess`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {data_dir} is not an s2s dataset directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: corrupt manifest ({err})") from None
    if isinstance(manifest, dict) and manifest.get("format") == SHARDED_FORMAT:
        first = (manifest.get("shards") or ["shard-00000"])[0]
        raise DataError(
            f"{data_dir}: a sharded dataset (`s2s train --data {data_dir}` trains on all its "
            f"shards); name one shard here, e.g. {data_dir / str(first)}"
        )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an s2s dataset manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path}: dataset format version {version} is not supported by this s2s "
            f"(expects {FORMAT_VERSION}); re-run `s2s preprocess`"
        )
    return manifest


def made_with(manifest: dict[str, Any]) -> dict[str, Any]:
    """The data settings a dataset was made with, as ``data.*`` config values: keys this version
    knows (an older s2s recorded others, e.g. the languages), without ``path`` (where a dataset
    is now is a run's business, not its making's)."""
    from s2s_cli.config import DataConfig

    known = {f.name for f in dataclasses.fields(DataConfig)} - {"path"}
    recorded = manifest.get("config", {}).get("data", {})
    values = {k: v for k, v in recorded.items() if k in known}
    values["joint"] = bool(manifest["joint"])
    return values


@dataclass
class ParallelSplit:
    """Source and target sentences of one split, aligned by index (ids without BOS/EOS)."""

    src: IndexedDataset
    tgt: IndexedDataset

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[index], self.tgt[index]

    @property
    def src_sizes(self) -> np.ndarray:
        return self.src.sizes

    @property
    def tgt_sizes(self) -> np.ndarray:
        return self.tgt.sizes


class Dataset:
    """A dataset directory written by ``s2s preprocess``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.dir = Path(data_dir)
        self.manifest = read_manifest(self.dir)
        self.src_lang: str = self.manifest["src_lang"]
        self.tgt_lang: str = self.manifest["tgt_lang"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def joint(self) -> bool:
        return bool(self.manifest["joint"])

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        sizes = self.manifest["vocab_size"]
        return int(sizes["src"]), int(sizes["tgt"])

    def spm_bytes(self, side: str) -> bytes:
        path = self.dir / self.manifest["spm"][side]
        try:
            return path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror or err})") from None

    def split(self, name: str) -> ParallelSplit:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.dir}: no split '{name}' (has: {', '.join(self.splits)})")
        info = self.manifest["splits"][name]
        sentences, tokens = info.get("sentences"), info.get("tokens", {})
        split = ParallelSplit(
            IndexedDataset(self.dir / f"{name}.{self.src_lang}", sentences, tokens.get("src")),
            IndexedDataset(self.dir / f"{name}.{self.tgt_lang}", sentences, tokens.get("tgt")),
        )
        if len(split.src) != len(split.tgt):
            raise DataError(f"{self.dir}: split '{name}' has unequal source and target counts")
        return split

    def raw_text_path(self, name: str, side: str) -> Path | None:
        """The untouched text of a non-training split (for BLEU against raw references)."""
        lang = self.src_lang if side == "src" else self.tgt_lang
        path = self.dir / f"{name}.raw.{lang}"
        return path if path.exists() else None
