"""The files of a run's save directory: ``checkpoint_last.pt``, ``checkpoint_best.pt`` and the
periodic ``checkpoint_u<N>.pt``, each written atomically.

``checkpoint_last.pt`` and the periodic ones hold everything a resume needs; ``checkpoint_best.pt``
holds what translating and averaging need (config, vocabularies, weights, progress), without the
optimizer and RNG state that make up about two thirds of a full checkpoint, unless
``train.best_with_state`` asks for them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from s2s_cli.checkpoint import Checkpoint, link_or_copy, remove_quietly, save_checkpoint

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
# What a run writes there atomically (a regular expression): the temporaries of these that a
# killed run left are removed when the next run takes the directory's lock.
SAVE_DIR_FILES = r"checkpoint_(?:last|best|u\d+)\.pt|config\.yaml|metrics\.jsonl"


class SaveDirectory:
    """Where a run keeps its checkpoints; only rank 0 writes."""

    def __init__(
        self, path: Path, save_every: int | None, keep_last: int, best_with_state: bool = False
    ) -> None:
        self.path = path
        self.save_every = save_every
        self.keep_last = keep_last
        self.best_with_state = best_with_state

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    def write(self, checkpoint: Checkpoint, new_best: bool) -> None:
        """``checkpoint_last.pt`` always; periodic names are links to it; the best is its own
        smaller file (or a link too, with ``best_with_state``)."""
        save_checkpoint(checkpoint, self.last)
        if new_best and self.best_with_state:
            link_or_copy(self.last, self.best)
        elif new_best:
            save_checkpoint(dataclasses.replace(checkpoint, training=None), self.best)
        updates = checkpoint.progress.updates
        if self.save_every and updates and updates % self.save_every == 0:
            link_or_copy(self.last, self.path / f"checkpoint_u{updates}.pt")
            self._prune_periodic()

    def result(self) -> Path:
        """What a finished run returns: the best checkpoint, else the last."""
        return self.best if self.best.exists() else self.last

    def _prune_periodic(self) -> None:
        periodic = sorted(
            self.path.glob("checkpoint_u*.pt"), key=lambda p: int(p.stem.split("_u")[1])
        )
        for path in periodic[: -self.keep_last]:
            remove_quietly(path)
