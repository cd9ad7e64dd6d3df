"""``s2s average``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import QuietOpt, VerboseOpt, setup_logging, user_errors
from s2s_cli.config import TrainConfig


def average(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(metavar="[CKPT]...", help="Checkpoints to average.", show_default=False),
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="FILE", help="The averaged checkpoint.")
    ] = Path("checkpoint_avg.pt"),
    save_dir: Annotated[
        Path | None,
        typer.Option(
            "--save-dir",
            metavar="DIR",
            help="Take the last N periodic checkpoints (checkpoint_u*.pt) from DIR.",
            show_default=False,
        ),
    ] = None,
    last: Annotated[
        int,
        typer.Option(
            "--last",
            metavar="N",
            help="How many, with --save-dir (a warning if fewer are there); train.keep_last "
            "keeps as many by default.",
        ),
    ] = TrainConfig().keep_last,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Average the parameters of several checkpoints into a new one; prints its path."""
    from s2s_cli.errors import ConfigError
    from s2s_cli.training.average import average_checkpoints, last_checkpoints

    with user_errors():
        setup_logging(verbose, quiet=quiet)
        paths = list(checkpoints or [])
        if save_dir is not None:
            paths += last_checkpoints(save_dir, last)
        if not paths:
            raise ConfigError("give checkpoints to average, or --save-dir DIR [--last N]")
        result = average_checkpoints(paths, output)
    print(result, flush=True)
