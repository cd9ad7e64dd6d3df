"""Fault injection through the command line: bit rot, two runs in one place, full or read-only
disks, killed runs and impatient Ctrl-Cs. Each case checks the exit status, one line naming the
file, no traceback, and that the good files from before are byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s2s_cli.checkpoint import load_checkpoint
from s2s_cli.io import HOST

from ..conftest import TINY_MODEL, write_reverse_corpus
from ..training.test_training import _flip, _tensor_records
from .test_cli import one_line_error, s2s

S2S = [sys.executable, "-m", "s2s_cli"]


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def trained_run(trained_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run's save directory (checkpoints, config, logs)."""
    run = tmp_path / "run"
    shutil.copytree(trained_checkpoint.parent, run)
    return run


def resume_args(tiny_dataset: Path, run: Path) -> list[str]:
    """The trained run's own command, two more updates (it trained 400)."""
    return [
        "train",
        "--data",
        str(tiny_dataset),
        "--save-dir",
        str(run),
        *TINY_MODEL,
        "train.max_updates=402",
        "train.validate_every=400",
    ]


# -- bit rot -----------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_refused_by_every_command(tiny_dataset, trained_run, tmp_path):
    last = trained_run / "checkpoint_last.pt"
    offset, size = max(_tensor_records(last), key=lambda record: record[1])
    _flip(last, offset + size // 2)
    before = digests(trained_run)
    commands = {
        "translate": (["translate", "-c", str(last)], "one two\n"),
        "info": (["info", str(last)], None),
        "average": (["average", str(last), "-o", str(tmp_path / "avg.pt")], None),
        "resume": (resume_args(tiny_dataset, trained_run), None),
    }
    for name, (args, stdin) in commands.items():
        result = s2s(*args, stdin=stdin)
        assert result.returncode == 1, name
        assert one_line_error(result) == (
            f"error: {last}: damaged: its contents do not match the SHA-256 digest saved with "
            "them (bit rot or a partial copy); use another checkpoint or copy it again"
        ), name
        assert result.stdout == b"", name
    assert digests(trained_run) == before
    assert not (tmp_path / "avg.pt").exists()


# -- two runs in one place ---------------------------------------------------------------------


def test_a_second_training_in_one_save_dir_is_refused_and_a_killed_run_leaves_no_lock(
    tiny_dataset, tmp_path
):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--save-dir", str(run), *TINY_MODEL]
    first = subprocess.Popen(
        [*S2S, *args, "train.max_updates=100000", "train.validate_every=5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (run / "checkpoint_last.pt").exists(), "the first checkpoint")
        second = s2s(*args, "train.max_updates=100000", "train.validate_every=5")
        assert second.returncode == 1
        assert one_line_error(second) == (
            f"error: {run}: in use by another s2s train (PID {first.pid}); "
            "wait for it to finish or choose another --save-dir"
        )
    finally:
        first.kill()  # SIGKILL: nothing of the first run's clean-up runs
        first.wait()
    saved = torch.load(run / "checkpoint_last.pt", weights_only=True)["progress"]["updates"]
    # What a kill during a save leaves: a temporary named after a process that is gone.
    orphan = run / f".checkpoint_last.pt.{first.pid}@{HOST}.abcdef.tmp"
    orphan.write_bytes(b"half a checkpoint")
    third = s2s(*args, "train.validate_every=5", f"train.max_updates={saved + 2}")
    assert third.returncode == 0, third.stderr.decode()[-2000:]
    assert b"resuming" in third.stderr
    assert not orphan.exists() and not (run / ".s2s.lock").exists()


def test_a_second_preprocess_into_one_dest_is_refused_and_a_killed_ones_leftovers_go(tmp_path):
    raw = write_reverse_corpus(tmp_path / "raw", train=200)
    stalled = tmp_path / "stalled"
    stalled.mkdir()
    for side in ("src", "tgt"):  # a producer that never writes: the first run waits on it
        os.mkfifo(stalled / f"train.{side}")
    dest = tmp_path / "data"
    common = ["preprocess", "--src-lang", "src", "--tgt-lang", "tgt", "--dest", str(dest)]
    first = subprocess.Popen(
        [*S2S, *common, "--train", str(stalled / "train"), "data.vocab_size=48"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: list(tmp_path.glob(".data.tmp-*")), "the first run's build directory")
        second = s2s(*common, "--train", str(raw / "train"), "data.vocab_size=48")
        assert second.returncode == 1
        assert one_line_error(second) == (
            f"error: {dest}: in use by another s2s preprocess (PID {first.pid}); "
            "wait for it to finish or choose another --dest"
        )
    finally:
        first.kill()
        first.wait()
    assert list(tmp_path.glob(".data.*"))  # its lock file and half-built directory remain
    third = s2s(*common, "--train", str(raw / "train"), "data.vocab_size=48")
    assert third.returncode == 0, third.stderr.decode()[-2000:]
    assert third.stdout.decode().strip() == str(dest)
    assert list(tmp_path.glob(".data.*")) == []
    assert (dest / "manifest.json").is_file()


# -- memory ------------------------------------------------------------------------------------


def test_a_model_too_big_for_memory_is_one_line_and_leaves_nothing(tiny_dataset, tmp_path):
    """The allocator's refusal is one line saying what to make smaller, exit 1, no save directory.
    The address space is capped (64 GiB: the command maps under 1 GiB, more with many threads) so
    that the 149 GiB LSTM weight is refused the same way on every machine, whatever its memory
    overcommit policy."""

    def train_capped(save_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
        where = ["--data", str(tiny_dataset), "--save-dir", str(save_dir)]
        return subprocess.run(
            [*S2S, "train", *where, *TINY_MODEL, *overrides],
            capture_output=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (64 << 30, 64 << 30)),
            timeout=300,
            check=False,
        )

    result = train_capped(tmp_path / "fine", "train.max_updates=3")
    assert result.returncode == 0, result.stderr.decode()[-2000:]  # the cap itself is no problem
    run = tmp_path / "run"
    result = train_capped(run, "model.hidden_size=200000")
    assert result.returncode == 1
    assert one_line_error(result) == (
        "error: out of memory (could not allocate 149.0 GiB): try a smaller train.max_tokens, or "
        "a smaller model (model.hidden_size, model.embed_dim, model.encoder_layers, "
        "model.decoder_layers)"
    )
    assert not run.exists()


# -- full, limited and read-only storage -------------------------------------------------------


def file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killing signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def limited(limit: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*S2S, *args],
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        preexec_fn=file_size_limit(limit),
        timeout=300,
        check=False,
    )


EFBIG = f"({os.strerror(27)} [EFBIG])"


def test_a_write_that_exceeds_the_file_size_limit_is_one_line_and_loses_nothing(
    tiny_dataset, trained_run, tmp_path
):
    last = trained_run / "checkpoint_last.pt"
    out = tmp_path / "out.txt"
    out.write_text("an earlier translation\n")
    avg = tmp_path / "avg.pt"
    shutil.copyfile(last, avg)
    raw = write_reverse_corpus(tmp_path / "raw", train=200)
    # The resumed run trains its two updates and logs them; its checkpoint must stay as it was.
    before = {"checkpoint_last.pt": digests(trained_run)["checkpoint_last.pt"], **digests(tmp_path)}
    cases = [
        (resume_args(tiny_dataset, trained_run), None, 100_000, last),
        (["translate", "-c", str(last), "-o", str(out)], "one two\n" * 50, 64, out),
        (["average", str(last), str(last), "-o", str(avg)], None, 100_000, avg),
        (
            [
                *("preprocess", "--src-lang", "src", "--tgt-lang", "tgt"),
                *("--train", str(raw / "train"), "--dest", str(tmp_path / "data")),
                "data.vocab_size=48",
            ],
            None,
            1_000,
            tmp_path / "data",
        ),
    ]
    for args, stdin, limit, named in cases:
        result = limited(limit, *args, stdin=stdin)
        assert result.returncode == 1, args[0]
        message = one_line_error(result)
        assert message.startswith(f"error: {named}: cannot write"), message
        assert message.endswith(EFBIG), message
    after = {"checkpoint_last.pt": digests(trained_run)["checkpoint_last.pt"], **digests(tmp_path)}
    assert after == before
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".s2s.lock"]  # no temporaries
    assert not (trained_run / ".s2s.lock").exists()


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    sys.platform != "linux" or not namespaces_work(),
    reason="needs unprivileged user and mount namespaces (unshare -rm) for a small tmpfs",
)


def in_namespace(script: list[str], results: Path) -> None:
    """Run shell lines in one private user and mount namespace (where a tmpfs can be mounted);
    an s2s command is ``s2s NAME ARGS...``: its stderr and exit status come back in ``results``."""
    results.mkdir()
    lines = []
    for line in script:
        if line.startswith("s2s "):
            name = line.split()[1]  # the subcommand names the step
            command = " ".join(S2S) + line[len("s2s") :]
            rc = f"'{results}/{name}.rc'"
            line = f"if {command} </dev/null >/dev/null 2>'{results}/{name}.err'; "
            line += f"then echo 0 > {rc}; else echo $? > {rc}; fi"
        lines.append(line)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-ec", "\n".join(lines)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def namespace_error(results: Path, name: str, code: int = 1) -> str:
    err = (results / f"{name}.err").read_text()
    assert int((results / f"{name}.rc").read_text()) == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


NO_SPACE = "(No space left on device [ENOSPC])"


@needs_namespaces
def test_a_full_disk_is_one_line_and_loses_nothing(tiny_dataset, trained_run, tmp_path):
    """A 1.9 MB tmpfs holding a 1.2 MB run: the next checkpoint cannot be written beside it;
    then the disk is filled to the last byte for the small outputs."""
    disk, results = tmp_path / "disk", tmp_path / "results"
    disk.mkdir()
    raw = write_reverse_corpus(tmp_path / "raw", train=200)
    run, out, avg, data = disk / "run", disk / "out.txt", disk / "avg.pt", disk / "data"
    last = run / "checkpoint_last.pt"
    keep = " ".join(f"'{trained_run / n}'" for n in ("checkpoint_last.pt", "config.yaml"))
    # The resumed run trains and logs its two updates; what it had saved must stay as it was.
    snapshot = f"cd '{disk}' && sha256sum run/checkpoint_last.pt out.txt && cd /"
    in_namespace(
        [
            f"mount -t tmpfs -o size=1900k tmpfs '{disk}'",
            f"mkdir '{run}' && cp {keep} '{run}' && echo 'an earlier translation' > '{out}'",
            f"({snapshot}) > '{results}/before'",
            f"s2s {' '.join(resume_args(tiny_dataset, run))}",
            f"s2s average '{last}' -o '{avg}'",
            f"head -c 1G /dev/zero > '{disk}/filler' 2>/dev/null || true",
            f"s2s preprocess --src-lang src --tgt-lang tgt --train '{raw / 'train'}' "
            f"--dest '{data}' data.vocab_size=48",
            f"echo 'one two' > '{tmp_path}/in.txt'",
            f"s2s translate -c '{last}' -i '{tmp_path}/in.txt' -o '{out}'",
            f"rm '{disk}/filler' && ({snapshot}) > '{results}/after'",
            f"ls -A '{disk}' '{run}' > '{results}/listing'",
        ],
        results,
    )
    assert namespace_error(results, "train") == f"error: {last}: cannot write {NO_SPACE}"
    assert namespace_error(results, "average") == f"error: {avg}: cannot write {NO_SPACE}"
    assert namespace_error(results, "preprocess") == (
        f"error: {data}: cannot write the dataset {NO_SPACE}"
    )
    assert namespace_error(results, "translate") == f"error: {out}: cannot write {NO_SPACE}"
    assert (results / "after").read_text() == (results / "before").read_text()
    listing = (results / "listing").read_text().split()
    assert sorted(name for name in listing if not name.endswith(":")) == sorted(
        ["out.txt", "run", "checkpoint_last.pt", "config.yaml", "metrics.jsonl", "train.log"]
    )  # no temporaries, no half dataset, no lock


@needs_namespaces
def test_a_read_only_file_system_is_one_line(tiny_dataset, trained_run, tmp_path):
    results, out = tmp_path / "results", trained_run / "out.txt"
    out.write_text("an earlier translation\n")
    before = digests(trained_run)
    in_namespace(
        [
            f"mount --bind '{trained_run}' '{trained_run}'",
            f"mount -o remount,bind,ro '{trained_run}'",
            f"s2s {' '.join(resume_args(tiny_dataset, trained_run))}",
            f"echo 'one two' > '{tmp_path}/in.txt'",
            f"s2s translate -c '{trained_run}/checkpoint_last.pt' -i '{tmp_path}/in.txt' "
            f"-o '{out}'",
        ],
        results,
    )
    read_only = f"({os.strerror(30)} [EROFS])"
    assert namespace_error(results, "train") == (
        f"error: {trained_run}: cannot write to this save directory {read_only}"
    )
    assert namespace_error(results, "translate") == (
        f"error: {trained_run}: cannot write to this output directory {read_only}"
    )
    assert digests(trained_run) == before


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0,
    reason="root ignores write permissions; the unit test covers EACCES",
)
def test_a_directory_without_write_permission_is_one_line(trained_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = s2s(
            "translate",
            "-c",
            str(trained_run / "checkpoint_last.pt"),
            "-o",
            str(locked / "o"),
            stdin="one two\n",
        )
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1
    assert one_line_error(result).endswith(f"({os.strerror(13)} [EACCES])")
    assert list(locked.iterdir()) == []


# -- killed runs and impatient users -----------------------------------------------------------

HALF_WRITTEN = """
import sys, time
from pathlib import Path
from s2s_cli.io import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_text("half a transl")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_run(trained_checkpoint, tmp_path):
    out = tmp_path / "out.txt"
    writer = subprocess.Popen(
        [sys.executable, "-c", HALF_WRITTEN, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    (orphan,) = tmp_path.glob(".out.txt.*.tmp")
    assert orphan.name.startswith(f".out.txt.{writer.pid}@{HOST}.")
    result = s2s("translate", "-c", str(trained_checkpoint), "-o", str(out), stdin="one two\n")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_ctrl_c_again_during_shutdown_exits_130_without_a_traceback(tiny_dataset, tmp_path):
    """The first Ctrl-C saves and stops; more of them while it does so (a user holding the
    keys) end it at once, quietly, and never corrupt the last checkpoint."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            *(*S2S, "train", "--data", str(tiny_dataset), "--save-dir", str(run), *TINY_MODEL),
            *("train.max_updates=100000", "train.validate_every=3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: (run / "checkpoint_last.pt").exists(), "the first checkpoint")
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err and out == b"", err.decode()[-2000:]
    assert err.decode().splitlines()[-1] == "error: interrupted"
    assert load_checkpoint(run / "checkpoint_last.pt").progress.updates >= 3  # digest verified
