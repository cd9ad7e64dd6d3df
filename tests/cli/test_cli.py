"""The command-line contract, through real subprocesses where pipes and signals matter."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import sacrebleu
from typer.testing import CliRunner

from s2s_cli import Translator
from s2s_cli.cli import app

from ..conftest import TINY_MODEL, reverse_dataset, write_reverse_corpus

runner = CliRunner()
SUBCOMMANDS = [
    "preprocess",
    "train",
    "translate",
    "score",
    "average",
    "info",
    "shortlist",
    "export",
]


def s2s(*args: str, stdin: str | bytes | None = None, check: bool = False, timeout: float = 300):
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run(
        [sys.executable, "-m", "s2s_cli", *args],
        input=data,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr.decode()[-3000:])
    return result


def one_line_error(result) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_help_lists_every_subcommand_with_a_purpose():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output
    for name in SUBCOMMANDS:
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Usage" in sub.output


def real_help(*args: str) -> str:
    """What a user sees: the installed command's --help on a wide terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "s2s_cli", *args, "--help"],
        capture_output=True,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
        check=True,
    )
    return result.stdout.decode()


def help_line(text: str, option: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("│") and f" {option} " in line]
    return line


def test_help_shows_defaults_from_the_config_and_no_type_labels():
    import dataclasses
    import re
    import typing

    from s2s_cli.cli import command
    from s2s_cli.config import DataConfig, DecodeConfig

    pages = {name: real_help(name) for name in SUBCOMMANDS}
    pages["s2s"] = real_help()
    for name, text in pages.items():
        assert not re.search(r"<(bool|str|int|float|path|file|list\[\w+\])>", text), name
        assert not re.search(r"\s\.\s", text.replace("  ", " ")), name  # a swallowed "[...]"
    data = DataConfig()
    preprocess = pages["preprocess"]
    assert f"[default: {data.vocab_size} (data.vocab_size)]" in help_line(
        preprocess, "--vocab-size"
    )
    assert f"[default: {data.workers} (data.workers)]" in help_line(preprocess, "--workers")
    spm_types = typing.get_args(typing.get_type_hints(DataConfig)["spm_type"])
    assert " " + "|".join(spm_types) + " " in help_line(preprocess, "--spm-type")
    # Every decode key is a translate option whose default is said to come from the checkpoint.
    translate_options = {p.name for p in command().commands["translate"].params}
    decode = DecodeConfig()
    for field in dataclasses.fields(DecodeConfig):
        assert field.name in translate_options, field.name
        option = "--" + field.name.replace("_", "-")
        value = getattr(decode, field.name)
        shown = str(value).lower() if value is None or isinstance(value, bool) else str(value)
        shown = "null" if value is None else shown
        line = help_line(pages["translate"], option)
        if field.name == "buffer_size":  # its help wraps onto a second line
            line = pages["translate"][pages["translate"].index(option) :][:600]
        assert f"the checkpoint's decode.{field.name}, normally {shown}" in " ".join(
            line.replace("│", " ").split()
        ), option


def test_help_shows_every_help_text_as_written():
    """rich renders help as markup: an emoji code (``:b:`` in ``A:B:C``) or a ``[word]`` would
    come out changed. Every command's and option's help must read in --help as it is written."""
    from rich.text import Text

    from s2s_cli.cli import command

    def flat(text: str) -> str:
        return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())

    for name, cmd in command().commands.items():
        page = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        assert all(ord(c) < 128 or 0x2500 <= ord(c) <= 0x257F for c in page), (name, page)
        shown = flat(page)
        texts = [cmd.help.split("\n\n")[0]] + [
            p.help for p in cmd.params if getattr(p, "help", None)
        ]
        for text in texts:
            assert flat(Text.from_markup(text, emoji=False).plain) in shown, (name, text)


def test_bare_s2s_prints_help_and_succeeds():
    result = subprocess.run(
        [sys.executable, "-m", "s2s_cli"], capture_output=True, check=False, timeout=60
    )
    assert result.returncode == 0 and b"Usage: s2s" in result.stdout


def test_translate_flags_override_a_checkpoints_decode_section(trained_checkpoint, tmp_path):
    """--no-sampling undoes a checkpoint's decode.sampling=true; options map to decode keys."""
    from s2s_cli.checkpoint import load_checkpoint, save_checkpoint

    sampled = tmp_path / "sampled.pt"
    checkpoint = load_checkpoint(trained_checkpoint)
    checkpoint.config.decode.sampling = True
    checkpoint.config.decode.beam = 1
    save_checkpoint(checkpoint, sampled)
    lines = ["one two three", "four five six seven"]
    searched = s2s("translate", "-c", str(sampled), "--no-sampling", stdin="\n".join(lines) + "\n")
    expected = Translator.from_checkpoint(trained_checkpoint, device="cpu").translate(lines, beam=1)
    assert searched.returncode == 0 and searched.stdout.decode().splitlines() == expected


