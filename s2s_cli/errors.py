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
