"""The training run: set-up, the epoch/update loop, validation, checkpoints and exact resume.

``train(cfg, data_dir, save_dir)`` returns the best checkpoint's path. A run that finds
``checkpoint_last.pt`` in its save directory continues it exactly: same data order (batches are
a pure function of seed and epoch, the position is saved), same RNG streams, same optimizer and
schedule state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from s2s_cli.checkpoint import (
    Best,
    Checkpoint,
    Progress,
    TrainingState,
    Vocabulary,
    load_checkpoint,
)
from s2s_cli.config import DataConfig, ExperimentConfig, build_section, to_dict, write_config
from s2s_cli.data.batching import Shard, make_batches
from s2s_cli.data.dataset import Dataset, ParallelSplit, made_with
from s2s_cli.data.loader import Batch, collate, prefetch
from s2s_cli.data.shards import TrainingShards
from s2s_cli.data.spm import load_processor
from s2s_cli.device import check_precision, resolve_device
from s2s_cli.errors import (
    CheckpointError,
    ConfigError,
    LostPeersError,
    OutOfMemory,
    S2SError,
    out_of_memory,
)
from s2s_cli.io import check_writable_dir, remove_stale_temporaries
from s2s_cli.locking import save_dir_lock
from s2s_cli.models.build import build_model
from s2s_cli.training.distributed import (
    all_reduce_tensor,
    any_rank,
    init_distributed,
    is_communication_failure,
    is_main_process,
    shutdown,
)
from s2s_cli.training.divergence import DivergenceWatch
from s2s_cli.training.report import Reporter
from s2s_cli.training.save_dir import SAVE_DIR_FILES, SaveDirectory
from s2s_cli.training.schedule import LearningRate, build_optimizer, teacher_forcing_ratio
from s2s_cli.training.step import LossModule, Updater
from s2s_cli.training.validate import HIGHER_IS_BETTER, Validator

log = logging.getLogger(__name__)

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
    "train.max_nonfinite_updates",
    "train.save_dir",
    "train.best_with_state",
    "train.dist_timeout_minutes",
}


FREE_SECTIONS = ("decode.", "data.")


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
    """Train (or continue training) a model; returns the path of the best checkpoint.

    The save directory is locked for the run (InUseError if another run holds it), and the
    temporaries of checkpoints a killed run was writing there are removed.
    """
    save_dir = Path(save_dir)
    with contextlib.ExitStack() as stack:
        if is_main_process():
            check_writable_dir(save_dir, "save directory")
            stack.enter_context(save_dir_lock(save_dir))
            remove_stale_temporaries(save_dir, SAVE_DIR_FILES, exclusive=True)
        run = TrainingRun(cfg, Path(data_dir), save_dir, device, resume, progress, console)
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
        self.context = init_distributed(self.device.type, cfg.train.dist_timeout_minutes)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        check_precision(self.device, cfg.train.precision, "train.precision")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.data_spec = str(data_dir)
        self.shards = TrainingShards(data_dir)
        self.dataset = self.shards.first  # validation, vocabularies, data settings
        self._batches_of: tuple[int, list[np.ndarray]] | None = None  # see _epoch_batches
        self.cfg = cfg = _describing_dataset(cfg, self.dataset)
        self.save_dir = save_dir
        self.files = SaveDirectory(
            save_dir, cfg.train.save_every, cfg.train.keep_last, cfg.train.best_with_state
        )
        self.divergence = DivergenceWatch(cfg.train.max_nonfinite_updates, self.files.last)
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
            self.reporter.resume_metrics(self.progress.updates)
            log.info(
                "resuming %s at update %d (epoch %d)",
                self.files.last,
                self.progress.updates,
                self.progress.epoch,
            )
        if self.context.is_main:
            write_config(cfg, save_dir / "config.yaml")
        self.stop_signal: int | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def _existing_checkpoint(self, resume: bool) -> Checkpoint | None:
        path = self.files.last
        if not path.exists():
            if resume:
                raise CheckpointError(
                    f"{path}: nothing to resume (no checkpoint in {self.save_dir})"
                )
            return None
        saved = load_checkpoint(path)
        _check_same_run(saved.config, self.cfg, path)
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
        self.progress = Progress()  # epoch, position, updates, ...: what a resume continues
        self.best = Best(cfg.train.validate_metric)
        self.new_best = False
        # Seed per rank for dropout after identical initialisation (DDP also broadcasts rank 0).
        torch.manual_seed(cfg.train.seed * 1000 + self.context.rank)

    def _total_updates(self) -> int | None:
        t = self.cfg.train
        by_epochs = None
        if t.max_epochs:
            # updates per epoch of each shard, counted at its first epoch (later epochs of the
            # same shard cut batches from other random tie-breaks: a few more or fewer)
            per_shard = [
                self.shard.updates_in(self._epoch_batches(epoch))
                for epoch in range(1, min(len(self.shards), t.max_epochs) + 1)
            ]
            by_epochs = sum(per_shard[self.shards.index(e)] for e in range(1, t.max_epochs + 1))
        candidates = [n for n in (t.max_updates, by_epochs) if n]
        return min(candidates) if candidates else None

    def _restore(self, saved: Checkpoint) -> None:
        if saved.training is None:
            raise CheckpointError(f"{saved.path}: holds no training state to resume from")
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.training.optimizer)
        self.lr.load_state_dict(saved.training.schedule)
        if self.scaler is not None and saved.training.scaler:
            self.scaler.load_state_dict(saved.training.scaler)
        self.progress = dataclasses.replace(saved.progress)
        if saved.best is not None:
            self.best = dataclasses.replace(saved.best)
        states = saved.training.rng["torch"]
        if len(states) == self.context.world_size:
            torch.set_rng_state(states[self.context.rank])
            cuda_states = saved.training.rng.get("cuda") or []
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
        if self.context.is_main:
            self._log_banner()
        budget = self.cfg.train.max_minutes
        self.reporter.start(
            self.progress.updates, 60 * budget - self.progress.train_seconds if budget else None
        )
        # The training clock continues from the checkpoint's time (wall time: validations and
        # checkpoints count), so a resumed run can extend train.max_minutes.
        self._clock_origin = time.perf_counter() - self.progress.train_seconds
        lost_peers: LostPeersError | None = None
        try:
            while not self._finished():
                epoch_done = self._run_epoch()
                if epoch_done:
                    if self.cfg.train.validate_every is None:
                        self._validate(scheduled=True)  # labelled with the epoch it ends
                    self.progress.epoch, self.progress.position = self.progress.epoch + 1, 0
                    self._save()
                if self.stop_signal is not None:
                    break
            if self.progress.last_validated != self.progress.updates and self.stop_signal is None:
                self._validate(scheduled=False)  # the final model always gets a score
            self._save()
        except Exception as err:
            if self.context.enabled and is_communication_failure(err):
                lost_peers = LostPeersError(self._lost_peers_message(err))
                raise lost_peers from None
            raise
        finally:
            self._restore_signal_handlers()
            if lost_peers is not None and threading.current_thread() is threading.main_thread():
                # torchrun now sends SIGTERM to end the job: let this process say why, then exit 1
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            raise TrainingInterrupted(
                f"{name}: stopped at update {self.progress.updates}; checkpoint saved to "
                f"{self.files.last} (run the same command again to resume)",
                128 + self.stop_signal,  # the shell's status for a process ended by it
            )
        result = self.files.result()
        reason = self._limit_reached(self.progress.train_seconds) or "stopping rule met"
        best = self.best
        if best.value is None:
            reason += "; no validation score (no valid split)"
        elif "; best " not in reason:  # (patience already names it)
            reason += f"; best {best.metric} {best.value:.2f} at update {best.update}"
        log.info(
            "done after %d updates: %s; %s checkpoint: %s",
            self.progress.updates,
            reason,
            "best" if result == self.files.best else "last",
            result,
        )
        return result

    def _lost_peers_message(self, err: BaseException) -> str:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason)  # gloo's "[.../pair.cc:537] " prefix
        reason = re.split(r"(?<=\.)\s", reason, maxsplit=1)[0].rstrip(".")  # its first sentence
        if len(reason) > 160:
            reason = reason[:157].rsplit(" ", 1)[0] + "..."
        return (
            f"rank {self.context.rank} of {self.context.world_size}: lost contact with the other "
            f"training processes at update {self.progress.updates} (a process or node died, the "
            f"network failed, or a peer was silent for train.dist_timeout_minutes="
            f"{self.cfg.train.dist_timeout_minutes:g}): {reason}. Checkpoints so far are in "
            f"{self.save_dir}; run the same command again on every node to resume"
        )

    def _log_banner(self) -> None:
        """What this run is, before the first log line (which may be minutes away)."""
        from s2s_cli.models.build import parameter_counts

        cfg, dataset = self.cfg, self.dataset
        split = self.shards.train_split(self.progress.epoch)
        src_vocab, tgt_vocab = dataset.vocab_sizes
        splits = ", ".join(
            f"{name} {len(dataset.split(name)):,}" for name in dataset.splits if name != "train"
        )
        log.info(
            "data %s: %s-%s, train %s pairs (%s target pieces)%s; vocabulary %s/%s",
            dataset.dir,
            dataset.src_lang,
            dataset.tgt_lang,
            f"{len(split):,}",
            f"{int(split.tgt_sizes.sum()):,}",
            f", {splits}" if splits else "",
            src_vocab,
            tgt_vocab,
        )
        if len(self.shards) > 1:
            log.info(
                "%d training shards, one per epoch in turn (epoch %d: %s); validation from %s",
                len(self.shards),
                self.progress.epoch,
                self.shards.datasets[self.shards.index(self.progress.epoch)].dir,
                dataset.dir,
            )
        counts = parameter_counts(self.model)
        total = counts.pop("total")
        log.info(
            "model: %s parameters (%s)",
            f"{total:,}",
            ", ".join(f"{name} {count:,}" for name, count in counts.items()),
        )
        per_epoch = self.shard.updates_in(self._epoch_batches(self.progress.epoch))
        log.info(
            "device %s, precision %s, %d threads, %s; %d updates per epoch "
            "(train.max_tokens %d, update_freq %d); config %s",
            self.device,
            cfg.train.precision,
            torch.get_num_threads(),
            "1 process" if self.context.world_size == 1 else f"{self.context.world_size} processes",
            per_epoch,
            cfg.train.max_tokens,
            cfg.train.update_freq,
            self.save_dir / "config.yaml",
        )

    def _run_epoch(self) -> bool:
        """Updates until the epoch ends (True) or a stop condition holds (False)."""
        epoch = self.progress.epoch
        batches = self._epoch_batches(epoch)
        total = self.shard.updates_in(batches)
        if total == 0:
            raise ConfigError(
                f"an epoch has fewer batches ({len(batches)}) than one update needs "
                f"({self.shard.batches_per_update}); lower train.max_tokens or train.update_freq"
            )
        # closing: an error mid-epoch stops the prefetch thread now, not at interpreter exit
        # (where a thread killed inside torch aborts the process instead of exiting cleanly)
        if len(self.shards) > 1 and self.progress.position == 0:
            shard = self.shards.index(epoch)
            log.info(
                "epoch %d: shard %d of %d (%s)",
                epoch,
                shard + 1,
                len(self.shards),
                self.shards.datasets[shard].dir,
            )
        split = self.shards.train_split(epoch)
        stream = contextlib.closing(self._batches(split, batches, self.progress.position, total))
        with stream as batch_stream:
            return self._run_updates(batch_stream)

    def _run_updates(self, batch_stream: Iterator[tuple[int, list[Batch]]]) -> bool:
        """Apply updates from the stream; True when the epoch ended, False when told to stop."""
        for index, micro_batches in batch_stream:
            lr = self.lr.apply(self.optimizer, self.progress.updates + 1)
            try:
                result = self.updater.update(micro_batches, self._teacher_forcing())
            except (RuntimeError, MemoryError) as err:
                shortfall = out_of_memory(err)
                if shortfall is None:
                    raise
                raise OutOfMemory(self._out_of_memory_message(shortfall, micro_batches)) from None
            self.progress.updates += 1
            self.progress.position = index + 1
            self.progress.skipped += result.skipped
            if result.skipped:
                log.warning(
                    "update %d: non-finite gradients, step skipped (%d so far)",
                    self.progress.updates,
                    self.progress.skipped,
                )
            self.divergence.observe(self.progress.updates, result)
            self.reporter.update(self.progress.updates, self.progress.epoch, result, lr)
            validate_every, save_every = self.cfg.train.validate_every, self.cfg.train.save_every
            if validate_every and self.progress.updates % validate_every == 0:
                self._validate(scheduled=True)
                self._save()
            elif save_every and self.progress.updates % save_every == 0:
                self._save()
            if self._stop_now():
                return False
        return True

    def _out_of_memory_message(self, shortfall: str, micro_batches: list[Batch]) -> str:
        """What ran out, on which batch, what to lower, and that nothing saved was touched."""
        t = self.cfg.train
        sentences = sum(b.src.size(0) for b in micro_batches)
        tokens = sum(b.target_tokens for b in micro_batches)
        longest = (
            max(b.src.size(1) for b in micro_batches),
            max(b.tgt_in.size(1) for b in micro_batches),
        )
        saved = (
            f"{self.files.last} is left as it was; the same command resumes from it"
            if self.files.last.exists()
            else "nothing was saved yet"
        )
        return (
            f"update {self.progress.updates + 1}: out of memory ({shortfall}) on a batch of "
            f"{sentences:,} sentences, {tokens:,} target tokens, longest source {longest[0]} and "
            f"target {longest[1]} pieces; try a smaller train.max_tokens (now {t.max_tokens:,}) "
            f"or data.max_length, or a smaller model; {saved}"
        )

    def _batches(
        self, split: ParallelSplit, batches: list[np.ndarray], start: int, total: int
    ) -> Iterator[tuple[int, list[Batch]]]:
        def produce() -> Iterator[tuple[int, list[Batch]]]:
            for index in range(start, total):
                micro = self.shard.micro_batches(batches, index)
                yield index, [collate(split, m) for m in micro]

        with contextlib.closing(prefetch(produce(), depth=4)) as prefetched:
            for index, micro in prefetched:
                yield index, [b.to(self.device, non_blocking=True) for b in micro]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Epoch ``epoch``'s batches, from its shard: a function of the seed and epoch alone.

        The last epoch's list is kept: the start of a run asks for it up to three times (the
        schedule's length, the banner, the epoch), each a sort of the whole shard.
        """
        if self._batches_of is None or self._batches_of[0] != epoch:
            split, t = self.shards.train_split(epoch), self.cfg.train
            batches = make_batches(
                split.src_sizes + 1,
                split.tgt_sizes + 1,
                t.max_tokens,
                t.max_sentences,
                t.seed,
                epoch,
            )
            self._batches_of = epoch, batches
        return self._batches_of[1]

    def _teacher_forcing(self) -> float:
        return teacher_forcing_ratio(self.cfg.train, self.progress.updates)

    # -- stopping --------------------------------------------------------------------------------

    def _train_seconds(self) -> float:
        return time.perf_counter() - self._clock_origin

    def _finished(self) -> bool:
        return self._limit_reached(self._train_seconds()) is not None

    def _stop_now(self) -> bool:
        signalled = any_rank(self.stop_signal is not None, self.context, self.device)
        if signalled and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        return signalled or self._limit_reached(self._train_seconds()) is not None

    def _limit_reached(self, elapsed: float) -> str | None:
        """Which stopping rule holds, in words, or None to keep training."""
        t = self.cfg.train
        if t.max_updates is not None and self.progress.updates >= t.max_updates:
            return f"train.max_updates={t.max_updates} reached"
        if t.max_epochs is not None and self.progress.epoch > t.max_epochs:
            return f"train.max_epochs={t.max_epochs} done"
        if t.patience is not None and self.progress.bad_validations >= t.patience:
            best = self.best
            return (
                f"no better validation {best.metric} in {t.patience} validations "
                f"(train.patience); best {best.value:.2f} at update {best.update}"
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
        self.progress.last_validated = self.progress.updates
        value = metrics[metric]
        higher = HIGHER_IS_BETTER[metric]
        # a model whose score or validation loss is not finite is never the best, whatever came
        # before: a BLEU of 0 is finite even when an overflowing step left the weights inf / NaN
        best = self.best.value
        improved = (
            math.isfinite(value)
            and math.isfinite(metrics["loss"])
            and (best is None or (value > best if higher else value < best))
        )
        if improved:
            self.best = Best(metric, value, self.progress.updates)
        if scheduled:
            self.lr.observe(value, higher)
            self.progress.bad_validations = 0 if improved else self.progress.bad_validations + 1
        self.new_best = self.new_best or improved
        self.reporter.validation(self.progress.updates, self.progress.epoch, metrics, improved)

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

    def _save(self) -> None:
        self.progress.train_seconds = self._train_seconds()
        checkpoint = self._checkpoint()
        if self.context.is_main:
            self.files.write(checkpoint, self.new_best)
            self.new_best = False

    def _checkpoint(self) -> Checkpoint:
        src_vocab, tgt_vocab = self.dataset.vocab_sizes
        return Checkpoint(
            config=self.cfg,
            vocab=Vocabulary(
                src_vocab,
                tgt_vocab,
                self.dataset.joint,
                self.dataset.src_lang,
                self.dataset.tgt_lang,
            ),
            spm=dict(self.spm),
            model=self.model.state_dict(),
            progress=dataclasses.replace(self.progress),
            best=dataclasses.replace(self.best),
            training=TrainingState(
                optimizer=self.optimizer.state_dict(),
                schedule=self.lr.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                rng=self._rng_states(),
            ),
            data_dir=self.data_spec,
        )

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

        for signum in _stop_signals():
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


def _stop_signals() -> list[int]:
    """The signals that save a checkpoint and stop: Ctrl-C, SIGTERM (a scheduler, torchrun), and
    SIGHUP (the terminal went away) unless the run was started to outlive it (``nohup`` ignores
    it, and so do we)."""
    signals = [signal.SIGINT, signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)  # (not on Windows)
    if hangup is not None and signal.getsignal(hangup) == signal.SIG_DFL:
        signals.append(hangup)
    return signals


def _describing_dataset(cfg: ExperimentConfig, dataset: Dataset) -> ExperimentConfig:
    """``cfg`` with the data section the dataset was made with, so the saved config says what
    really trained, whichever way ``cfg`` was built (the CLI does the same from the manifest)."""
    data = build_section(
        DataConfig, {**dataclasses.asdict(cfg.data), **made_with(dataset.manifest)}, "data."
    )
    return dataclasses.replace(cfg, data=data)


def _check_same_run(saved: ExperimentConfig, current: ExperimentConfig, path: Path) -> None:
    """A resumed run may change only when it stops/logs/validates and how it decodes (and the
    data section, which describes how the dataset was made: the dataset itself is what trains)."""
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(current))
    changed = [
        k
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k not in RESUMABLE and not k.startswith(FREE_SECTIONS)
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
