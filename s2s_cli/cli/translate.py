"""``s2s translate``."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import (
    DeviceOpt,
    QuietOpt,
    VerboseOpt,
    config_choices,
    config_help,
    imports_without_collection,
    setup_logging,
    stderr,
    user_errors,
)

# what to make smaller when memory runs out
SMALLER = "a smaller --batch-size or --beam"


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
            help=config_help("Beam size; 1 = greedy.", "decode.beam", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    nbest: Annotated[
        int | None,
        typer.Option(
            "--nbest",
            metavar="K",
            help=config_help(
                "Hypotheses per sentence (text: tab-separated on one line).",
                "decode.nbest",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    lenpen: Annotated[
        float | None,
        typer.Option(
            "--lenpen",
            metavar="A",
            help=config_help(
                "Length penalty exponent; 0 = raw log-probability.",
                "decode.lenpen",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    lenpen_style: Annotated[
        str | None,
        typer.Option(
            "--lenpen-style",
            metavar=config_choices("decode.lenpen_style"),
            help=config_help(
                "Divide by len^A, or GNMT's ((5+len)/6)^A.",
                "decode.lenpen_style",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    coverage_penalty: Annotated[
        float | None,
        typer.Option(
            "--coverage-penalty",
            metavar="B",
            help=config_help(
                "GNMT coverage penalty weight.", "decode.coverage_penalty", from_checkpoint=True
            ),
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            metavar="N",
            help=config_help("Sentences per batch.", "decode.batch_size", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            metavar="N",
            help=config_help(
                "Or a budget of source pieces per batch.", "decode.max_tokens", from_checkpoint=True
            ),
            show_default=False,
        ),
    ] = None,
    buffer_size: Annotated[
        int | None,
        typer.Option(
            "--buffer-size",
            metavar="N",
            help=config_help(
                "Lines read, length-sorted and translated together; output flows buffer by "
                "buffer, and a pipe's input is translated as soon as it stalls. On a terminal: 1.",
                "decode.buffer_size",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    max_source_len: Annotated[
        int | None,
        typer.Option(
            "--max-source-len",
            metavar="N",
            help=config_help(
                "Truncate longer inputs (pieces), with a warning.",
                "decode.max_source_len",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    max_len_a: Annotated[
        float | None,
        typer.Option(
            "--max-len-a",
            metavar="A",
            help=config_help(
                "Output at most A * source length + B pieces.",
                "decode.max_len_a",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    max_len_b: Annotated[
        int | None,
        typer.Option(
            "--max-len-b",
            metavar="B",
            help=config_help("See --max-len-a.", "decode.max_len_b", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    min_len: Annotated[
        int | None,
        typer.Option(
            "--min-len",
            metavar="N",
            help=config_help("No EOS before N pieces.", "decode.min_len", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    no_repeat_ngram: Annotated[
        int | None,
        typer.Option(
            "--no-repeat-ngram",
            metavar="N",
            help=config_help(
                "Never repeat an n-gram of this size (0: off).",
                "decode.no_repeat_ngram",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    sampling: Annotated[
        bool | None,
        typer.Option(
            "--sampling/--no-sampling",
            help=config_help(
                "Sample instead of searching (--nbest samples per sentence).",
                "decode.sampling",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            metavar="T",
            help=config_help("Sampling temperature.", "decode.temperature", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    topk: Annotated[
        int | None,
        typer.Option(
            "--topk",
            metavar="K",
            help=config_help(
                "Sample among the K most likely pieces.", "decode.topk", from_checkpoint=True
            ),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            metavar="N",
            help=config_help("Sampling seed.", "decode.seed", from_checkpoint=True),
            show_default=False,
        ),
    ] = None,
    replace_unk: Annotated[
        bool | None,
        typer.Option(
            "--replace-unk/--no-replace-unk",
            help=config_help(
                "Replace <unk> with the most-attended source piece.",
                "decode.replace_unk",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
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
    score_reference: Annotated[
        Path | None,
        typer.Option(
            "--score-reference",
            "-r",
            metavar="REF",
            help="Instead of translating, score REF (one reference per source line) with "
            "teacher forcing: per line its log-probability and piece count (EOS included), and "
            "the corpus perplexity on stderr.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            metavar=config_choices("decode.precision"),
            help=config_help(
                "Arithmetic precision (autocast); int8: an int8 decoder (CPU).",
                "decode.precision",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    shortlist: Annotated[
        str | None,
        typer.Option(
            "--shortlist",
            metavar="FILE",
            help=config_help(
                "Score only the pieces of this lexical shortlist (s2s shortlist).",
                "decode.shortlist",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help=config_help(
                "On CUDA, replay each beam-search step as one recorded CUDA graph.",
                "decode.cuda_graphs",
                from_checkpoint=True,
            ),
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Translate raw text: one detokenized line out per line in, in order (stdin -> stdout).

    Example: [bold]cat in.txt | s2s translate -c model.pt --beam 5 | s2s score -r ref.txt[/]
    """
    with imports_without_collection():  # PyTorch and the decoding modules over it
        from s2s_cli.config import DecodeConfig
        from s2s_cli.decoding.streaming import StreamOptions, translate_stream

    if output_file is None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends us quietly, like any filter
    given = locals()
    overrides = {f.name: given[f.name] for f in dataclasses.fields(DecodeConfig)}  # every key
    with user_errors(SMALLER):
        setup_logging(verbose, quiet=quiet)
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
            reference=score_reference,
            progress=stderr.is_terminal
            and not quiet
            and not (input_file is None and sys.stdin.isatty()),
        )
        translate_stream(options, console=stderr)
