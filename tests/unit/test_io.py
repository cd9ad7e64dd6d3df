"""Atomic writes under OS failures, stale temporaries, and the exclusive locks (in-process parts;
the subprocess fault injection is in tests/cli/test_faults.py)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from s2s_cli.errors import InUseError, StorageError
from s2s_cli.io import HOST, atomic_path, atomic_write_text, remove_stale_temporaries
from s2s_cli.locking import destination_lock, exclusive, save_dir_lock


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EIO])
@pytest.mark.parametrize("stage", ["write", "rename"])
def test_an_os_error_while_writing_is_one_line_naming_the_file_and_keeps_the_old_one(
    tmp_path, monkeypatch, code, stage
):
    target = tmp_path / "out.txt"
    target.write_text("the good old content\n")
    failure = OSError(code, os.strerror(code))
    if stage == "rename":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(failure))

    def write_new_content() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            if stage == "write":
                raise failure

    with pytest.raises(StorageError) as info:
        write_new_content()
    message = str(info.value)
    assert message == f"{target}: cannot write ({os.strerror(code)} [{errno.errorcode[code]}])"
    assert target.read_text() == "the good old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left


def test_an_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=r"file/sub/out.txt: cannot write \(.*\[E"):
        atomic_write_text(blocker / "sub" / "out.txt", "y")


def test_another_files_error_inside_the_block_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out.txt"):
        open(tmp_path / "missing-input.txt")  # noqa: SIM115
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".out.txt.{dead}@{HOST}.abc_12.tmp": "stale",  # its process is gone
        f".out.txt.{alive}@{HOST}.def345.tmp": "live",  # still writing
        f".out.txt.{dead}@elsewhere.ghi678.tmp": "live",  # another host: cannot tell
        ".out.txt.jkl901.tmp": "legacy",  # no PID: only a lock holder may remove it
        f".other.txt.{dead}@{HOST}.mno234.tmp": "other",  # another target
        "out.txt": "output",
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, "out\\.txt")
    assert sorted(p.name for p in removed) == [n for n, kind in names.items() if kind == "stale"]
    removed = remove_stale_temporaries(tmp_path, "out\\.txt", exclusive=True)
    assert sorted(p.name for p in removed) == sorted(
        n for n, kind in names.items() if kind in ("live", "legacy")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, kind in names.items() if kind in ("other", "output")
    )


def test_an_atomic_write_names_its_temporary_with_pid_and_host(tmp_path):
    with atomic_path(tmp_path / "out.txt") as tmp:
        assert tmp.name.startswith(f".out.txt.{os.getpid()}@{HOST}.")
        assert remove_stale_temporaries(tmp_path, "out\\.txt", exclusive=True) == []  # ours


HOLD = """
import sys, time
from pathlib import Path
from s2s_cli.locking import save_dir_lock
with save_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_held_by_another_process_refuses_naming_its_pid_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InUseError) as info, save_dir_lock(tmp_path):
            pass
        assert str(info.value) == (
            f"{tmp_path}: in use by another s2s train (PID {holder.pid}); "
            "wait for it to finish or choose another --save-dir"
        )
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays
        holder.wait()
    assert (tmp_path / ".s2s.lock").exists()
    with save_dir_lock(tmp_path):  # ...but the lock died with its process
        pass
    assert list(tmp_path.iterdir()) == []  # and a clean release removes the file


def test_locks_are_reentrant_in_a_process_and_independent_across_resources(tmp_path):
    (tmp_path / "a").mkdir()
    with save_dir_lock(tmp_path / "a"), save_dir_lock(tmp_path / "a"):
        with destination_lock(tmp_path / "a"):  # a different lock file: no conflict
            pass
        assert (tmp_path / "a" / ".s2s.lock").exists()
    assert not (tmp_path / "a" / ".s2s.lock").exists()


