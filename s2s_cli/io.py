"""File plumbing: atomic writes, transparent .gz, and UTF-8 line reading with line numbers."""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from s2s_cli.errors import DataError


def open_binary(path: Path) -> BinaryIO:
    """Open a (possibly gzipped) file for binary reading; one-line errors for the usual failures."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def iter_lines(stream: Iterable[bytes], name: str | Path) -> Iterator[str]:
    """Decode byte lines as strict UTF-8, naming the file and line on failure."""
    try:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{name}: line {number}: invalid UTF-8 (byte 0x{raw[err.start]:02x} "
                    f"at column {err.start + 1})"
                ) from None
            yield line.rstrip("\r\n")
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{name}: cannot read ({err})") from None


def read_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (``.gz`` read transparently), without their newlines."""
    with open_binary(path) as stream:
        yield from iter_lines(stream, path)


def resolve_text_file(prefix: str | Path, suffix: str) -> Path:
    """``PREFIX.suffix`` or, failing that, ``PREFIX.suffix.gz``."""
    plain = Path(f"{prefix}.{suffix}")
    if plain.exists():
        return plain
    gz = Path(f"{plain}.gz")
    if gz.exists():
        return gz
    raise DataError(f"{plain}: no such file (nor {gz.name})")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes it private; outputs are not
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable_dir(path: Path, what: str = "directory") -> None:
    """Create ``path`` if needed and prove we can write in it (one-line error otherwise)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".s2s-probe-"):
            pass
    except OSError as err:
        raise DataError(f"{path}: cannot write to this {what} ({err.strerror or err})") from None
