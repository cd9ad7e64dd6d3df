"""``s2s score``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import error, user_errors


def score(
    reference: Annotated[
        list[Path],
        typer.Option(
            "-r",
            "--reference",
            metavar="REF",
            help="Reference file; repeat for several references.",
        ),
    ],
    hypothesis: Annotated[
        Path | None,
        typer.Option(
            "-i", "--input", metavar="HYP", help="Hypotheses (default: stdin).", show_default=False
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            metavar="LIST",
            help="Comma-separated: bleu, chrf, ter, bleu_tok_lc "
            "(tokenized-lowercased BLEU, as older papers report).",
        ),
    ] = "bleu,chrf",
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="text|json",
            help="Text lines, or one JSON object with score and signature per metric.",
        ),
    ] = "text",
    sentence: Annotated[
        bool,
        typer.Option(
            "--sentence",
            help="Also print per-sentence scores (tab-separated, one line per hypothesis).",
        ),
    ] = False,
    min_bleu: Annotated[
        float | None,
        typer.Option(
            "--min-bleu", metavar="X", help="Exit 1 if BLEU < X (a CI gate).", show_default=False
        ),
    ] = None,
    min_chrf: Annotated[
        float | None,
        typer.Option("--min-chrf", metavar="X", help="Exit 1 if chrF < X.", show_default=False),
    ] = None,
    tokenize: Annotated[
        str | None,
        typer.Option(
            "--tokenize",
            "-tok",
            metavar="NAME",
            help="sacrebleu BLEU tokenizer (13a, intl, zh, char, none, ...) [13a].",
            show_default=False,
        ),
    ] = None,
    lowercase: Annotated[
        bool, typer.Option("--lowercase", "-lc", help="Case-insensitive scores (sacrebleu -lc).")
    ] = False,
) -> None:
    """Score hypotheses against references with sacrebleu (signature always printed).

    Example: [bold]s2s translate -c model.pt < test.de | s2s score -r test.en --min-bleu 30[/]
    """
    from s2s_cli.errors import ConfigError
    from s2s_cli.scoring import corpus_scores, parse_metrics, read_parallel, sentence_scores

    with user_errors():
        if output_format not in ("text", "json"):
            raise ConfigError(f"--format: '{output_format}' is not one of: text, json")
        names = parse_metrics(metrics)
        for gate, metric in ((min_bleu, "bleu"), (min_chrf, "chrf")):
            if gate is not None and metric not in names:
                names.append(metric)
        stdin_lines = None
        if hypothesis is None:
            from s2s_cli.io import iter_lines

            stdin_lines = list(iter_lines(sys.stdin.buffer, "<stdin>"))
        hyps, refs = read_parallel(hypothesis, reference, stdin_lines)
        try:
            results = corpus_scores(hyps, refs, names, tokenize, lowercase)
        except (ValueError, KeyError) as err:  # e.g. an unknown sacrebleu tokenizer
            raise ConfigError(f"sacrebleu: {err}") from None
        rows = sentence_scores(hyps, refs, names, tokenize, lowercase) if sentence else None
    _print(results, rows, output_format)
    failed = [
        f"{metric.upper() if metric == 'bleu' else 'chrF'} {results[metric].score:.2f} is below "
        f"--min-{metric} {gate:g}"
        for gate, metric in ((min_bleu, "bleu"), (min_chrf, "chrf"))
        if gate is not None and results[metric].score < gate
    ]
    if failed:
        error("; ".join(failed))
        raise typer.Exit(1)


def _print(results: dict, rows: list | None, output_format: str) -> None:
    if output_format == "json":
        document = {name: r.as_dict() for name, r in results.items()}
        if rows is not None:
            document["sentences"] = rows
        print(json.dumps(document, indent=2))
        return
    if rows is not None:
        names = list(results)
        print("\t".join(names))
        for row in rows:
            print("\t".join(f"{row[n]:.2f}" for n in names))
    for r in results.values():
        label = "BLEU (tokenized, lowercased)" if r.name == "bleu_tok_lc" else None
        text = r.verbose if label is None else r.verbose.replace("BLEU", label, 1)
        print(f"{text} | {r.signature}")
