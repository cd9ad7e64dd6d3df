"""``s2s preprocess``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import (
    ConfigOpt,
    OverridesArg,
    QuietOpt,
    VerboseOpt,
    config_choices,
    config_help,
    setup_logging,
    stderr,
    user_errors,
)


def preprocess(
    src_lang: Annotated[
        str, typer.Option("--src-lang", metavar="LANG", help="Source language suffix (PREFIX.SRC).")
    ],
    tgt_lang: Annotated[
        str, typer.Option("--tgt-lang", metavar="LANG", help="Target language suffix (PREFIX.TGT).")
    ],
    train: Annotated[
        str,
        typer.Option(
            "--train", metavar="PREFIX", help="Training files PREFIX.SRC/PREFIX.TGT (.gz read too)."
        ),
    ],
    dest: Annotated[
        Path, typer.Option("--dest", metavar="DIR", help="Dataset directory to create.")
    ],
    overrides: OverridesArg = None,
    valid: Annotated[
        str | None, typer.Option("--valid", metavar="PREFIX", help="Validation files.")
    ] = None,
    test: Annotated[
        list[str] | None,
        typer.Option("--test", metavar="PREFIX", help="Test files (repeatable: test, test1, ...)."),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size",
            metavar="N",
            help=config_help("SentencePiece vocabulary size.", "data.vocab_size"),
            show_default=False,
        ),
    ] = None,
    spm_type: Annotated[
        str | None,
        typer.Option(
            "--spm-type",
            metavar=config_choices("data.spm_type"),
            help=config_help("SentencePiece model type.", "data.spm_type"),
            show_default=False,
        ),
    ] = None,
    joint: Annotated[
        bool | None,
        typer.Option(
            "--joint/--separate",
            help=config_help("One shared vocabulary, or one per side.", "data.joint"),
            show_default=False,
        ),
    ] = None,
    spm_model: Annotated[
        list[Path] | None,
        typer.Option(
            "--spm-model",
            metavar="FILE",
            help="Reuse SentencePiece model(s): one (joint) or source then target.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help=config_help("Encoding threads.", "data.workers"),
            show_default=False,
        ),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size",
            metavar="N",
            help=config_help(
                "Write the training pairs as shards of N pairs (a sharded dataset that "
                "s2s train reads one shard per epoch).",
                "data.shard_size",
            ),
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing destination.")
    ] = False,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Turn raw parallel text into a binarized, memory-mapped dataset directory.

    Trains (or reuses) SentencePiece model(s), filters training pairs by length and length ratio,
    and writes .bin/.idx token files plus manifest.json. Prints the dataset directory on stdout,
    so [bold]s2s preprocess ... | s2s train ...[/] works.
    """
    from s2s_cli.config import load_config
    from s2s_cli.data.preprocess import preprocess as run_preprocess

    flags = {
        k: v
        for k, v in {
            "vocab_size": vocab_size,
            "spm_type": spm_type,
            "joint": joint,
            "workers": workers,
            "shard_size": shard_size,
        }.items()
        if v is not None
    }
    with user_errors():
        setup_logging(verbose, quiet=quiet)
        cfg = load_config(config, overrides, flags={"data": flags})
        with _ProgressBar(enabled=not quiet) as progress:
            out = run_preprocess(
                src_lang=src_lang,
                tgt_lang=tgt_lang,
                train=train,
                valid=valid,
                tests=test or [],
                dest=dest,
                config=cfg,
                spm_models=spm_model or [],
                force=force,
                progress=progress.update,
            )
        if not quiet:
            _print_summary(out)
    print(out, flush=True)


class _ProgressBar:
    """A rich progress bar on stderr, one task per split."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def __enter__(self) -> _ProgressBar:
        if not self.enabled:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        )
        self._tasks: dict[str, int] = {}
        self._progress.__enter__()
        return self

    def update(self, split: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if split not in self._tasks:
            self._tasks[split] = self._progress.add_task(split, total=total)
        self._progress.update(self._tasks[split], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)


def _print_summary(data_dir: Path) -> None:
    from rich.table import Table

    from s2s_cli.data.dataset import read_manifest
    from s2s_cli.data.shards import sharded_manifest

    manifest = sharded_manifest(data_dir) or read_manifest(data_dir)
    shards = f", {len(manifest['shards'])} shards" if "shards" in manifest else ""
    table = Table(
        title=f"{data_dir} ({manifest['src_lang']}-{manifest['tgt_lang']}, "
        f"vocab {manifest['vocab_size']['src']}/{manifest['vocab_size']['tgt']}{shards})"
    )
    for column in ("split", "lines", "sentences", "src tokens", "tgt tokens", "dropped"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, split in manifest["splits"].items():
        dropped = split.get("filter", {}).get("dropped")
        dropped_text = ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "-"
        table.add_row(
            name,
            str(split["lines"]),
            str(split["sentences"]),
            str(split["tokens"]["src"]),
            str(split["tokens"]["tgt"]),
            dropped_text,
        )
    stderr.print(table)
