"""``s2s info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import QuietOpt, VerboseOpt, setup_logging, user_errors


def info(
    path: Annotated[Path, typer.Argument(help="A dataset directory or a checkpoint file.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Describe a dataset directory (counts, length percentiles, vocabulary, unknown rate) or a
    checkpoint (architecture, parameter counts per module, training progress)."""
    with user_errors():
        setup_logging(verbose, quiet=quiet)  # e.g. the warning for a checkpoint without digest
        if path.is_dir():
            from s2s_cli.data.info import dataset_info

            report = dataset_info(path)
            render = _render_dataset
        else:
            from s2s_cli.checkpoint_info import checkpoint_info

            report = checkpoint_info(path)
            render = _render_checkpoint
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report)


def _render_dataset(report: dict) -> None:
    from rich.table import Table

    vocab = report["vocab_size"]
    # the heading as its own line, not the table's title: rich wraps a title to the table's
    # width, which split long paths (and words) across lines
    print(
        f"{report['path']}: {report['languages']}, vocabulary "
        f"{vocab['src']}/{vocab['tgt']} ({'joint' if report['joint'] else 'separate'})"
    )
    table = Table()
    for column in ("split", "side", "sentences", "tokens", "p50", "p90", "p99", "max", "unk %"):
        table.add_column(column, justify="left" if column in ("split", "side") else "right")
    for name, split in report["splits"].items():
        for side in ("src", "tgt"):
            s = split[side]
            length = s["length"]
            table.add_row(
                name,
                side,
                str(split["sentences"]),
                str(s["tokens"]),
                *(f"{length.get(k, 0):g}" for k in ("p50", "p90", "p99", "max")),
                f"{100 * s['unk_rate']:.3f}",
            )
    print_to_stdout(table)


def _render_checkpoint(report: dict) -> None:
    from rich.table import Table

    print(
        f"{report['path']} (s2s {report['s2s_version']}, format {report['format_version']}, "
        f"{report['integrity']}, {report['weights']} weights)"
    )
    table = Table()
    table.add_column("module")
    table.add_column("parameters", justify="right")
    for name, count in report["parameters"].items():
        table.add_row(name, f"{count:,}")
    print_to_stdout(table)
    for key in ("model", "progress", "best"):
        if report.get(key):
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in report[key].items()))


def print_to_stdout(renderable: object) -> None:
    from rich.console import Console

    Console(highlight=False, markup=False, emoji=False).print(renderable)
