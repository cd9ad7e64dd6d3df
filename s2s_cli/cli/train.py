"""``s2s train``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from s2s_cli.cli._common import (
    DeviceOpt,
    QuietOpt,
    VerboseOpt,
    check_verbosity,
    setup_logging,
    stderr,
    user_errors,
)
from s2s_cli.errors import ConfigError

# what to make smaller when memory runs out
SMALLER = (
    "a smaller train.max_tokens, or a smaller model (model.hidden_size, model.embed_dim, "
    "model.encoder_layers, model.decoder_layers)"
)


def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[CONFIG.yaml] KEY=VALUE",
            help="Optional YAML config, then overrides such as train.lr=0.001 model.preset=luong.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Dataset directory from `s2s preprocess`, a sharded one (--shard-size), or "
            "dataset directories DIR1:DIR2:DIR3 trained on one per epoch in turn. Default: the "
            "config's data.path, else one path read on stdin.",
            show_default=False,
        ),
    ] = None,
    save_dir: Annotated[
        Path | None,
        typer.Option(
            "--save-dir",
            metavar="DIR",
            help="Where checkpoints, config.yaml, train.log and metrics.jsonl go. Default: the "
            "config's train.save_dir, else checkpoints.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --save-dir (an error if there is none). "
            "Re-running the same command there resumes too.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the resolved config and parameter counts, then exit."
        ),
    ] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train an RNN encoder-decoder; prints the best checkpoint's path on stdout.

    Multi-GPU / multi-node: [bold]torchrun --nproc-per-node N -m s2s_cli train ...[/]
    (see docs/distributed.md).
    """
    from s2s_cli.config import load_config

    with user_errors(SMALLER):
        check_verbosity(quiet, verbose)  # before anything is created in the save directory
        config_path, overrides = _split_args(args or [])
        named = load_config(config_path, overrides)  # may name data.path and train.save_dir
        data_dir = _data_dir(data, named.data.path, required=not dry_run)
        base = _dataset_defaults(data_dir) if data_dir is not None else None
        cfg = load_config(config_path, overrides, flags=base)
        if dry_run:
            _dry_run(cfg, data_dir)
            return
        assert data_dir is not None
        save_dir = save_dir or Path(cfg.train.save_dir or "checkpoints")
        cfg.train.save_dir = str(save_dir)
        best = _run(cfg, data_dir, save_dir, device, resume, quiet, verbose)
    if best is not None:
        print(best, flush=True)


def _split_args(args: list[str]) -> tuple[Path | None, list[str]]:
    """The first argument is a config file unless it looks like KEY=VALUE."""
    if args and "=" not in args[0]:
        path = Path(args[0])
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (arguments after it must be KEY=VALUE)")
        return path, args[1:]
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"'{arg}': expected KEY=VALUE (a config file must come first)")
    return None, args


def _data_dir(flag: Path | None, configured: str | None, required: bool) -> Path | None:
    """--data, else the config's data.path, else a path piped in (stdin is read only then, so
    a run whose config names its data never waits on a stdin that stays open)."""
    if flag is not None:
        return flag
    if configured:
        return Path(configured)
    return _data_dir_from_stdin(required)


def _data_dir_from_stdin(required: bool) -> Path | None:
    if sys.stdin is None or sys.stdin.isatty():
        if required:
            raise ConfigError(
                "no dataset: give --data DIR, data.path in the config, or pipe one in "
                "(s2s preprocess ... | s2s train)"
            )
        return None
    line = _path_line(sys.stdin)
    if not line:
        if required:
            raise ConfigError("no dataset: stdin was empty; give --data DIR")
        return None
    return Path(line)


def _path_line(stdin: TextIO) -> str:
    """The first line of ``stdin`` as a path: UTF-8 (what ``s2s preprocess`` prints, whatever the
    locale), else the file system's own encoding (a path echoed under a Latin-1 locale)."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:
        return stdin.readline().strip()
    raw = buffer.readline().strip()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(raw)


def _dataset_defaults(data_dir: Path) -> dict:
    """The dataset's own data settings, so the saved config describes the data really used."""
    from s2s_cli.data.dataset import made_with, read_manifest
    from s2s_cli.data.shards import dataset_dirs

    manifest = read_manifest(dataset_dirs(data_dir)[0])  # a sharded run: its first shard's
    data = made_with(manifest)
    data["path"] = str(data_dir)  # so the saved config.yaml alone re-runs (and resumes) the run
    return {"data": data}


def _dry_run(cfg, data_dir: Path | None) -> None:
    from s2s_cli.config import dump_yaml
    from s2s_cli.models.build import build_model, parameter_counts

    if data_dir is not None:
        from s2s_cli.data.dataset import Dataset
        from s2s_cli.data.shards import dataset_dirs

        src_vocab, tgt_vocab = Dataset(dataset_dirs(data_dir)[0]).vocab_sizes
    else:
        src_vocab = tgt_vocab = cfg.data.vocab_size
    model = build_model(cfg.model, src_vocab, tgt_vocab)
    print(dump_yaml(cfg), end="")
    counts = parameter_counts(model)
    print(f"# parameters: {counts['total']:,} (vocabulary {src_vocab}/{tgt_vocab})")
    for name, count in counts.items():
        if name != "total":
            print(f"#   {name}: {count:,}")
    fast = "fused (one RNN call over the target)" if model.decoder.fused else "step by step"
    print(f"# decoder training path: {fast}")


def _run(
    cfg, data_dir: Path, save_dir: Path, device: str, resume: bool, quiet: bool, verbose: bool
) -> Path | None:
    import contextlib
    import logging

    from s2s_cli.io import check_writable_dir
    from s2s_cli.locking import save_dir_lock
    from s2s_cli.training.distributed import is_main_process
    from s2s_cli.training.trainer import train as run_training

    main_rank = is_main_process()
    existed = save_dir.exists()
    log_existed = (save_dir / "train.log").exists()
    with contextlib.ExitStack() as lock:
        if main_rank:
            check_writable_dir(save_dir, "save directory")
            # Before train.log opens: a refused second run must not touch the first one's files.
            lock.enter_context(save_dir_lock(save_dir))
            setup_logging(verbose, log_file=save_dir / "train.log", quiet=quiet)
        else:
            setup_logging()
            logging.getLogger("s2s_cli").setLevel(logging.WARNING)
        try:
            best = run_training(
                cfg,
                data_dir,
                save_dir,
                device=device,
                resume=resume,
                progress=main_rank and stderr.is_terminal and not quiet,
                console=stderr,
            )
        except BaseException:
            if main_rank:
                _remove_start_debris(save_dir, existed, log_existed, release=lock.close)
            raise
    return best if main_rank else None


def _remove_start_debris(save_dir: Path, existed: bool, log_existed: bool, release) -> None:
    """A run refused at start (nothing logged) leaves nothing behind: the train.log it opened
    goes if still empty, then its lock, and the save directory too if this run made it."""
    import logging

    log_file = save_dir / "train.log"
    root = logging.getLogger("s2s_cli")
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == log_file:
            handler.close()
            root.removeHandler(handler)
    if not log_existed and log_file.exists() and log_file.stat().st_size == 0:
        log_file.unlink()
    release()
    if not existed and save_dir.is_dir() and not any(save_dir.iterdir()):
        save_dir.rmdir()
