"""The training run: set-up, the epoch/update loop, validation, checkpoints and exact resume.

``train(cfg, data_dir, save_dir)`` returns the best checkpoint's path. A run that finds
``checkpoint_last.pt`` in its save directory continues it exactly: same data order (batches are
a pure function of seed and epoch, the position is saved), same RNG streams, same optimizer and
schedule state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from s2s_cli.checkpoint import (
    checkpoint_config,
    link_or_copy,
    load_checkpoint,
    remove_quietly,
    save_checkpoint,
    spm_to_tensor,
)
from s2s_cli.config import ExperimentConfig, to_dict, write_config
from s2s_cli.data.batching import Shard, make_batches
from s2s_cli.data.dataset import Dataset
from s2s_cli.data.loader import Batch, collate, prefetch
from s2s_cli.data.spm import load_processor
from s2s_cli.device import check_precision, resolve_device
from s2s_cli.errors import CheckpointError, ConfigError, S2SError
from s2s_cli.io import check_writable_dir
from s2s_cli.models.build import build_model
from s2s_cli.training.distributed import (
    all_reduce_tensor,
    any_rank,
    init_distributed,
    shutdown,
)
from s2s_cli.training.report import Reporter
from s2s_cli.training.schedule import LearningRate, build_optimizer, teacher_forcing_ratio
from s2s_cli.training.step import LossModule, Updater
from s2s_cli.training.validate import HIGHER_IS_BETTER, Validator
from s2s_cli.version import __version__

log = logging.getLogger(__name__)

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
# Keys a resumed run may change: they decide when to stop, log or validate, never the arithmetic.
RESUMABLE = {
    "train.max_updates",
    "train.max_epochs",
    "train.max_minutes",
    "train.patience",
    "train.validate_every",
    "train.save_every",
    "train.keep_last",
    "train.log_every",
    "train.tensorboard",
    "train.threads",
    "train.valid_max_sentences",
    "train.valid_beam",
}


class TrainingInterrupted(S2SError):
    """A signal stopped training after a checkpoint was saved."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def train(
    cfg: ExperimentConfig,
    data_dir: str | Path,
    save_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    console: Any = None,
) -> Path:
    """Train (or continue training) a model; returns the path of the best checkpoint."""
    run = TrainingRun(cfg, Path(data_dir), Path(save_dir), device, resume, progress, console)
    try:
        return run.fit()
    finally:
        run.close()