def test_version():
    from s2s_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_config_error_exits_2_and_data_error_exits_1(tiny_dataset, tmp_path):
    config_error = s2s("train", "--data", str(tiny_dataset), "--dry-run", "model.hiden_size=3")
    assert config_error.returncode == 2
    assert "did you mean 'model.hidden_size'" in one_line_error(config_error)
    data_error = s2s(
        "preprocess",
        "--src-lang",
        "a",
        "--tgt-lang",
        "b",
        "--train",
        str(tmp_path / "x"),
        "--dest",
        str(tmp_path / "d"),
    )
    assert data_error.returncode == 1
    assert "no such file" in one_line_error(data_error)


def test_preprocess_prints_exactly_the_dataset_dir(tmp_path):
    raw = write_reverse_corpus(tmp_path / "raw", train=200)
    result = s2s(
        "preprocess",
        "--src-lang",
        "src",
        "--tgt-lang",
        "tgt",
        "--train",
        str(raw / "train"),
        "--valid",
        str(raw / "valid"),
        "--vocab-size",
        "40",
        "--dest",
        str(tmp_path / "d"),
        check=True,
    )
    assert result.stdout.decode() == f"{tmp_path / 'd'}\n"
    info = s2s("info", str(tmp_path / "d"), "--json", check=True)
    assert json.loads(info.stdout)["splits"]["train"]["sentences"] == 200


def test_paths_that_look_like_markup_are_printed_as_written(tmp_path):
    """The summary table's title quotes the destination: "[/x]" in it raised rich's MarkupError
    (after the dataset was written), "[bold]" vanished and ":b:" became an emoji."""
    raw = write_reverse_corpus(tmp_path / "raw", train=100)
    dest = tmp_path / "corpus [/x] [bold] :b:"
    result = s2s(
        *["preprocess", "--src-lang", "src", "--tgt-lang", "tgt", "--train", str(raw / "train")],
        *["--vocab-size", "40", "--dest", str(dest)],
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip() == str(dest)
    unwrapped = "".join(result.stderr.decode().split())  # however rich wraps the long title
    assert "".join(f"{dest} (src-tgt, vocab".split()) in unwrapped, result.stderr.decode()


def test_preprocess_pipes_into_train_and_train_prints_the_checkpoint(tmp_path):
    raw = write_reverse_corpus(tmp_path / "raw", train=300)
    pre = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s2s_cli",
            "preprocess",
            "--src-lang",
            "src",
            "--tgt-lang",
            "tgt",
            "--train",
            str(raw / "train"),
            "--valid",
            str(raw / "valid"),
            "--vocab-size",
            "40",
            "--dest",
            str(tmp_path / "d"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2s_cli",
            "train",
            "--save-dir",
            str(tmp_path / "run"),
            *TINY_MODEL,
            "train.max_updates=5",
        ],
        stdin=pre.stdout,
        capture_output=True,
        check=False,
    )
    pre.wait()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = result.stdout.decode().splitlines()
    assert lines == [str(tmp_path / "run" / "checkpoint_best.pt")]
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "train.log").exists()
    assert "update" in result.stderr.decode()  # logs go to stderr


