"""Divergence: stop when no update has been finite for too long, warn when the loss explodes.

Non-finite gradients skip an update (training/step.py); a few in a row are normal while fp16's
gradient scaler calibrates, a long run of them means the model has diverged and every further
update is wasted. The loss is watched as an exponential moving average against its running
minimum, so a loss that climbs for many updates is reported while there is time to act.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from s2s_cli.errors import TrainingDiverged
from s2s_cli.training.step import UpdateResult

log = logging.getLogger(__name__)

SMOOTHING = 0.9  # moving average of the per-token training loss
WARMUP = 50  # updates before the running minimum is trusted
RATIO, MARGIN = 2.0, 1.0  # warn when the average exceeds both 2x the minimum and minimum + 1 nat
WARN_EVERY = 200  # updates between repeated warnings


class DivergenceWatch:
    def __init__(self, max_nonfinite: int | None, last_checkpoint: Path) -> None:
        self.max_nonfinite = max_nonfinite
        self.last_checkpoint = last_checkpoint
        self.nonfinite = 0
        self.average: float | None = None
        self.minimum = math.inf
        self.warned_at = -WARN_EVERY

    def observe(self, update: int, result: UpdateResult) -> None:
        if result.skipped or not math.isfinite(result.loss):
            self.nonfinite += 1
            if self.max_nonfinite is not None and self.nonfinite >= self.max_nonfinite:
                kept = (
                    f"; {self.last_checkpoint} is the last good checkpoint"
                    if self.last_checkpoint.exists()
                    else ""
                )
                raise TrainingDiverged(
                    f"training diverged: {self.nonfinite} updates in a row up to update {update} "
                    "had non-finite gradients (train.max_nonfinite_updates); lower train.lr or "
                    f"set train.clip_norm{kept}"
                )
            return
        self.nonfinite = 0
        loss = result.loss / max(result.tokens, 1)
        self.average = (
            loss if self.average is None else SMOOTHING * self.average + (1 - SMOOTHING) * loss
        )
        if update >= WARMUP:
            self.minimum = min(self.minimum, self.average)
        exploding = self.average > RATIO * self.minimum and self.average > self.minimum + MARGIN
        if exploding and update - self.warned_at >= WARN_EVERY:
            self.warned_at = update
            log.warning(
                "update %d: the training loss (%.3f, moving average) is %.1fx its minimum (%.3f): "
                "training may be diverging; consider a lower train.lr",
                update,
                self.average,
                self.average / self.minimum,
                self.minimum,
            )
