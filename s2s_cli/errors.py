"""Exceptions for problems a user can cause; the CLI turns them into one-line errors."""

from __future__ import annotations


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
