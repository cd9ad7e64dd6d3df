"""What every subcommand shares: the app factory, argument aliases and the error boundary."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from s2s_cli.errors import ConfigError, S2SError, out_of_memory
from s2s_cli.io import describe_os_error

# Messages, paths and table cells carry user text, so nothing printed is read as rich markup or
# emoji codes: a path with "[/x]" would raise, "data/:b:/x" would print an emoji.
stderr = Console(stderr=True, highlight=False, markup=False, emoji=False)

OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE", help="Config overrides, e.g. train.lr=0.001", show_default=False
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML config file (sections data/model/train/decode).",
        dir_okay=False,
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "-q", "--quiet", help="Only warnings and errors on stderr: no progress, no info lines."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help="Debug detail on stderr.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", show_default=True)
]


def config_help(text: str, key: str, *, from_checkpoint: bool = False) -> str:
    """``text`` and the default of config ``key`` (SECTION.NAME), read from the config classes so
    help and code cannot drift; the brackets are escaped so rich shows them."""
    from s2s_cli.config import SECTIONS

    section, name = key.split(".")
    shown = yaml_value(getattr(SECTIONS[section](), name))
    if from_checkpoint:
        return f"{text} \\[default: the checkpoint's {key}, normally {shown}]"
    return f"{text} \\[default: {shown} ({key})]"


def config_choices(key: str) -> str:
    """``bpe|unigram|char|word``: the values a Literal config field accepts, as a metavar."""
    import typing

    from s2s_cli.config import SECTIONS

    section, name = key.split(".")
    hint = typing.get_type_hints(SECTIONS[section])[name]
    return "|".join(str(choice) for choice in typing.get_args(hint))


def yaml_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tidy_help(command) -> None:  # a click Group or Command, as Typer builds it
    """Typer's help shows a type column (``<bool>``, ``<str>``, ``<list[str]>``) that says less
    than a metavar: flags show none, arguments their metavar, other options their name."""
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    make_help_option = command.get_help_option

    def help_option(ctx):  # click makes --help per context
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for param in command.params:
        if param.param_type_name == "argument":  # its name column already shows the metavar
            param.display_type_rich = lambda ctx: None
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = param.name.upper()


def make_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=False,  # bare `s2s` prints help with status 0 (see cli/__init__.py)
        pretty_exceptions_show_locals=False,
        rich_markup_mode="rich",
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def error(message: str) -> None:
    """One line on stderr, red on a terminal; nothing if stderr is gone (a closed terminal
    answers EIO), so the exit status still says what happened."""
    try:
        if stderr.is_terminal:
            stderr.print(Text.assemble(("error:", "bold red"), f" {message}"), soft_wrap=True)
        else:
            print(f"error: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


@contextlib.contextmanager
def user_errors(smaller: str = "smaller batches or a smaller model") -> Iterator[None]:
    """Turn user-caused errors into one line and an exit status (1 data/runtime/OS, 2 config,
    130 interrupted). ``smaller`` says what to make smaller when memory runs out."""
    try:
        yield
    except S2SError as err:
        if err.exit_code == 130:
            exit_quietly_on_ctrl_c()
        error(str(err))
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        exit_quietly_on_ctrl_c()
        error("interrupted")
        raise typer.Exit(130) from None
    except OSError as err:  # the backstop: known write paths raise StorageError themselves
        where = f"{err.filename}: " if err.filename else ""
        error(f"{where}{describe_os_error(err)}")
        raise typer.Exit(1) from None
    except (RuntimeError, MemoryError) as err:
        shortfall = out_of_memory(err)
        if shortfall is None:
            raise  # a bug: its traceback
        error(f"out of memory ({shortfall}): try {smaller}")
        raise typer.Exit(1) from None


def exit_quietly_on_ctrl_c() -> None:
    """From now on a Ctrl-C ends the process at once with status 130, instead of raising
    KeyboardInterrupt inside exit hooks and thread joins (a traceback)."""
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))


@contextlib.contextmanager
def imports_without_collection() -> Iterator[None]:
    """Run the imports in the block with Python's cyclic garbage collector paused, then move
    everything they made out of its reach (``gc.freeze``) and resume it.

    ``import torch`` makes several hundred thousand objects, and the collector, triggered by
    allocation counts, walked the whole growing heap three times while it ran: 0.1 s of full
    collections and 0.05 s of smaller ones, a tenth of a one-line ``s2s translate`` (2 Intel Xeon
    cores). What imports make (modules, classes, functions) lives as long as the process, so
    frozen it is never walked again; the collector works as usual on what the command then makes.
    """
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def exit_without_teardown(code: int | str | None) -> None:
    """End the process now with ``code`` (as ``sys.exit`` would), skipping the interpreter's
    teardown, where PyTorch is loaded and nothing is lost by it; otherwise return.

    With torch imported, tearing down its ~1,100 modules and native libraries takes 0.4-0.6 s on
    2 CPU cores: a third of a one-line ``s2s translate``. What teardown would still do is done
    here: the ``atexit`` callbacks (logging's flush and close among them) and flushing stdout and
    stderr. Not taken while a non-daemon thread runs (exit would wait for it), nor where stdout
    cannot be flushed (the usual exit reports that), nor under a profiler or tracer
    (``python -m cProfile -m s2s_cli ...`` writes its report after the command returns).
    """
    if "torch" not in sys.modules:
        return  # nothing slow to skip
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # what the interpreter runs first at exit (logging.shutdown included)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(status & 0xFF)


class LogFile(logging.FileHandler):
    """``train.log``: a failed write (a full disk) is one warning on stderr, not a traceback
    per record; logging goes on to stderr alone."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):  # a bad log call is a bug: logging's own report
            super().handleError(record)
            return
        reason = describe_os_error(err)
        logging.getLogger("s2s_cli").removeHandler(self)
        with contextlib.suppress(Exception):
            self.close()
        print(
            f"warning: {self.baseFilename}: cannot write ({reason}); logging to stderr only",
            file=sys.stderr,
            flush=True,
        )


def check_verbosity(quiet: bool, verbose: bool) -> None:
    if quiet and verbose:
        raise ConfigError("-q/--quiet and -v/--verbose: choose one")


def setup_logging(verbose: bool = False, log_file: Path | None = None, quiet: bool = False) -> None:
    """Log records go to stderr (rich on a terminal) and optionally to a file; never to stdout.

    ``quiet``: only warnings and errors on stderr; ``verbose``: debug detail too. The log file
    (train.log) always gets at least the info records.
    """
    check_verbosity(quiet, verbose)
    root = logging.getLogger("s2s_cli")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if stderr.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=stderr, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.WARNING if quiet else logging.NOTSET)
    root.addHandler(handler)
    if log_file is not None:
        file_handler = LogFile(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file_handler)
    root.propagate = False