def test_one_yaml_file_describes_an_experiment(tiny_dataset, tmp_path):
    """data.path and train.save_dir in the YAML: `s2s train exp.yaml` alone runs; the flags
    win; the saved config.yaml alone resumes the run; stdin is never waited on."""
    import yaml

    spec = {
        "data": {"path": str(tiny_dataset)},
        "model": {
            k.split(".", 1)[1]: v
            for k, v in (o.split("=") for o in TINY_MODEL)
            if k.startswith("model.")
        },
        "train": {"save_dir": str(tmp_path / "run"), "max_updates": 6, "max_tokens": 1024},
    }
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(spec))
    # stdin is a pipe that never closes: a run that read it would hang until the timeout
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2s_cli", "train", str(exp), "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == str(tmp_path / "run" / "checkpoint_best.pt")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tiny_dataset)
    assert saved["train"]["save_dir"] == str(tmp_path / "run")
    resumed = s2s("train", str(tmp_path / "run" / "config.yaml"), "train.max_updates=8", check=True)
    assert b"resuming" in resumed.stderr and b"done after 8 updates" in resumed.stderr
    elsewhere = tmp_path / "elsewhere"
    flagged = s2s("train", str(exp), "--save-dir", str(elsewhere), "-q", check=True)
    assert flagged.stdout.decode().strip() == str(elsewhere / "checkpoint_best.pt")
    missing = s2s("train", str(exp), "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and str(tmp_path / "nowhere") in one_line_error(missing)


def test_dry_run_prints_config_and_parameter_count(tiny_dataset):
    result = s2s(
        "train", "--data", str(tiny_dataset), "--dry-run", "model.preset=luong", check=True
    )
    out = result.stdout.decode()
    assert "input_feeding: true" in out and "# parameters:" in out


def endless_training(dataset, save_dir, *overrides: str) -> list[str]:
    """The command of a tiny training run that goes on until it is stopped, logging each update
    (to metrics.jsonl too): its last two arguments set the length and the logging."""
    return [
        *[sys.executable, "-m", "s2s_cli", "train", "--data", str(dataset)],
        *["--save-dir", str(save_dir), *TINY_MODEL, *overrides],
        *["train.max_updates=100000", "train.log_every=1"],
    ]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_the_run_resumes(tiny_dataset, tmp_path):
    args = endless_training(tiny_dataset, tmp_path)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    log = tmp_path / "metrics.jsonl"
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err, err.decode()[-3000:]
    assert out == b""
    progress = json.loads(
        json.dumps(
            __import__("torch").load(tmp_path / "checkpoint_last.pt", weights_only=True)["progress"]
        )
    )
    assert progress["updates"] >= 3
    resumed = subprocess.run(
        [*args[:-2], f"train.max_updates={progress['updates'] + 2}"],
        capture_output=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert b"resuming" in resumed.stderr


def test_a_closed_terminal_saves_a_checkpoint_and_the_run_resumes(tiny_dataset, tmp_path):
    """A run in a terminal that goes away (SIGHUP: the window closed, the ssh session dropped)
    saves a checkpoint after the current update, as SIGTERM does, and exits 129; nothing it
    writes to the dead terminal turns into a traceback in train.log or a hang."""
    import pty
    import select

    try:  # (a sandbox without /dev/ptmx has no terminals to close)
        for fd in os.openpty():
            os.close(fd)
    except OSError as err:
        pytest.skip(f"no pseudo-terminal here: {err}")
    args = endless_training(tiny_dataset, tmp_path, "train.validate_every=100000")
    pid, terminal = pty.fork()  # the child's controlling terminal is this pty
    if pid == 0:
        os.execv(sys.executable, args)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        if select.select([terminal], [], [], 0.2)[0]:
            os.read(terminal, 65536)  # keep the terminal drained, as a real one would be
    os.close(terminal)  # hang up
    code = None
    while time.time() < deadline + 60 and code is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        code = os.waitstatus_to_exitcode(status) if done else None
        time.sleep(0.1)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert code == 129, code
    from s2s_cli.checkpoint import load_checkpoint

    updates = load_checkpoint(tmp_path / "checkpoint_last.pt").progress.updates
    assert updates >= 3
    log = (tmp_path / "train.log").read_text()
    assert "SIGHUP received" in log and "Traceback" not in log, log[-2000:]
    resumed = s2s(*args[3:-2], f"train.max_updates={updates + 2}")
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert b"resuming" in resumed.stderr


def test_a_run_started_with_nohup_keeps_ignoring_a_hangup():
    from s2s_cli.training.trainer import _stop_signals

    previous = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does before it starts us
        assert signal.SIGHUP not in _stop_signals()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert _stop_signals() == [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_run_you_can_follow_banner_epoch_labels_end_line_and_quiet(tiny_dataset, tmp_path):
    from s2s_cli import Dataset, load_config
    from s2s_cli.models.build import build_model, parameter_counts

    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--save-dir", str(run), *TINY_MODEL]
    result = s2s(*args, "train.max_epochs=2", "train.log_every=10", check=True)
    err = result.stderr.decode()
    dataset = Dataset(tiny_dataset)
    train_pairs = len(dataset.split("train"))
    assert f"train {train_pairs:,} pairs" in err and "valid 60" in err
    model = build_model(load_config(overrides=TINY_MODEL).model, *dataset.vocab_sizes)
    assert f"model: {parameter_counts(model)['total']:,} parameters (encoder" in err
    assert "device cpu, precision fp32" in err and f"config {run / 'config.yaml'}" in err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    per_epoch = valid[0]["update"]
    assert [(r["epoch"], r["update"]) for r in valid] == [(1, per_epoch), (2, 2 * per_epoch)]
    assert f"{per_epoch} updates per epoch" in err
    best = max(valid, key=lambda r: r["bleu"])
    last_line = err.strip().splitlines()[-1]
    assert last_line.endswith(
        f"done after {2 * per_epoch} updates: train.max_epochs=2 done; best bleu "
        f"{best['bleu']:.2f} at update {best['update']}; best checkpoint: {run / 'checkpoint_best.pt'}"
    )
    quiet = s2s(*args, "train.max_epochs=3", "-q", check=True)  # resumes for one more epoch
    assert b"INFO" not in quiet.stderr and quiet.stdout.decode().strip()
    assert "done after" in (run / "train.log").read_text().splitlines()[-1]  # the log keeps all
    both = s2s(*args, "-q", "-v")
    assert both.returncode == 2
    assert one_line_error(both) == "error: -q/--quiet and -v/--verbose: choose one"


def test_translate_progress_has_a_total_and_a_rate_and_ends_with_a_summary(
    trained_checkpoint, tmp_path
):
    import io

    from rich.console import Console

    from s2s_cli.decoding.streaming import StreamOptions, translate_stream

    src = tmp_path / "in.txt"
    src.write_text("one two\nthree four\nfive\n")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150)
    options = StreamOptions(
        checkpoints=[trained_checkpoint],
        input_file=src,
        output_file=tmp_path / "out.txt",
        progress=True,
        device="cpu",
    )
    assert translate_stream(options, console=console) == 3
    shown = screen.getvalue()
    assert "3/3" in shown and "ETA" in shown  # (the rate shows once rich has two samples)
    result = s2s("translate", "-c", str(trained_checkpoint), "-i", str(src), check=True)
    assert re.search(
        r"translated 3 sentences in [\d.]+ s \([\d.]+ sentences/s\)", result.stderr.decode()
    )
    quiet = s2s("translate", "-c", str(trained_checkpoint), "-i", str(src), "-q", check=True)
    assert quiet.stderr == b"" and quiet.stdout == result.stdout


# -- translate --------------------------------------------------------------------------------


def test_translate_stdin_to_stdout_one_line_per_line(trained_checkpoint):
    lines = ["one two three", "", "four five", "six"]
    result = s2s(
        "translate", "-c", str(trained_checkpoint), stdin="\n".join(lines) + "\n", check=True
    )
    out = result.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == ""
    # the command prints what the Python API translates (not what this model happened to learn)
    assert out[:-1] == Translator.from_checkpoint(trained_checkpoint, device="cpu").translate(lines)


def test_translate_answers_a_slow_producers_first_line_before_its_second(trained_checkpoint):
    """Behind a pipe, what has arrived is translated as soon as the input stalls."""
    import select

    proc = subprocess.Popen(
        [sys.executable, "-m", "s2s_cli", "translate", "-c", str(trained_checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    expected = Translator.from_checkpoint(trained_checkpoint, device="cpu").translate(
        ["one two three", "four five"]
    )
    try:
        proc.stdin.write(b"one two three\n")
        proc.stdin.flush()
        # The second line is not written until the first translation is back (or 120 s pass).
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no translation while the producer stalled"
        assert proc.stdout.readline().decode().rstrip("\n") == expected[0]
        proc.stdin.write(b"four five\n")
        proc.stdin.close()
        assert proc.stdout.read().decode() == expected[1] + "\n"
    finally:
        proc.kill()
        proc.wait()


def test_translate_file_to_file_jsonl_alignment_and_plots(trained_checkpoint, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("one two\nthree four grün five\n")
    out = tmp_path / "out.jsonl"
    s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "-i",
        str(src),
        "-o",
        str(out),
        "--format",
        "jsonl",
        "--nbest",
        "2",
        "--print-alignment",
        "--attention-plot",
        str(tmp_path / "plots"),
        check=True,
    )
    raw = out.read_text(encoding="utf-8")
    assert "grün" in raw and "\\u00fc" not in raw  # UTF-8, not JSON escapes
    rows = [json.loads(line) for line in raw.splitlines()]
    # ids are line numbers, like the plot files: row 2 is 000002.svg
    assert [r["id"] for r in rows] == [1, 2] and rows[1]["source"] == "three four grün five"
    assert len(rows[0]["hypotheses"]) == 2
    assert rows[0]["hypotheses"][0]["score"] >= rows[0]["hypotheses"][1]["score"]
    assert all("-" in pair for pair in rows[0]["hypotheses"][0]["alignment"].split())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["000001.svg", "000002.svg"]
    svg = (tmp_path / "plots" / "000002.svg").read_text(encoding="utf-8")
    best = rows[1]["hypotheses"][0]
    assert f"sentence 2, score {best['score']:.3f}" in svg
    assert ">weight</text>" in svg and ">1.0</text>" in svg and ">0.0</text>" in svg  # the scale
    assert svg.count("rgb(") >= 10 + len(best["pieces"])  # scale steps + at least one row


def test_attention_outputs_are_refused_for_a_model_without_attention(trained_checkpoint, tmp_path):
    import dataclasses

    from s2s_cli.checkpoint import load_checkpoint, save_checkpoint
    from s2s_cli.models.build import build_model

    checkpoint = load_checkpoint(trained_checkpoint)
    model_cfg = dataclasses.replace(checkpoint.config.model, attention="none")
    config = dataclasses.replace(checkpoint.config, model=model_cfg)
    model = build_model(model_cfg, checkpoint.vocab.src_size, checkpoint.vocab.tgt_size)
    plain = tmp_path / "plain.pt"
    save_checkpoint(
        dataclasses.replace(checkpoint, config=config, model=model.state_dict(), training=None),
        plain,
    )
    assert s2s("translate", "-c", str(plain), stdin="one two\n", check=True).stdout
    for flag in (["--print-alignment"], ["--attention-plot", str(tmp_path / "plots")]):
        result = s2s("translate", "-c", str(plain), *flag, stdin="one two\n")
        assert result.returncode == 2 and result.stdout == b""
        assert one_line_error(result) == (
            f"error: {flag[0]}: {plain} has no attention (model.attention: none), which "
            "alignments and attention plots are made from"
        )
    assert not (tmp_path / "plots").exists()


def test_average_warns_when_fewer_checkpoints_than_asked_are_there(trained_checkpoint, tmp_path):
    import shutil

    for update in (10, 20):
        shutil.copyfile(trained_checkpoint, tmp_path / f"checkpoint_u{update}.pt")
    result = s2s("average", "--save-dir", str(tmp_path), "-o", str(tmp_path / "avg.pt"))
    assert result.returncode == 0, result.stderr.decode()
    assert (
        f"{tmp_path}: 2 periodic checkpoints, not the 5 asked for; averaging 2 (keep more with "
        "train.keep_last)"
    ) in result.stderr.decode()
    assert json.loads(s2s("info", str(tmp_path / "avg.pt"), "--json").stdout)["averaged_from"] == [
        str(tmp_path / "checkpoint_u10.pt"),
        str(tmp_path / "checkpoint_u20.pt"),
    ]


def test_score_reference_prints_log_probabilities_and_perplexity(trained_checkpoint, tmp_path):
    from s2s_cli.decoding.forced import corpus_perplexity

    sources = ["one two three", "four five", "six"]
    references = ["THREE TWO ONE", "FIVE FOUR", "SEVEN"]
    (tmp_path / "src").write_text("\n".join(sources) + "\n")
    (tmp_path / "ref").write_text("\n".join(references) + "\n")
    args = ["translate", "-c", str(trained_checkpoint), "-i", str(tmp_path / "src")]
    result = s2s(*args, "--score-reference", str(tmp_path / "ref"), check=True)
    expected = Translator.from_checkpoint(trained_checkpoint, device="cpu").score_references(
        sources, references
    )
    rows = [line.split("\t") for line in result.stdout.decode().splitlines()]
    assert [int(pieces) for _, pieces in rows] == [e.pieces for e in expected]
    assert [float(lp) for lp, _ in rows] == pytest.approx([e.logprob for e in expected], abs=1e-3)
    total, pieces, perplexity = corpus_perplexity(expected)
    assert (
        f"reference log-probability {total:.4f} over {pieces} pieces (EOS included): "
        f"perplexity {perplexity:.4f}"
    ) in result.stderr.decode()
    (tmp_path / "short").write_text("THREE TWO ONE\n")
    short = s2s(*args, "--score-reference", str(tmp_path / "short"))
    assert short.returncode == 1 and result.stdout
    assert one_line_error(short) == (
        f"error: {tmp_path / 'short'} has 1 lines but {tmp_path / 'src'} has more; "
        "sources and references must be line-parallel"
    )


def test_translate_text_alignment_is_tab_separated(trained_checkpoint):
    result = s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "--print-alignment",
        stdin="one two\n",
        check=True,
    )
    text, alignment = result.stdout.decode().rstrip("\n").split("\t")
    assert text and all(p.split("-")[0].isdigit() for p in alignment.split())


def test_translate_stops_quietly_when_the_reader_goes_away(trained_checkpoint):
    proc = subprocess.Popen(
        f"yes 'one two three four' | head -n 3000 | {sys.executable} -m s2s_cli translate -c "
        f"{trained_checkpoint} --buffer-size 50 | head -n 1",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=120)
    expected = Translator.from_checkpoint(trained_checkpoint, device="cpu").translate(
        ["one two three four"]
    )
    assert out.decode().splitlines() == expected  # one line out, the right one
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_translate_warns_about_truncation_naming_the_line(trained_checkpoint):
    result = s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "--max-source-len",
        "5",
        stdin="one\n" + "one two " * 10 + "\n",
        check=True,
    )
    assert "line 2" in result.stderr.decode() and "truncated" in result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("utf8", "line 2: invalid UTF-8"),
        ("missing", "no such checkpoint"),
        ("corrupt", "not a readable s2s checkpoint"),
        ("unwritable", "cannot write"),
        ("fp16", "fp16 needs a CUDA device"),
    ],
)
def test_translate_errors_are_one_line(trained_checkpoint, tmp_path, case, message):
    ckpt = str(trained_checkpoint)
    args, stdin = ["-c", ckpt], b"one two\n"
    if case == "utf8":
        stdin = b"one two\n\xff\xfe three\n"
    elif case == "missing":
        args = ["-c", str(tmp_path / "nope.pt")]
    elif case == "corrupt":
        (tmp_path / "bad.pt").write_bytes(os.urandom(5000))
        args = ["-c", str(tmp_path / "bad.pt")]
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        args += ["-o", str(tmp_path / "file" / "out.txt")]
    elif case == "fp16":
        args += ["--precision", "fp16", "--device", "cpu"]
    result = s2s("translate", *args, stdin=stdin)
    assert result.returncode != 0
    assert message in one_line_error(result)


def test_ensemble_members_must_share_vocabularies(trained_checkpoint, tmp_path):
    raw = write_reverse_corpus(tmp_path / "raw", train=200, seed=3)
    data = tmp_path / "d"
    s2s(
        "preprocess",
        "--src-lang",
        "src",
        "--tgt-lang",
        "tgt",
        "--train",
        str(raw / "train"),
        "--vocab-size",
        "44",
        "--dest",
        str(data),
        check=True,
    )
    other = (
        s2s(
            "train",
            "--data",
            str(data),
            "--save-dir",
            str(tmp_path / "run"),
            *TINY_MODEL,
            "train.max_updates=1",
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    result = s2s("translate", "-c", str(trained_checkpoint), "-c", other, stdin="one\n")
    assert result.returncode == 1
    assert "vocabulary differs" in one_line_error(result)


def test_average_and_info_on_checkpoints(trained_checkpoint, tmp_path):
    out = tmp_path / "avg.pt"
    result = s2s(
        "average", str(trained_checkpoint), str(trained_checkpoint), "-o", str(out), check=True
    )
    assert result.stdout.decode().strip() == str(out)
    info = json.loads(s2s("info", str(out), "--json", check=True).stdout)
    assert info["parameters"]["total"] > 0 and info["model"]["cell"] == "lstm"
    assert len(info["averaged_from"]) == 2
    assert info["integrity"] == "sha256 verified"


def test_stdout_is_utf8_under_an_ascii_locale(trained_checkpoint, tmp_path):
    """Input is read as UTF-8 whatever the locale; so is stdout written (an ASCII stdout used to
    end `s2s average` with a UnicodeEncodeError after it had written the file)."""
    out = tmp_path / "modèle ř" / "avg.pt"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "s2s_cli", "average", str(trained_checkpoint), "-o", str(out)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode("utf-8").strip() == str(out)


def test_a_non_ascii_dataset_path_pipes_into_train_under_an_ascii_locale(tiny_dataset, tmp_path):
    """`s2s train` reads a piped path as UTF-8 (what `s2s preprocess` prints) and its resolved
    config shows the path as written: not as YAML escapes, nor folded over lines (it is long)."""
    import shutil

    data = tmp_path / " ".join(["données ř"] * 8)
    shutil.copytree(tiny_dataset, data)
    result = subprocess.run(
        [sys.executable, "-m", "s2s_cli", "train", "--dry-run"],
        input=f"{data}\n".encode(),
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert f"  path: {data}\n" in result.stdout.decode("utf-8")


# -- score --------------------------------------------------------------------------------------

REF = ["the cat sat on the mat", "a dog runs in the park", "it is raining today"]
HYP = ["the cat sat on a mat", "a dog is running in the park", "it rains today"]


@pytest.fixture
def texts(tmp_path):
    (tmp_path / "ref").write_text("\n".join(REF) + "\n")
    (tmp_path / "hyp").write_text("\n".join(HYP) + "\n")
    return tmp_path


def test_score_equals_sacrebleu(texts):
    result = runner.invoke(
        app,
        [
            "score",
            "-r",
            str(texts / "ref"),
            "-i",
            str(texts / "hyp"),
            "--metrics",
            "bleu,chrf,ter",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(HYP, [REF]).score)
    assert scores["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(HYP, [REF]).score)
    assert scores["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(HYP, [REF]).score)
    assert "nrefs:1" in scores["bleu"]["signature"]


def test_score_tokenized_lowercased_bleu_is_labelled(texts):
    upper = texts / "upper"
    upper.write_text("\n".join(h.upper() for h in HYP) + "\n")
    result = runner.invoke(
        app, ["score", "-r", str(texts / "ref"), "-i", str(upper), "--metrics", "bleu,bleu_tok_lc"]
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("BLEU = ") and lines[1].startswith("BLEU (tokenized, lowercased) = ")
    assert "case:lc" in lines[1]
    lowered = sacrebleu.corpus_bleu([h.upper() for h in HYP], [REF], lowercase=True).score
    assert f"{lowered:.2f}" in lines[1]


def test_score_reads_stdin_and_prints_the_signature(texts):
    result = s2s("score", "-r", str(texts / "ref"), stdin="\n".join(HYP) + "\n", check=True)
    assert "nrefs:1" in result.stdout.decode()


def test_score_gates(texts):
    low = runner.invoke(
        app, ["score", "-r", str(texts / "ref"), "-i", str(texts / "hyp"), "--min-bleu", "99"]
    )
    assert low.exit_code == 1 and "below --min-bleu 99" in low.stderr
    ok = runner.invoke(
        app,
        [
            "score",
            "-r",
            str(texts / "ref"),
            "-i",
            str(texts / "hyp"),
            "--min-bleu",
            "1",
            "--min-chrf",
            "1",
        ],
    )
    assert ok.exit_code == 0


def test_score_only_width_and_chrf_plus_plus_equal_sacrebleu(texts):
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU().corpus_score(HYP, [REF]).score
    chrf_pp = CHRF(word_order=2).corpus_score(HYP, [REF]).score
    args = ["score", "-r", str(texts / "ref"), "-i", str(texts / "hyp")]
    only = s2s(*args, "-b", "--metrics", "bleu,chrf++", check=True)
    assert only.stdout.decode() == f"{bleu:.2f}\n{chrf_pp:.2f}\n"
    assert s2s(*args, "-b", "-w", "4", check=True).stdout.decode().split()[0] == f"{bleu:.4f}"
    verbose = s2s(*args, "--metrics", "chrf++", "-w", "1", check=True).stdout.decode()
    assert verbose.startswith(f"chrF2++ = {chrf_pp:.1f} | nrefs:1|") and "nw:2" in verbose


def test_sentence_scores_alone_on_stdout_without_warnings(texts):
    from sacrebleu import sentence_bleu

    result = s2s("score", "-r", str(texts / "ref"), "-i", str(texts / "hyp"), "--sentence")
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "bleu\tchrf" and len(lines) == 1 + len(HYP)  # no corpus lines mixed in
    for line, hyp, ref in zip(lines[1:], HYP, REF, strict=True):
        assert float(line.split("\t")[0]) == pytest.approx(
            sentence_bleu(hyp, [ref]).score, abs=0.01
        )
    err = result.stderr.decode()
    assert (
        "BLEU = " in err and "effective order" not in err.lower() and "warning" not in err.lower()
    )


def test_paired_tests_find_a_better_system_and_not_an_identical_one(tmp_path):
    """sacrebleu's paired bootstrap and randomization, with p-values and CIs, baseline first."""
    import random

    rng = random.Random(3)
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "ran",
        "on",
        "in",
        "mat",
        "park",
        "house",
        "big",
        "small",
        "red",
    ]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 9))) for _ in range(60)]
    files = {
        "ref": refs,
        "base": [" ".join(r.split()[:-2]) for r in refs],  # drops the last two words
        # better on ten sentences, worse on ten others: a difference chance explains
        "close": [
            " ".join(r.split()[: -1 if i < 10 else -3 if i < 20 else -2])
            for i, r in enumerate(refs)
        ],
        "better": [" ".join(r.split()[:-1]) for r in refs],  # drops one
    }
    for name, lines in files.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    systems = [str(tmp_path / name) for name in ("base", "close", "better")]
    base = ["score", "-r", str(tmp_path / "ref")]
    for path in systems:
        base += ["-i", path]
    for flag, samples in (("--paired-bs", "300"), ("--paired-ar", "300")):
        result = s2s(*base, flag, "--paired-n", samples, "--format", "json", check=True)
        document = json.loads(result.stdout)
        assert document["test"] == flag[-2:] and document["baseline"] == systems[0]
        assert f"{flag[-2:]}:{samples}" in document["metrics"]["bleu"]["signature"]
        for metric in ("bleu", "chrf"):
            rows = document["metrics"][metric]["systems"]
            assert [r["system"] for r in rows] == systems
            assert rows[0]["p_value"] is None
            assert rows[1]["p_value"] > 0.05
            assert rows[2]["score"] > rows[0]["score"] and rows[2]["p_value"] < 0.01
            if flag == "--paired-bs":
                assert all(r["mean"] is not None and r["ci"] > 0 for r in rows)
    text = s2s(*base, "--paired-bs", "--paired-n", "100", check=True).stdout.decode()
    assert text.startswith("# paired bootstrap resampling against the baseline")
    assert "p = " in text and "(mean " in text


def test_several_systems_are_scored_and_gated_each(texts):
    better = texts / "better"
    better.write_text("\n".join(REF) + "\n")
    args = ["score", "-r", str(texts / "ref"), "-i", str(texts / "hyp"), "-i", str(better)]
    only = s2s(*args, "-b", "--metrics", "bleu", check=True).stdout.decode().splitlines()
    assert only == [
        f"{texts / 'hyp'}\t{sacrebleu.corpus_bleu(HYP, [REF]).score:.2f}",
        f"{better}\t100.00",
    ]
    gated = s2s(*args, "--min-bleu", "50")
    assert gated.returncode == 1
    assert one_line_error(gated).startswith(f"error: {texts / 'hyp'}: BLEU ")


@pytest.mark.parametrize("case", ["mismatch", "empty", "unreadable"])
def test_score_errors(texts, case):
    hyp = texts / "hyp"
    if case == "mismatch":
        hyp.write_text("one line\n")
    elif case == "empty":
        hyp.write_text("")
    else:
        hyp = texts / "missing"
    result = s2s("score", "-r", str(texts / "ref"), "-i", str(hyp))
    assert result.returncode == 1
    message = one_line_error(result)
    assert {"mismatch": "has 3 lines", "empty": "no hypotheses", "unreadable": "no such file"}[
        case
    ] in message


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--resume"], 1, "nothing to resume"),
        (["train.precision=fp16"], 2, "fp16 needs a CUDA device"),
    ],
)
def test_a_run_refused_at_start_leaves_nothing_behind(tiny_dataset, tmp_path, args, code, message):
    if "train.precision=fp16" in args and __import__("torch").cuda.is_available():
        pytest.skip("with CUDA, fp16 training is allowed: there is no refusal to test")
    fresh = tmp_path / "fresh"
    result = s2s("train", "--data", str(tiny_dataset), "--save-dir", str(fresh), *args)
    assert result.returncode == code and message in one_line_error(result)
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    result = s2s("train", "--data", str(tiny_dataset), "--save-dir", str(kept), *args)
    assert result.returncode == code
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_divergence_is_a_one_line_error_with_exit_1(tiny_dataset, tmp_path):
    result = s2s(
        "train",
        "--data",
        str(tiny_dataset),
        "--save-dir",
        str(tmp_path / "run"),
        *TINY_MODEL,
        "train.lr=1e38",
        "train.max_updates=20",
        "train.max_nonfinite_updates=3",
    )
    assert result.returncode == 1
    assert "training diverged: 3 updates in a row" in one_line_error(result)


def test_shortlist_then_int8_translation_with_it(tiny_dataset, trained_checkpoint, tmp_path):
    """s2s shortlist prints its file; translate takes it with --precision int8; a shortlist of
    another vocabulary, or a damaged one, is one line naming the file and exit 1."""
    made = s2s("shortlist", "--data", str(tiny_dataset), "-o", str(tmp_path / "sl.npz"), check=True)
    assert made.stdout.decode() == f"{tmp_path / 'sl.npz'}\n"
    assert "of the reference pieces are in their batch's shortlist" in made.stderr.decode()
    lines = ["one two three", "four five six seven", "nine"]
    result = s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "--precision",
        "int8",
        "--shortlist",
        str(tmp_path / "sl.npz"),
        stdin="\n".join(lines) + "\n",
        check=True,
    )
    assert result.stdout.decode().splitlines() == ["THREE TWO ONE", "SEVEN SIX FIVE FOUR", "NINE"]
    # a dataset of another corpus, so of other SentencePiece models than the model's
    other = reverse_dataset(tmp_path / "other", vocab_size=40, train=200, seed=3)
    s2s("shortlist", "--data", str(other), "-o", str(tmp_path / "other.npz"), check=True)
    wrong = s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "--shortlist",
        str(tmp_path / "other.npz"),
        stdin="one\n",
    )
    assert wrong.returncode == 1
    assert "other.npz: this shortlist was built for other SentencePiece models" in one_line_error(
        wrong
    )
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    bad = s2s(
        "translate",
        "-c",
        str(trained_checkpoint),
        "--shortlist",
        str(tmp_path / "bad.npz"),
        stdin="one\n",
    )
    assert bad.returncode == 1 and "bad.npz: not an s2s shortlist" in one_line_error(bad)