class TrainingRun:
    def __init__(
        self,
        cfg: ExperimentConfig,
        data_dir: Path,
        save_dir: Path,
        device: str,
        resume: bool,
        progress: bool,
        console: Any,
    ) -> None:
        self.device = resolve_device(device)
        self.context = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        check_precision(self.device, cfg.train.precision, "train.precision")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.dataset = Dataset(data_dir)
        self.cfg = cfg
        self.save_dir = save_dir
        self.train_split = self.dataset.split("train")
        if self.context.is_main:
            check_writable_dir(save_dir, "save directory")
        saved = self._existing_checkpoint(resume)
        self._build()
        self.reporter = Reporter(
            save_dir,
            self.context.is_main,
            cfg.train.log_every,
            self.total_updates,
            progress,
            cfg.train.tensorboard,
            console,
            device=self.device,
        )
        if saved is not None:
            self._restore(saved)
            self.reporter.resume_metrics(self.updates)
            log.info(
                "resuming %s at update %d (epoch %d)", save_dir / LAST, self.updates, self.epoch
            )
        if self.context.is_main:
            write_config(cfg, save_dir / "config.yaml")
        self.stop_signal: int | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def _existing_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        path = self.save_dir / LAST
        if not path.exists():
            if resume:
                raise CheckpointError(
                    f"{path}: nothing to resume (no checkpoint in {self.save_dir})"
                )
            return None
        saved = load_checkpoint(path)
        _check_same_run(checkpoint_config(saved, path), self.cfg, path)
        return saved

    def _build(self) -> None:
        cfg = self.cfg
        src_vocab, tgt_vocab = self.dataset.vocab_sizes
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, src_vocab, tgt_vocab).to(self.device)
        self.spm = {side: self.dataset.spm_bytes(side) for side in ("src", "tgt")}
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.shard = Shard(self.context.rank, self.context.world_size, cfg.train.update_freq)
        self.total_updates = self._total_updates()
        self.lr = LearningRate(cfg.train, self.total_updates)
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if cfg.train.precision == "fp16" else None
        )
        loss_module: torch.nn.Module = LossModule(self.model, cfg.train.label_smoothing)
        if self.context.enabled:
            loss_module = torch.nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.updater = Updater(
            loss_module,
            self.optimizer,
            self.scaler,
            self.device,
            cfg.train.precision,
            cfg.train.clip_norm,
            self.context,
        )
        self.validator = None
        if "valid" in self.dataset.splits and self.context.is_main:
            tgt_spm = load_processor(self.spm["tgt"], str(self.dataset.dir))
            self.validator = Validator(self.dataset, cfg, tgt_spm, self.device)
        self.epoch, self.position, self.updates, self.skipped = 1, 0, 0, 0
        self.train_seconds = 0.0
        self.best: dict[str, Any] = {
            "metric": cfg.train.validate_metric,
            "value": None,
            "update": 0,
        }
        self.bad_validations = 0
        self.last_validated = -1
        self.new_best = False
        # Seed per rank for dropout after identical initialisation (DDP also broadcasts rank 0).
        torch.manual_seed(cfg.train.seed * 1000 + self.context.rank)

    def _total_updates(self) -> int | None:
        t = self.cfg.train
        per_epoch = self.shard.updates_in(self._epoch_batches(1)) if t.max_epochs else None
        candidates = [n for n in (t.max_updates, per_epoch and per_epoch * t.max_epochs) if n]
        return min(candidates) if candidates else None

    def _restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr.load_state_dict(saved["schedule"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        progress = saved["progress"]
        self.epoch, self.position = progress["epoch"], progress["position"]
        self.updates, self.skipped = progress["updates"], progress["skipped"]
        self.train_seconds = progress["train_seconds"]
        self.bad_validations = progress["bad_validations"]
        self.last_validated = progress["last_validated"]
        self.best = dict(saved["best"])
        states = saved["rng"]["torch"]
        if len(states) == self.context.world_size:
            torch.set_rng_state(states[self.context.rank])
            cuda_states = saved["rng"].get("cuda") or []
            if self.device.type == "cuda" and len(cuda_states) == self.context.world_size:
                torch.cuda.set_rng_state(cuda_states[self.context.rank], self.device)
        else:
            log.warning(
                "resuming with %d processes instead of %d: dropout RNG streams restart",
                self.context.world_size,
                len(states),
            )

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> Path:
        self._install_signal_handlers()
        budget = self.cfg.train.max_minutes
        self.reporter.start(self.updates, 60 * budget - self.train_seconds if budget else None)
        started = time.perf_counter()
        try:
            while not self._finished():
                epoch_done = self._run_epoch(started)
                if epoch_done:
                    self.epoch, self.position = self.epoch + 1, 0
                    if self.cfg.train.validate_every is None:
                        self._validate(scheduled=True)
                    self._save(started)
                if self.stop_signal is not None:
                    break
            if self.last_validated != self.updates and self.stop_signal is None:
                self._validate(scheduled=False)  # the final model always gets a score
            self._save(started)
        finally:
            self._restore_signal_handlers()
        if self.stop_signal is not None:
            name = "SIGINT" if self.stop_signal == signal.SIGINT else "SIGTERM"
            raise TrainingInterrupted(
                f"{name}: stopped at update {self.updates}; checkpoint saved to "
                f"{self.save_dir / LAST} (run the same command again to resume)",
                130 if self.stop_signal == signal.SIGINT else 143,
            )
        log.info(
            "training stopped after %d updates: %s",
            self.updates,
            self._limit_reached(self.train_seconds) or "stopping rule met",
        )
        best = self.save_dir / BEST
        return best if best.exists() else self.save_dir / LAST

    def _run_epoch(self, started: float) -> bool:
        """Updates until the epoch ends (True) or a stop condition holds (False)."""
        batches = self._epoch_batches(self.epoch)
        total = self.shard.updates_in(batches)
        if total == 0:
            raise ConfigError(
                f"an epoch has fewer batches ({len(batches)}) than one update needs "
                f"({self.shard.batches_per_update}); lower train.max_tokens or train.update_freq"
            )
        for index, micro_batches in self._batches(batches, self.position, total):
            lr = self.lr.apply(self.optimizer, self.updates + 1)
            result = self.updater.update(micro_batches, self._teacher_forcing())
            self.updates += 1
            self.position = index + 1
            self.skipped += result.skipped
            if result.skipped:
                log.warning(
                    "update %d: non-finite gradients, step skipped (%d so far)",
                    self.updates,
                    self.skipped,
                )
            self.reporter.update(self.updates, self.epoch, result, lr)
            validate_every, save_every = self.cfg.train.validate_every, self.cfg.train.save_every
            if validate_every and self.updates % validate_every == 0:
                self._validate(scheduled=True)
                self._save(started)
            elif save_every and self.updates % save_every == 0:
                self._save(started)
            if self._stop_now(started):
                return False
        return True

    def _batches(
        self, batches: list[np.ndarray], start: int, total: int
    ) -> Iterator[tuple[int, list[Batch]]]:
        def produce() -> Iterator[tuple[int, list[Batch]]]:
            for index in range(start, total):
                micro = self.shard.micro_batches(batches, index)
                yield index, [collate(self.train_split, m) for m in micro]

        for index, micro in prefetch(produce(), depth=4):
            yield index, [b.to(self.device, non_blocking=True) for b in micro]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        split, t = self.train_split, self.cfg.train
        return make_batches(
            split.src_sizes + 1, split.tgt_sizes + 1, t.max_tokens, t.max_sentences, t.seed, epoch
        )

    def _teacher_forcing(self) -> float:
        return teacher_forcing_ratio(self.cfg.train, self.updates)

    # -- stopping --------------------------------------------------------------------------------

    def _finished(self) -> bool:
        return self._limit_reached(self.train_seconds) is not None

    def _stop_now(self, started: float) -> bool:
        elapsed = self.train_seconds + time.perf_counter() - started
        signalled = any_rank(self.stop_signal is not None, self.context, self.device)
        if signalled and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        limit = self._limit_reached(elapsed)
        max_minutes = self.cfg.train.max_minutes
        if max_minutes is not None and elapsed >= 60 * max_minutes:
            self.train_seconds = max(self.train_seconds, 60 * max_minutes)
        return signalled or limit is not None

    def _limit_reached(self, elapsed: float) -> str | None:
        """Which stopping rule holds, in words, or None to keep training."""
        t = self.cfg.train
        if t.max_updates is not None and self.updates >= t.max_updates:
            return f"train.max_updates={t.max_updates} reached"
        if t.max_epochs is not None and self.epoch > t.max_epochs:
            return f"train.max_epochs={t.max_epochs} done"
        if t.patience is not None and self.bad_validations >= t.patience:
            best = self.best
            return (
                f"no better validation {best['metric']} in {t.patience} validations "
                f"(train.patience); best {best['value']:.2f} at update {best['update']}"
            )
        if t.max_minutes is not None and elapsed >= 60 * t.max_minutes:
            return f"train.max_minutes={t.max_minutes:g} reached"
        return None

    # -- validation and checkpoints -------------------------------------------------------------

    def _validate(self, scheduled: bool) -> None:
        """Score the model; ``scheduled`` validations also drive plateau and patience."""
        if "valid" not in self.dataset.splits:
            return
        metric = self.cfg.train.validate_metric
        metrics = self.validator(self.model) if self.validator is not None else None
        metrics = self._share_metrics(metrics)
        self.last_validated = self.updates
        value = metrics[metric]
        higher = HIGHER_IS_BETTER[metric]
        improved = self.best["value"] is None or (
            value > self.best["value"] if higher else value < self.best["value"]
        )
        if improved:
            self.best = {"metric": metric, "value": value, "update": self.updates}
        if scheduled:
            self.lr.observe(value, higher)
            self.bad_validations = 0 if improved else self.bad_validations + 1
        self.new_best = self.new_best or improved
        self.reporter.validation(self.updates, self.epoch, metrics, improved)

    def _share_metrics(self, metrics: dict[str, float] | None) -> dict[str, float]:
        """Rank 0 validates; every rank needs the numbers (plateau, patience)."""
        if not self.context.enabled:
            assert metrics is not None
            return metrics
        keys = ["loss", "nll", "ppl", "bleu", "chrf", "accuracy", "sentences"]
        values = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
        if metrics is not None:
            values += torch.tensor(
                [metrics[k] for k in keys], dtype=torch.float64, device=self.device
            )
        all_reduce_tensor(values, self.context)
        return dict(zip(keys, values.tolist(), strict=True))

    def _save(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        payload = self._payload(self.train_seconds + elapsed)
        if not self.context.is_main:
            return
        last = self.save_dir / LAST
        save_checkpoint(payload, last)
        if self.new_best:
            link_or_copy(last, self.save_dir / BEST)
            self.new_best = False
        save_every = self.cfg.train.save_every
        if save_every and self.updates % save_every == 0 and self.updates:
            link_or_copy(last, self.save_dir / f"checkpoint_u{self.updates}.pt")
            self._prune_periodic()

    def _prune_periodic(self) -> None:
        periodic = sorted(
            self.save_dir.glob("checkpoint_u*.pt"), key=lambda p: int(p.stem.split("_u")[1])
        )
        for path in periodic[: -self.cfg.train.keep_last]:
            remove_quietly(path)

    def _payload(self, train_seconds: float) -> dict[str, Any]:
        src_vocab, tgt_vocab = self.dataset.vocab_sizes
        return {
            "s2s_version": __version__,
            "config": to_dict(self.cfg),
            "vocab": {
                "src_size": src_vocab,
                "tgt_size": tgt_vocab,
                "joint": self.dataset.joint,
                "src_lang": self.dataset.src_lang,
                "tgt_lang": self.dataset.tgt_lang,
            },
            "spm": {side: spm_to_tensor(data) for side, data in self.spm.items()},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.lr.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self._rng_states(),
            "progress": {
                "epoch": self.epoch,
                "position": self.position,
                "updates": self.updates,
                "skipped": self.skipped,
                "train_seconds": train_seconds,
                "bad_validations": self.bad_validations,
                "last_validated": self.last_validated,
            },
            "best": dict(self.best),
            "data_dir": str(self.dataset.dir),
        }

    def _rng_states(self) -> dict[str, list[torch.Tensor]]:
        states = {"torch": [torch.get_rng_state()]}
        if self.device.type == "cuda":
            states["cuda"] = [torch.cuda.get_rng_state(self.device).cpu()]
        if self.context.enabled:
            for key, value in states.items():
                gathered: list[Any] = [None] * self.context.world_size
                dist.all_gather_object(gathered, value[0])
                states[key] = gathered
        return states

    # -- signals ---------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._previous_handlers = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once
            self.stop_signal = signum
            log.warning(
                "%s received: saving a checkpoint after this update", signal.Signals(signum).name
            )

        for signum in (signal.SIGINT, signal.SIGTERM):
            # signal.signal raises ValueError off the main thread (e.g. a library caller's thread)
            with contextlib.suppress(ValueError):
                self._previous_handlers[signum] = signal.signal(signum, request_stop)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    def close(self) -> None:
        if hasattr(self, "reporter"):
            self.reporter.close()
        shutdown(self.context)


def _check_same_run(saved: ExperimentConfig, current: ExperimentConfig, path: Path) -> None:
    """A resumed run may change only when it stops/logs/validates and how it decodes."""
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(current))
    changed = [
        k
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k not in RESUMABLE and not k.startswith("decode.")
    ]
    if changed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
        raise ConfigError(
            f"{path}: the run in this save dir used a different config ({details}); "
            "use a new --save-dir or the original settings"
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
