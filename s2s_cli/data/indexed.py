"""Flat binarized token files read zero-copy through numpy memmap.

``NAME.bin`` holds every sentence's token ids back to back (uint16 when the vocabulary fits, else
int32). ``NAME.idx`` holds a 16-byte header (magic, version, dtype code) followed by ``n + 1`` int64
offsets, in tokens, so sentence ``i`` is ``bin[offsets[i]:offsets[i + 1]]``. Offsets are appended as
sentences arrive, so writing needs no memory proportional to the corpus.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from s2s_cli.errors import DataError

MAGIC = b"S2SIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<8sII")
DTYPES = {1: np.uint16, 2: np.int32}
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def best_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


class IndexedWriter:
    """Append sentences (arrays of ids) to ``prefix.bin`` / ``prefix.idx``."""

    def __init__(self, prefix: Path, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        # Both stay open while sentences stream in; close() (or the with block) closes them.
        self._bin = open(f"{prefix}.bin", "wb")  # noqa: SIM115
        self._idx = open(f"{prefix}.idx", "wb")  # noqa: SIM115
        self._idx.write(HEADER.pack(MAGIC, VERSION, DTYPE_CODES[self.dtype]))
        self._idx.write(np.zeros(1, dtype=np.int64).tobytes())
        self._offset = 0
        self.sentences = 0

    def add(self, sentences: Iterable[list[int] | np.ndarray]) -> None:
        """Append a chunk of sentences."""
        arrays = [np.asarray(s, dtype=self.dtype) for s in sentences]
        if not arrays:
            return
        sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        self._bin.write(np.concatenate(arrays).tobytes() if sizes.sum() else b"")
        self._idx.write((self._offset + np.cumsum(sizes)).tobytes())
        self._offset += int(sizes.sum())
        self.sentences += len(arrays)

    @property
    def tokens(self) -> int:
        return self._offset

    def close(self) -> None:
        self._bin.close()
        self._idx.close()

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexedDataset:
    """Random access to the sentences of one ``.bin``/``.idx`` pair; pickles as its path."""

    def __init__(
        self, prefix: str | Path, sentences: int | None = None, tokens: int | None = None
    ) -> None:
        """``sentences`` and ``tokens`` (from the manifest, when known) are checked against the
        index, so a damaged index is named as such instead of blaming the ``.bin``."""
        self.prefix = Path(prefix)
        self.expected = (sentences, tokens)
        self._open()

    def _open(self) -> None:
        idx_path = Path(f"{self.prefix}.idx")
        try:
            with open(idx_path, "rb") as f:
                header = f.read(HEADER.size)
        except OSError as err:
            raise DataError(f"{idx_path}: cannot read ({err.strerror or err})") from None
        if len(header) < HEADER.size:
            raise DataError(f"{idx_path}: truncated index file")
        magic, version, code = HEADER.unpack(header)
        if magic != MAGIC or code not in DTYPES:
            raise DataError(f"{idx_path}: not an s2s index file")
        if version != VERSION:
            raise DataError(f"{idx_path}: index format version {version}, expected {VERSION}")
        self.dtype = np.dtype(DTYPES[code])
        self.offsets = self._offsets(idx_path)
        total = int(self.offsets[-1])
        bin_path = Path(f"{self.prefix}.bin")
        expected = total * self.dtype.itemsize
        if not bin_path.exists() or bin_path.stat().st_size != expected:
            raise DataError(f"{bin_path}: missing or wrong size (expected {expected} bytes)")
        # np.memmap cannot map an empty file; an empty split is a valid (if useless) dataset.
        self.tokens = (
            np.memmap(bin_path, dtype=self.dtype, mode="r") if total else np.zeros(0, self.dtype)
        )
        self._sizes: np.ndarray | None = None

    def _offsets(self, idx_path: Path) -> np.ndarray:
        """The sentence offsets, after checking the index's size and ends against what is known."""
        body = idx_path.stat().st_size - HEADER.size
        sentences, tokens = self.expected
        if body < 8 or body % 8 or (sentences is not None and body != 8 * (sentences + 1)):
            wanted = "" if sentences is None else f", expected {8 * (sentences + 1)}"
            raise DataError(
                f"{idx_path}: truncated or damaged index file ({body} bytes of offsets{wanted})"
            )
        offsets = np.memmap(idx_path, dtype=np.int64, mode="r", offset=HEADER.size)
        if int(offsets[0]) != 0 or (tokens is not None and int(offsets[-1]) != tokens):
            raise DataError(f"{idx_path}: damaged index file (its offsets do not add up)")
        return offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    @property
    def sizes(self) -> np.ndarray:
        """Length of every sentence (int32), computed once."""
        if self._sizes is None:
            self._sizes = np.diff(self.offsets).astype(np.int32)
        return self._sizes

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix, "expected": self.expected}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self.expected = state.get("expected", (None, None))
        self._open()
