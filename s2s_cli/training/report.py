"""Training progress: periodic log lines, a rich progress bar, JSON-lines metrics, TensorBoard."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from s2s_cli.device import memory_summary
from s2s_cli.errors import StorageError
from s2s_cli.io import atomic_write_text, describe_os_error
from s2s_cli.training.step import UpdateResult

log = logging.getLogger(__name__)


class Window:
    """Sums over the updates since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.nll = 0.0
        self.tokens = self.updates = self.padded = self.positions = 0
        self.grad_norms: list[float] = []
        self.started = time.perf_counter()

    def add(self, result: UpdateResult) -> None:
        self.loss += result.loss
        self.nll += result.nll
        self.tokens += result.tokens
        self.updates += 1
        self.padded += result.padded
        self.positions += result.positions
        if math.isfinite(result.grad_norm):
            self.grad_norms.append(result.grad_norm)


class Reporter:
    """Everything a training run tells the user; silent on non-zero ranks."""

    def __init__(
        self,
        save_dir: Path,
        enabled: bool,
        log_every: int,
        total_updates: int | None,
        progress: bool,
        tensorboard: bool,
        console: Any = None,
        device: torch.device | None = None,
    ) -> None:
        self.enabled = enabled
        self.device = device
        self.log_every = log_every
        self.total_updates = total_updates
        self.metrics_path = save_dir / "metrics.jsonl"
        self.window = Window()
        self.started = time.perf_counter()
        self._progress = None
        self._task = None
        self._tb = None
        if not enabled:
            return
        if progress:
            self._start_progress(console)
        if tensorboard:
            self._tb = _tensorboard_writer(save_dir / "tensorboard")

    def resume_metrics(self, update: int) -> None:
        """Drop metric lines written after ``update`` by an interrupted run (they will recur)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("update", 0) <= update
        ]
        atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))

    def update(self, update: int, epoch: int, result: UpdateResult, lr: float) -> None:
        self.window.add(result)
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=update, description=f"epoch {epoch}")
        if update % self.log_every == 0:
            self._log_window(update, epoch, lr)

    def _log_window(self, update: int, epoch: int, lr: float) -> None:
        w = self.window
        seconds = max(time.perf_counter() - w.started, 1e-9)
        tokens = max(w.tokens, 1)
        record = {
            "kind": "train",
            "update": update,
            "epoch": epoch,
            "loss": w.loss / tokens,
            "ppl": math.exp(min(w.nll / tokens, 100.0)),
            "lr": lr,
            "grad_norm": sum(w.grad_norms) / len(w.grad_norms) if w.grad_norms else float("nan"),
            "tokens_per_s": w.tokens / seconds,
            "padding": w.padded / max(w.positions, 1),
            "elapsed_s": time.perf_counter() - self.started,
        }
        eta = self._eta(update, record["elapsed_s"])
        memory = self._memory(record)
        log.info(
            "update %d | epoch %d | loss %.3f | ppl %.2f | lr %.3g | gnorm %.2f | %.0f tgt tok/s | "
            "pad %.1f%% | %s elapsed%s%s",
            update,
            epoch,
            record["loss"],
            record["ppl"],
            lr,
            record["grad_norm"],
            record["tokens_per_s"],
            100 * record["padding"],
            _duration(record["elapsed_s"]),
            f" | ETA {_duration(eta)}" if eta is not None else "",
            f" | {memory}" if memory else "",
        )
        self._write(record)
        w.reset()

    def _memory(self, record: dict[str, Any]) -> str | None:
        """The CUDA memory summary for the log line (and its numbers for the record)."""
        if self.device is None or self.device.type != "cuda":
            return None
        record["gpu_memory_gib"] = torch.cuda.memory_allocated(self.device) / 2**30
        record["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return memory_summary(self.device)

    def _eta(self, update: int, elapsed: float) -> float | None:
        """Seconds left: by the update limit, or by train.max_minutes, whichever ends sooner."""
        estimates = []
        if self.time_left_s is not None:
            estimates.append(max(0.0, self.time_left_s - elapsed))
        if self.total_updates and update > self._first_update:
            rate = (update - self._first_update) / elapsed
            estimates.append((self.total_updates - update) / rate)
        return min(estimates) if estimates else None

    def validation(self, update: int, epoch: int, metrics: dict[str, float], best: bool) -> None:
        if not self.enabled:
            return
        log.info(
            "valid | update %d | epoch %d | loss %.3f | ppl %.2f | BLEU %.2f | chrF %.2f | "
            "exact %.1f%%%s",
            update,
            epoch,
            metrics["loss"],
            metrics["ppl"],
            metrics["bleu"],
            metrics["chrf"],
            metrics["accuracy"],
            " | best" if best else "",
        )
        elapsed = time.perf_counter() - self.started
        self._write(
            {
                "kind": "valid",
                "update": update,
                "epoch": epoch,
                **metrics,
                "best": best,
                "elapsed_s": elapsed,
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise StorageError(
                f"{self.metrics_path}: cannot write ({describe_os_error(err)})"
            ) from None
        if self._tb is not None:
            prefix = record["kind"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("update", "kind"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["update"])

    def start(self, update: int, time_left_s: float | None = None) -> None:
        self._first_update = update
        self.time_left_s = time_left_s
        self.started = time.perf_counter()
        self.window.reset()
        if self._progress is not None:
            self._progress.update(self._task, completed=update)

    def close(self) -> None:
        if self._progress is not None:
            # clearing the bar fails with EIO when the terminal has gone away (SIGHUP): the run
            # is saved by then, and the exit status must still say why it stopped
            with contextlib.suppress(OSError):
                self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()

    def _start_progress(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("training", total=self.total_updates)

    _first_update = 0
    time_left_s: float | None = None


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(
            "train.tensorboard is on but the tensorboard package is not installed; skipping"
        )
        return None
    return SummaryWriter(str(path))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