def test_export_int8_prints_the_file_that_translate_and_info_take(trained_checkpoint, tmp_path):
    out = tmp_path / "model.int8.pt"
    made = s2s("export", "-c", str(trained_checkpoint), "-o", str(out), check=True)
    assert made.stdout.decode() == f"{out}\n"
    result = s2s("translate", "-c", str(out), stdin="one two three\n", check=True)
    assert result.stdout.decode() == "THREE TWO ONE\n"
    heading = s2s("info", str(out), check=True).stdout.decode().splitlines()[0]
    assert heading.startswith(str(out)) and heading.endswith("int8 weights)")  # never wrapped
    wrong = s2s("export", "-c", str(trained_checkpoint), "-o", str(out), "--format", "tflite")
    assert wrong.returncode == 2 and "'tflite' is not one of: int8" in one_line_error(wrong)


def test_export_onnx_then_translate_the_directory(trained_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "model-onnx"
    made = s2s("export", "-c", str(trained_checkpoint), "-o", str(out), "--format", "onnx")
    assert made.returncode == 0 and made.stdout.decode() == f"{out}\n", made.stderr.decode()
    assert made.stderr.decode() == ""  # the exporter's C++ warnings stay off the terminal
    result = s2s("translate", "-c", str(out), stdin="one two three\nnine\n", check=True)
    assert result.stdout.decode() == "THREE TWO ONE\nNINE\n"
    bf16 = s2s("translate", "-c", str(out), "--precision", "bf16", stdin="one\n")
    assert bf16.returncode == 2 and "runs in fp32 only" in one_line_error(bf16)


_LEAVING = """
import atexit, sys, threading, time
from pathlib import Path
marks = Path(sys.argv[1])
if sys.argv[2] == "torch":
    import torch  # noqa: F401
from s2s_cli.cli._common import exit_without_teardown


class TornDown:  # its __del__ runs when the interpreter tears __main__ down, not after os._exit
    def __del__(self):
        (marks / "torn-down").touch()


kept = TornDown()
atexit.register(lambda: (marks / "atexit").touch())
if sys.argv[3] == "thread":  # a non-daemon thread still running: exit would wait for it
    threading.Thread(target=time.sleep, args=(0.5,)).start()
if sys.argv[3] == "profiled":  # as under cProfile, whose report comes after the command
    sys.setprofile(lambda frame, event, arg: None)
sys.stdout.write("unflushed output")  # a pipe: block-buffered, still in the buffer
exit_without_teardown(3)
sys.setprofile(None)  # (with the hook still set, teardown left __main__'s objects alone)
(marks / "returned").touch()
sys.exit(4)
"""


@pytest.mark.parametrize(
    ("imports", "thread", "skipped"),
    [
        ("torch", "none", True),
        ("torch", "thread", False),
        ("torch", "profiled", False),
        ("nothing", "none", False),
    ],
    ids=["torch-loaded", "thread-running", "profiled", "no-torch"],
)
def test_leaving_skips_the_teardown_only_where_nothing_is_lost(tmp_path, imports, thread, skipped):
    """With torch loaded, s2s ends without the interpreter's teardown (0.4-0.6 s), keeping what
    teardown does that matters: atexit callbacks, flushed output, the exit status. A running
    non-daemon thread, a profiler, or no torch leaves the usual exit to happen (the control for
    the teardown detector)."""
    script = tmp_path / "leave.py"
    script.write_text(_LEAVING)
    marks = tmp_path / "marks"
    marks.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(marks), imports, thread], capture_output=True, timeout=120
    )
    assert done.stdout == b"unflushed output"
    assert (marks / "atexit").exists()
    assert done.returncode == (3 if skipped else 4), done.stderr.decode()[-2000:]
    assert (marks / "returned").exists() != skipped
    assert (marks / "torn-down").exists() != skipped


def test_imports_run_without_the_collector_and_what_they_make_is_frozen():
    """A command's heavy imports (PyTorch) run with the cyclic collector paused, and what they
    made is frozen out of later collections; the collector is back on afterwards, even when
    an import fails."""
    import gc

    from s2s_cli.cli._common import imports_without_collection

    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    try:
        with imports_without_collection():
            assert not gc.isenabled()
            made = [[index] for index in range(1000)]  # as an import's objects
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(made)
        with pytest.raises(ImportError), imports_without_collection():
            raise ImportError("no such module")
        assert gc.isenabled()
    finally:
        gc.unfreeze()  # this test process's objects back under the collector
