"""Exceptions for problems a user can cause; the CLI turns them into one-line errors."""

from __future__ import annotations

import re


class S2SError(Exception):
    """Base class: a user-facing error with a one-line message (exit status 1)."""

    exit_code = 1


class ConfigError(S2SError):
    """A bad configuration key, value or command-line combination (exit status 2)."""

    exit_code = 2


class DataError(S2SError):
    """Unreadable, malformed or inconsistent input data."""


class CheckpointError(S2SError):
    """A missing, corrupt or incompatible checkpoint."""


class TrainingDiverged(S2SError):
    """Training produced no finite update for too long, or the optimizer step overflowed; the
    last checkpoint written before it is left untouched (exit status 1)."""


class StorageError(S2SError):
    """The operating system refused a read or write: a full disk, missing permission, read-only
    or failing storage (exit status 1). Whatever was complete before is left as it was."""


class InUseError(S2SError):
    """Another process holds the lock on a save directory or dataset destination (exit status 1)."""


class LostPeersError(S2SError):
    """A distributed run's collective failed: another process or node died, the network failed,
    or a peer stayed silent past ``train.dist_timeout_minutes`` (exit status 1). The last
    checkpoint is left as it was; the same command resumes from it."""


class OutOfMemory(S2SError):
    """The CPU or GPU allocator refused memory (exit status 1); the message says what was being
    done and what to make smaller. Whatever was saved before is left as it was."""


def out_of_memory(err: BaseException) -> str | None:
    """If ``err`` is an allocator's out-of-memory error (CPU, CUDA, MPS, or Python's own), how
    much it could not get, in words ("could not allocate 37.3 GiB"); else None.

    Recognised by message, so that callers need not import torch: PyTorch raises the CPU's as a
    plain ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N
    bytes") and CUDA's as ``torch.OutOfMemoryError`` ("CUDA out of memory. Tried to allocate
    20.00 MiB ...")."""
    if isinstance(err, MemoryError):
        return "could not allocate memory"
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if "can't allocate memory" not in text and "out of memory" not in text.lower():
        return None
    if match := re.search(r"you tried to allocate (\d+) bytes", text):
        return f"could not allocate {int(match.group(1)) / 2**30:,.1f} GiB"
    if match := re.search(r"Tried to allocate ([\d.]+ [KMGT]iB)", text):
        return f"could not allocate {match.group(1)}"
    return "could not allocate memory"
