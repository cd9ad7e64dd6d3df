"""Exclusive locks on what a command writes (a save directory, a dataset destination).

An OS file lock (``flock``) belongs to its open file, so it dies with the process: a killed run
never leaves a stale lock behind. The lock file holds the holder's PID and host, which a refused
second run names. Locks are reentrant within a process (the CLI takes the lock before it opens
``train.log``; the Python API it calls takes it again).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from s2s_cli.errors import InUseError, StorageError
from s2s_cli.io import HOST, describe_os_error

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected from each other there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SAVE_DIR_LOCK = ".s2s.lock"

_held: dict[Path, list[int]] = {}  # lock file -> [file descriptor, depth]


@contextlib.contextmanager
def exclusive(lock_file: Path, resource: Path, command: str, advice: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block, or raise InUseError naming the process that holds it.

    ``resource`` is what the lock protects (named in the error), ``command`` what this process
    is doing (recorded for others to read), ``advice`` the way out offered to a refused user.
    """
    key = Path(os.path.abspath(lock_file))
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(key, resource, command, advice)
    _held[key] = [fd, 1] if fd is not None else [-1, 1]
    try:
        yield
    finally:
        del _held[key]
        if fd is not None:
            _release(key, fd)


def save_dir_lock(save_dir: Path) -> contextlib.AbstractContextManager[None]:
    return exclusive(
        save_dir / SAVE_DIR_LOCK,
        save_dir,
        "s2s train",
        "wait for it to finish or choose another --save-dir",
    )


def destination_lock(dest: Path) -> contextlib.AbstractContextManager[None]:
    return exclusive(
        dest.parent / f".{dest.name}.lock",
        dest,
        "s2s preprocess",
        "wait for it to finish or choose another --dest",
    )


def _acquire(lock_file: Path, resource: Path, command: str, advice: str) -> int | None:
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StorageError(f"{lock_file}: cannot create ({describe_os_error(err)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InUseError(f"{resource}: in use by {holder}; {advice}") from None
        except OSError as err:  # e.g. ENOLCK on a file system without locks
            log.warning(
                "%s: cannot lock (%s); a second run there would not be refused",
                lock_file,
                describe_os_error(err),
            )
            os.close(fd)
            return None
        if _still_named(fd, lock_file):
            break
        os.close(fd)  # its holder removed the file as we opened it: lock the new one
    with contextlib.suppress(OSError):  # a full disk: the lock holds, unsigned
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {HOST} {command}\n".encode())
    return fd


def _still_named(fd: int, lock_file: Path) -> bool:
    try:
        named = os.stat(lock_file)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> str:
    """``another s2s train (PID 123 on host)``, from what the holder wrote into the file."""
    with contextlib.suppress(OSError, ValueError):
        pid, host, *command = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        where = "" if host == HOST else f" on {host}"
        return f"another {' '.join(command) or 'process'} (PID {int(pid)}{where})"
    return "another process (it has not written its PID yet)"


def _release(lock_file: Path, fd: int) -> None:
    # Unlink before unlocking: a waiter that opened this file sees it is gone and starts over.
    with contextlib.suppress(OSError):
        os.unlink(lock_file)
    os.close(fd)
