"""File plumbing: atomic writes, transparent .gz, UTF-8 line reading with line numbers, and
one-line messages for what the operating system refuses."""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import re
import select
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from s2s_cli.errors import DataError, StorageError

log = logging.getLogger(__name__)

# Temporaries are named ``.NAME.PID@HOST.RANDOM.tmp``, so a later run can tell the leftovers of a
# killed process (its PID is gone) from the live file of one still writing.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def describe_os_error(err: OSError) -> str:
    """``No space left on device [ENOSPC]``: the reason, and the name to search for."""
    code = errno.errorcode.get(err.errno or 0)
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason} [{code}]" if code else reason


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
        raise DataError(f"{path}: cannot read ({describe_os_error(err)})") from None


def iter_lines(stream: Iterable[bytes], name: str | Path) -> Iterator[str]:
    """Decode byte lines as strict UTF-8, naming the file and line on failure."""
    try:
        for number, raw in enumerate(stream, start=1):
            yield _decode_line(raw, number, name)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{name}: cannot read ({err})") from None


def _decode_line(raw: bytes, number: int, name: str | Path) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{name}: line {number}: invalid UTF-8 (byte 0x{raw[err.start]:02x} "
            f"at column {err.start + 1})"
        ) from None
    return line.rstrip("\r\n")


def is_stream(stream: BinaryIO) -> bool:
    """A pipe, FIFO, socket or terminal (where input can stall), not a regular file."""
    if os.name != "posix" or isinstance(stream, gzip.GzipFile):
        return False
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # no file descriptor (e.g. a test's BytesIO)
        return False


def iter_lines_or_stalls(
    stream: BinaryIO, name: str | Path, stall_seconds: float
) -> Iterator[str | None]:
    """Like ``iter_lines`` for a pipe or terminal, but yields None whenever no complete line has
    arrived for ``stall_seconds``: a consumer can act on what it has instead of waiting for a
    slow producer (and a fast one never stalls, so it still gets full batches)."""
    fd = stream.fileno()
    pending, number, ended = b"", 0, False
    while True:
        if b"\n" in pending:
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                number += 1
                yield _decode_line(raw, number, name)
            continue
        if ended:
            if pending:
                yield _decode_line(pending, number + 1, name)
            return
        try:
            if not select.select([fd], [], [], stall_seconds)[0]:
                yield None
                select.select([fd], [], [])  # then wait for more, without spinning
            chunk = os.read(fd, 1 << 16)
        except OSError as err:
            raise DataError(f"{name}: cannot read ({describe_os_error(err)})") from None
        ended = not chunk
        pending += chunk


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
    raise DataError(f"{plain}: no such file (nor {gz.name}){_prefix_hint(str(prefix))}")


def _prefix_hint(prefix: str) -> str:
    """Most often the user gave a file (``data/train.de``) where a prefix (``data/train``) goes."""
    stem = prefix[:-3] if prefix.endswith(".gz") else prefix
    if not Path(prefix).is_file() or "." not in Path(stem).name:
        return ""
    return (
        f"; a PREFIX names the files without their language: did you mean {stem.rsplit('.', 1)[0]}?"
    )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    An OS error while writing it (full disk, permissions, read-only or failing storage) becomes a
    one-line StorageError naming ``path``; the previous ``path``, if any, is left untouched.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise StorageError(f"{path}: cannot write ({describe_os_error(err)})") from None
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes it private; outputs are not
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.filename not in (None, tmp, str(path)) and err.filename2 != tmp:
            raise  # another file's failure, reported by whoever handles it
        raise StorageError(f"{path}: cannot write ({describe_os_error(err)})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}@{HOST}."


def remove_stale_temporaries(directory: Path, targets: str, exclusive: bool = False) -> list[Path]:
    """Remove the temporaries that killed processes left beside files whose names match the
    regular expression ``targets``; returns what was removed.

    A temporary is stale when the process that made it (on this host) is gone, or, when the
    caller holds the directory's lock (``exclusive``), whenever it is not this process's own.
    """
    pattern = re.compile(
        rf"\.(?P<target>{targets})\.(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.)?[A-Za-z0-9_]+\.tmp"
    )
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if pid == os.getpid():
            continue
        ours = match["host"] == HOST
        if exclusive or (pid is not None and ours and not process_alive(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("removed %s, left by a process that was killed", entry.path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
        raise StorageError(
            f"{path}: cannot write to this {what} ({describe_os_error(err)})"
        ) from None