def test_a_lock_file_removed_while_waiting_is_not_trusted(tmp_path, monkeypatch):
    """The holder unlinks its file as it releases; a process that opened the old file must not
    believe it holds the lock once a new file has taken the name."""
    lock_file = tmp_path / "x.lock"
    import s2s_cli.locking as locking

    real_open = os.open
    swapped = []

    def open_then_swap(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not swapped:  # the first open gets a file that is then replaced under its name
            swapped.append(True)
            os.unlink(path)
            Path(path).write_text("")
        return fd

    monkeypatch.setattr(locking.os, "open", open_then_swap)
    with exclusive(lock_file, tmp_path, "test", "retry"):
        held = os.stat(lock_file)
        fd, _ = locking._held[Path(os.path.abspath(lock_file))]
        assert (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (held.st_ino, held.st_dev)
    assert swapped


def test_a_stalled_pipe_yields_a_marker_and_a_flowing_one_does_not():
    import threading
    import time

    from s2s_cli.decoding.streaming import _buffers
    from s2s_cli.io import iter_lines_or_stalls

    read_end, write_end = os.pipe()

    os.write(write_end, b"a\nb\nc")  # "c" is not a complete line yet

    def producer() -> None:
        time.sleep(0.5)
        os.write(write_end, "\nd\xe9\n".encode())
        os.close(write_end)

    threading.Thread(target=producer).start()
    with os.fdopen(read_end, "rb") as stream:
        items = list(iter_lines_or_stalls(stream, "<pipe>", stall_seconds=0.1))
    assert items == ["a", "b", None, "c", "d\u00e9"]
    assert list(_buffers(iter(items), 1000)) == [["a", "b"], ["c", "d\u00e9"]]
    assert list(_buffers(iter(["a", "b", "c", None, None, "d"]), 2)) == [
        ["a", "b"],
        ["c"],
        ["d"],
    ]


def test_a_log_file_that_cannot_be_written_is_one_warning_and_logging_goes_on(tmp_path, capsys):
    import logging

    from s2s_cli.cli._common import setup_logging

    setup_logging(log_file=tmp_path / "train.log")
    log = logging.getLogger("s2s_cli.test")

    class FullDisk:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            pass

    root = logging.getLogger("s2s_cli")
    (file_handler,) = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    file_handler.stream = FullDisk()
    log.info("first")
    log.info("second")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "Traceback" not in err
    assert (
        f"warning: {tmp_path / 'train.log'}: cannot write (No space left on device [ENOSPC]); "
        in err
    )
    assert "first" in err and "second" in err  # stderr logging goes on
    assert not [h for h in root.handlers if isinstance(h, logging.FileHandler)]


@pytest.mark.parametrize(
    "message", ["data/[/x]/train.en:3: bad line", "expected A:B:C, got [bold]x[/bold] :smile:"]
)
def test_an_error_on_a_terminal_prints_user_text_as_it_is(monkeypatch, message):
    """On a terminal the error line is red through rich; a path or line quoted in it must come
    out literally, neither read as markup (``[/x]`` would raise) nor as emoji codes (``:b:``)."""
    import io

    from s2s_cli.cli import _common

    screen = io.StringIO()
    monkeypatch.setattr(_common.stderr, "file", screen)
    monkeypatch.setattr(_common.stderr, "_force_terminal", True)
    assert _common.stderr.is_terminal
    _common.error(message)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())  # colours, where the terminal has them
    assert shown == f"error: {message}\n"


def test_memory_running_out_is_one_line_naming_what_to_make_smaller(capsys):
    """The CLI's backstop for an allocator's refusal anywhere in a command (translate's hint
    here); any other RuntimeError is a bug and keeps its traceback."""
    import typer

    from s2s_cli.cli import _common
    from s2s_cli.cli.translate import SMALLER

    refusal = (
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes. "
        "Error code 12 (Cannot allocate memory)"
    )
    with pytest.raises(typer.Exit) as done, _common.user_errors(SMALLER):
        raise RuntimeError(refusal)
    assert done.value.exit_code == 1
    assert capsys.readouterr().err == (
        "error: out of memory (could not allocate 3.0 GiB): try a smaller --batch-size or --beam\n"
    )
    with pytest.raises(RuntimeError, match="shapes"), _common.user_errors(SMALLER):
        raise RuntimeError("shapes")
