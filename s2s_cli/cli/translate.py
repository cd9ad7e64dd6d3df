"""``s2s translate``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import DeviceOpt, setup_logging, stderr, user_errors


def translate(
    checkpoint: Annotated[
        list[Path],
        typer.Option(
            "-c",
            "--checkpoint",
            metavar="CKPT",
            help="Checkpoint file; repeat for an ensemble (averaged log-probabilities).",
        ),
    ],
    input_file: Annotated[
        Path | None,
        typer.Option(
            "-i",
            "--input",
            metavar="FILE",
            help="Raw text, one sentence per line (.gz read too). Default: stdin.",
            show_default=False,
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Where translations go (written atomically). Default: stdout.",
            show_default=False,
        ),
    ] = None,
    beam: Annotated[
        int | None,
        typer.Option(
            "--beam",
            metavar="N",
            help="Beam size; 1 = greedy [decode.beam: 5].",
            show_default=False,
        ),
    ] = None,
    nbest: Annotated[
        int | None,
        typer.Option(
            "--nbest",
            metavar="K",
            help="Hypotheses per sentence (text: tab-separated on one line) [1].",
            show_default=False,
        ),
    ] = None,
    lenpen: Annotated[
        float | None,
        typer.Option(
            "--lenpen",
            metavar="A",
            help="Length penalty exponent; 0 = raw log-probability [1.0].",
            show_default=False,
        ),
    ] = None,
    lenpen_style: Annotated[
        str | None,
        typer.Option(
            "--lenpen-style",
            metavar="average|gnmt",
            help="Divide by len^A, or GNMT's ((5+len)/6)^A [average].",
            show_default=False,
        ),
    ] = None,
    coverage_penalty: Annotated[
        float | None,
        typer.Option(
            "--coverage-penalty",
            metavar="B",
            help="GNMT coverage penalty weight [0].",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", metavar="N", help="Sentences per batch [64].", show_default=False
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            metavar="N",
            help="Or a budget of source pieces per batch.",
            show_default=False,
        ),
    ] = None,
    buffer_size: Annotated[
        int | None,
        typer.Option(
            "--buffer-size",
            metavar="N",
            help="Lines read, length-sorted and translated together; output flows "
            "buffer by buffer [1000; 1 on a terminal].",
            show_default=False,
        ),
    ] = None,
    max_source_len: Annotated[
        int | None,
        typer.Option(
            "--max-source-len",
            metavar="N",
            help="Truncate longer inputs (pieces), with a warning [250].",
            show_default=False,
        ),
    ] = None,
    max_len_a: Annotated[
        float | None,
        typer.Option(
            "--max-len-a",
            metavar="A",
            help="Output at most A * source length + B pieces [2.0].",
            show_default=False,
        ),
    ] = None,
    max_len_b: Annotated[
        int | None,
        typer.Option("--max-len-b", metavar="B", help="See --max-len-a [20].", show_default=False),
    ] = None,
    min_len: Annotated[
        int | None,
        typer.Option(
            "--min-len", metavar="N", help="No EOS before N pieces [1].", show_default=False
        ),
    ] = None,
    no_repeat_ngram: Annotated[
        int | None,
        typer.Option(
            "--no-repeat-ngram",
            metavar="N",
            help="Never repeat an n-gram of this size [0: off].",
            show_default=False,
        ),
    ] = None,
    sampling: Annotated[
        bool,
        typer.Option(
            "--sampling", help="Sample instead of searching (--nbest samples per sentence)."
        ),
    ] = False,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature", metavar="T", help="Sampling temperature [1.0].", show_default=False
        ),
    ] = None,
    topk: Annotated[
        int | None,
        typer.Option(
            "--topk", metavar="K", help="Sample among the K most likely pieces.", show_default=False
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", metavar="N", help="Sampling seed [1].", show_default=False),
    ] = None,
    replace_unk: Annotated[
        bool,
        typer.Option("--replace-unk", help="Replace <unk> with the most-attended source piece."),
    ] = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="text|jsonl",
            help="Plain text, or one JSON object per line "
            "(id, source, n-best with scores, alignment).",
        ),
    ] = "text",
    print_alignment: Annotated[
        bool,
        typer.Option(
            "--print-alignment",
            help="Add hard alignments (source-target piece index pairs) from attention.",
        ),
    ] = False,
    attention_plot: Annotated[
        Path | None,
        typer.Option(
            "--attention-plot",
            metavar="DIR",
            help="Write one SVG attention heatmap per sentence into DIR.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            metavar="fp32|bf16|fp16",
            help="Arithmetic precision (autocast) [fp32].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Translate raw text: one detokenized line out per line in, in order (stdin -> stdout).

    Example: [bold]cat in.txt | s2s translate -c model.pt --beam 5 | s2s score -r ref.txt[/]
    """
    from s2s_cli.decoding.streaming import StreamOptions, translate_stream

    if output_file is None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends us quietly, like any filter
    setup_logging()
    overrides = {
        "beam": beam,
        "nbest": nbest,
        "lenpen": lenpen,
        "lenpen_style": lenpen_style,
        "coverage_penalty": coverage_penalty,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "buffer_size": buffer_size,
        "max_source_len": max_source_len,
        "max_len_a": max_len_a,
        "max_len_b": max_len_b,
        "min_len": min_len,
        "no_repeat_ngram": no_repeat_ngram,
        "sampling": sampling or None,
        "temperature": temperature,
        "topk": topk,
        "seed": seed,
        "replace_unk": replace_unk or None,
        "precision": precision,
    }
    with user_errors():
        options = StreamOptions(
            checkpoints=checkpoint,
            input_file=input_file,
            output_file=output_file,
            output_format=output_format,
            print_alignment=print_alignment,
            attention_plot=attention_plot,
            device=device,
            decode_overrides={k: v for k, v in overrides.items() if v is not None},
            interactive=input_file is None and sys.stdin.isatty(),
            progress=stderr.is_terminal and not (input_file is None and sys.stdin.isatty()),
        )
        translate_stream(options, console=stderr)
