"""The ``s2s`` command: a thin Typer layer over the Python API (see each subcommand module)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from s2s_cli.cli import average as average_cmd
from s2s_cli.cli import export as export_cmd
from s2s_cli.cli import info as info_cmd
from s2s_cli.cli import preprocess as preprocess_cmd
from s2s_cli.cli import score as score_cmd
from s2s_cli.cli import shortlist as shortlist_cmd
from s2s_cli.cli import train as train_cmd
from s2s_cli.cli import translate as translate_cmd
from s2s_cli.cli._common import (
    error,
    exit_quietly_on_ctrl_c,
    exit_without_teardown,
    make_app,
    tidy_help,
)
from s2s_cli.version import __version__

app = make_app(
    "s2s: RNN sequence-to-sequence toolkit. Preprocess parallel text, train LSTM/GRU "
    "encoder-decoders, translate and score, composing in shell pipelines."
)


def _version(value: bool) -> None:
    if value:
        print(f"s2s {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """s2s: RNN sequence-to-sequence toolkit."""
    if ctx.invoked_subcommand is None:  # bare `s2s`: the help, and success (not a usage error)
        print(ctx.get_help())
        raise typer.Exit(0)


app.command("preprocess")(preprocess_cmd.preprocess)
app.command("train")(train_cmd.train)
app.command("translate")(translate_cmd.translate)
app.command("score")(score_cmd.score)
app.command("average")(average_cmd.average)
app.command("info")(info_cmd.info)
app.command("shortlist")(shortlist_cmd.shortlist)
app.command("export")(export_cmd.export)


def stdout_in_utf8() -> None:
    """Write stdout in UTF-8 whatever the locale says, as input is read and ``-o`` files are
    written: under an ASCII or Latin-1 locale a translation with "ř" would otherwise end the
    command with a UnicodeEncodeError. (stderr keeps Python's backslash escapes: it never
    fails.)"""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")


def command():  # -> click.Group
    """The click command behind ``s2s`` (what ``main`` runs and the docs describe)."""
    group = typer.main.get_command(app)
    tidy_help(group)
    return group


def main() -> None:
    # (oneDNN's kernel cache size is set where the package is imported: s2s_cli/__init__.py)
    stdout_in_utf8()
    try:
        command()(prog_name="s2s")  # click ends with SystemExit, success included
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:  # outside a command's own handling (e.g. while torch loads)
        exit_quietly_on_ctrl_c()
        error("interrupted")
        code = 130
    finally:
        # Leaving: a Ctrl-C in an exit hook or a thread join ends it quietly (status 130).
        exit_quietly_on_ctrl_c()
    exit_without_teardown(code)  # returns where skipping teardown could lose something
    sys.exit(code)
