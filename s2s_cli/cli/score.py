"""``s2s score``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from s2s_cli.cli._common import QuietOpt, VerboseOpt, error, setup_logging, user_errors


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
    hypotheses: Annotated[
        list[Path] | None,
        typer.Option(
            "-i",
            "--input",
            metavar="HYP",
            help="Hypotheses (default: stdin); repeat to score several systems, the first being "
            "the baseline of a paired test.",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            metavar="LIST",
            help="Comma-separated: bleu, chrf, chrf++, ter, bleu_tok_lc "
            "(tokenized-lowercased BLEU, as older papers report).",
        ),
    ] = "bleu,chrf",
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="text|json",
            help="Text lines, or one JSON document (score and signature per metric).",
        ),
    ] = "text",
    score_only: Annotated[
        bool,
        typer.Option(
            "-b",
            "--score-only",
            help="Print the scores alone: one per metric (several systems: a line each, "
            "tab-separated).",
        ),
    ] = False,
    width: Annotated[
        int, typer.Option("-w", "--width", metavar="N", help="Decimals shown.", min=0, max=10)
    ] = 2,
    sentence: Annotated[
        bool,
        typer.Option(
            "--sentence",
            help="Per-sentence scores instead (tab-separated, a header then one line per "
            "hypothesis); the corpus scores go to stderr.",
        ),
    ] = False,
    paired_bs: Annotated[
        bool,
        typer.Option(
            "--paired-bs",
            help="Paired bootstrap resampling of each system against the first: p-values and "
            "95% confidence intervals (sacrebleu).",
        ),
    ] = False,
    paired_ar: Annotated[
        bool,
        typer.Option(
            "--paired-ar",
            help="Paired approximate randomization of each system against the first: p-values "
            "(sacrebleu).",
        ),
    ] = False,
    paired_n: Annotated[
        int,
        typer.Option(
            "--paired-n",
            metavar="N",
            help="Resamples (bootstrap) or trials (randomization); 0: sacrebleu's 1,000 / 10,000.",
            min=0,
        ),
    ] = 0,
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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score hypotheses against references with sacrebleu (signature always printed).

    Example: [bold]s2s translate -c model.pt < test.de | s2s score -r test.en --min-bleu 30[/]

    Compare systems: [bold]s2s score -r ref.en -i base.en -i new.en --paired-bs[/]
    """
    from s2s_cli.errors import ConfigError
    from s2s_cli.scoring import (
        corpus_scores,
        paired_test,
        parse_metrics,
        read_parallel,
        read_systems,
        sentence_scores,
    )

    with user_errors():
        setup_logging(verbose, quiet=quiet)
        if output_format not in ("text", "json"):
            raise ConfigError(f"--format: '{output_format}' is not one of: text, json")
        names = parse_metrics(metrics)
        for gate, metric in ((min_bleu, "bleu"), (min_chrf, "chrf")):
            if gate is not None and metric not in names:
                names.append(metric)
        test = _paired_test_kind(paired_bs, paired_ar, score_only, sentence)
        if hypotheses:
            systems, refs = read_systems(hypotheses, reference)
        else:
            from s2s_cli.io import iter_lines

            stdin_lines = list(iter_lines(sys.stdin.buffer, "<stdin>"))
            hyps, refs = read_parallel(None, reference, stdin_lines)
            systems = [("<stdin>", hyps)]
        if sentence and len(systems) > 1:
            raise ConfigError("--sentence scores one system: give one -i")
        try:
            results = {
                system: corpus_scores(hyps, refs, names, tokenize, lowercase, width)
                for system, hyps in systems
            }
            paired = None
            if test is not None:
                paired = paired_test(systems, refs, names, test, paired_n, tokenize, lowercase)
            rows = None
            if sentence:
                rows = sentence_scores(systems[0][1], refs, names, tokenize, lowercase)
        except (ValueError, KeyError) as err:  # e.g. an unknown sacrebleu tokenizer
            raise ConfigError(f"sacrebleu: {err}") from None
    if paired is not None:
        _print_paired(test, paired, output_format, width)
    else:
        _print(results, rows, output_format, score_only, width, quiet)
    _apply_gates(results, min_bleu, min_chrf)


def _paired_test_kind(bs: bool, ar: bool, score_only: bool, sentence: bool) -> str | None:
    from s2s_cli.errors import ConfigError

    if bs and ar:
        raise ConfigError("--paired-bs and --paired-ar: choose one test")
    test = "bs" if bs else "ar" if ar else None
    if test is not None and (score_only or sentence):
        flag = "--score-only" if score_only else "--sentence"
        raise ConfigError(f"{flag}: not with a paired test (its table has p-values)")
    return test


def _apply_gates(results: dict, min_bleu: float | None, min_chrf: float | None) -> None:
    failed = [
        f"{'' if len(results) == 1 else system + ': '}"
        f"{'BLEU' if metric == 'bleu' else 'chrF'} {scores[metric].score:.2f} is below "
        f"--min-{metric} {gate:g}"
        for system, scores in results.items()
        for gate, metric in ((min_bleu, "bleu"), (min_chrf, "chrf"))
        if gate is not None and scores[metric].score < gate
    ]
    if failed:
        error("; ".join(failed))
        raise typer.Exit(1)


def _print(
    results: dict,
    rows: list | None,
    output_format: str,
    score_only: bool,
    width: int,
    quiet: bool = False,
) -> None:
    single = len(results) == 1
    if output_format == "json":
        per_system = {
            system: {name: r.as_dict() for name, r in scores.items()}
            for system, scores in results.items()
        }
        document = next(iter(per_system.values())) if single else {"systems": per_system}
        if rows is not None:
            document["sentences"] = rows
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    corpus_out = sys.stdout
    if rows is not None:  # one format on stdout: the table; the corpus lines go to stderr
        names = list(next(iter(results.values())))
        print("\t".join(names))
        for row in rows:
            print("\t".join(f"{row[n]:.{width}f}" for n in names))
        corpus_out = sys.stderr
        if quiet:
            return
    for system, scores in results.items():
        if score_only:
            numbers = [f"{r.score:.{width}f}" for r in scores.values()]
            print("\n".join(numbers) if single else "\t".join([system, *numbers]))
            continue
        for r in scores.values():
            label = "BLEU (tokenized, lowercased)" if r.name == "bleu_tok_lc" else None
            text = r.verbose if label is None else r.verbose.replace("BLEU", label, 1)
            prefix = "" if single else f"{system}\t"
            print(f"{prefix}{text} | {r.signature}", file=corpus_out)


def _print_paired(test: str, paired: tuple, output_format: str, width: int) -> None:
    from s2s_cli.scoring import PAIRED_TESTS

    scores, signatures = paired
    baseline = next(iter(scores.values()))[0].system
    if output_format == "json":
        document = {
            "test": test,
            "baseline": baseline,
            "metrics": {
                name: {
                    "signature": signatures[name],
                    "systems": [vars(row) for row in rows],
                }
                for name, rows in scores.items()
            },
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    print(f"# {PAIRED_TESTS[test]} against the baseline {baseline}; * marks p < 0.05")
    wide = max(len(row.system) for rows in scores.values() for row in rows)
    for name, rows in scores.items():
        print(f"{name}: {signatures[name]}")
        for row in rows:
            line = f"  {row.system:<{wide}}  {row.score:.{width}f}"
            if row.mean is not None and row.ci is not None:
                line += f"  (mean {row.mean:.{width}f} ± {row.ci:.{width}f})"
            if row.p_value is not None:
                star = "*" if row.p_value < 0.05 else ""
                line += f"  p = {row.p_value:.4f}{star}"
            print(line)
