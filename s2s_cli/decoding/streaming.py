"""Translate a stream of lines buffer by buffer: what ``s2s translate`` runs.

Output flows as each buffer finishes, one line per input line, in input order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from s2s_cli.config import DecodeConfig, build_section
from s2s_cli.decoding.alignment import format_alignment
from s2s_cli.decoding.forced import ReferenceScore, corpus_perplexity
from s2s_cli.decoding.plot import write_attention_plot
from s2s_cli.decoding.translator import Translation, Translator
from s2s_cli.errors import ConfigError, DataError
from s2s_cli.io import (
    atomic_path,
    check_writable_dir,
    is_stream,
    iter_lines,
    iter_lines_or_stalls,
    open_binary,
    remove_stale_temporaries,
)

log = logging.getLogger(__name__)
FORMATS = ("text", "jsonl")
# A pipe that brings no complete line for this long has stalled: translate what has arrived.
# Long enough that a producer writing steadily is never split into small batches.
STALL_SECONDS = 0.1


@dataclass
class StreamOptions:
    checkpoints: list[Path]
    input_file: Path | None = None
    output_file: Path | None = None
    output_format: str = "text"
    print_alignment: bool = False
    attention_plot: Path | None = None
    device: str = "auto"
    decode_overrides: dict[str, Any] = field(default_factory=dict)
    interactive: bool = False
    progress: bool = False
    reference: Path | None = None  # score this file's lines instead of translating


def translate_stream(options: StreamOptions, console: Any = None) -> int:
    """Translate ``options.input_file`` (or stdin) to the output; returns the number of lines."""
    if options.output_format not in FORMATS:
        raise ConfigError(
            f"--format: '{options.output_format}' is not one of: {', '.join(FORMATS)}"
        )
    if options.output_file is not None:
        check_writable_dir(options.output_file.parent, "output directory")
    translator = Translator.from_checkpoint(options.checkpoints, device=options.device)
    _check_attention(translator, options)
    if options.attention_plot is not None:
        check_writable_dir(options.attention_plot, "attention plot directory")
    cfg = _decode_config(translator.config.decode, options)
    if options.reference is not None:
        return _score_reference_stream(translator, cfg, options, console)
    keep_attention = options.print_alignment or options.attention_plot is not None
    generator = (
        torch.Generator(device=translator.device).manual_seed(cfg.seed) if cfg.sampling else None
    )
    count = 0
    started = time.perf_counter()
    total = _count_lines(options.input_file) if options.progress else None
    with (
        _input_lines(options.input_file) as lines,
        _output(options.output_file) as out,
        _progress(options.progress, console, total) as advance,
    ):
        for buffer in _buffers(lines, cfg.buffer_size):
            results = translator.translate_hypotheses(
                buffer, keep_attention=keep_attention, generator=generator, **asdict(cfg)
            )
            for result in results:
                _report_truncation(result, count, cfg.max_source_len)
                out.write(_format(result, count, options) + "\n")
                if options.attention_plot is not None:
                    _plot(options.attention_plot, count, result)
                count += 1
            out.flush()
            advance(len(buffer))
    seconds = time.perf_counter() - started
    log.info(
        "translated %d sentence%s in %.1f s (%.1f sentences/s)",
        count,
        "" if count == 1 else "s",
        seconds,
        count / max(seconds, 1e-9),
    )
    return count


def _count_lines(path: Path | None) -> int | None:
    """Lines in a regular input file, for a progress bar with a total (None for a stream)."""
    if path is None or not path.is_file():
        return None
    with open_binary(path) as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))


def _score_reference_stream(
    translator: Translator, cfg: DecodeConfig, options: StreamOptions, console: Any
) -> int:
    """``--score-reference``: each reference line's log-probability given its source line."""
    assert options.reference is not None
    scores: list[ReferenceScore | None] = []
    with (
        _input_lines(options.input_file) as lines,
        _input_lines(options.reference) as references,
        _output(options.output_file) as out,
        _progress(options.progress, console) as advance,
    ):
        sources_name = options.input_file or "<stdin>"
        pending = (line for line in references if line is not None)
        for buffer in _buffers(lines, cfg.buffer_size):
            refs = list(itertools.islice(pending, len(buffer)))
            if len(refs) < len(buffer):
                raise DataError(
                    f"{options.reference} has {len(scores) + len(refs)} lines but "
                    f"{sources_name} has more; sources and references must be line-parallel"
                )
            results = translator.score_references(buffer, refs, **asdict(cfg))
            for source, reference, result in zip(buffer, refs, results, strict=True):
                if result is None:
                    log.warning(
                        "line %d: empty source; its reference is not scored", len(scores) + 1
                    )
                out.write(_format_reference(len(scores), source, reference, result, options) + "\n")
                scores.append(result)
            out.flush()
            advance(len(buffer))
        if next(pending, None) is not None:
            raise DataError(
                f"{options.reference} has more lines than {sources_name} ({len(scores)}); "
                "sources and references must be line-parallel"
            )
    total, pieces, perplexity = corpus_perplexity(scores)
    log.info(
        "reference log-probability %.4f over %d pieces (EOS included): perplexity %.4f",
        total,
        pieces,
        perplexity,
    )
    return len(scores)


def _format_reference(
    index: int,
    source: str,
    reference: str,
    result: ReferenceScore | None,
    options: StreamOptions,
) -> str:
    if options.output_format == "jsonl":
        return json.dumps(
            {
                "id": index + 1,
                "source": source,
                "reference": reference,
                "logprob": None if result is None else result.logprob,
                "pieces": None if result is None else result.pieces,
                "positional_scores": None if result is None else result.positional_scores,
            },
            ensure_ascii=False,
        )
    if result is None:
        return "\t"
    return f"{result.logprob:.4f}\t{result.pieces}"


def _decode_config(base: DecodeConfig, options: StreamOptions) -> DecodeConfig:
    overrides = dict(options.decode_overrides)
    if "buffer_size" not in overrides and options.interactive:
        overrides["buffer_size"] = 1  # a person typing expects each line answered at once
    return build_section(DecodeConfig, {**asdict(base), **overrides}, "decode.")


def _check_attention(translator: Translator, options: StreamOptions) -> None:
    """Alignments and heatmaps come from attention: refuse them for a model that has none,
    rather than print empty fields and write no plots."""
    wanted = [
        flag
        for flag, asked in (
            ("--print-alignment", options.print_alignment),
            ("--attention-plot", options.attention_plot is not None),
        )
        if asked
    ]
    if wanted and translator.config.model.attention == "none":
        raise ConfigError(
            f"{wanted[0]}: {options.checkpoints[0]} has no attention (model.attention: none), "
            "which alignments and attention plots are made from"
        )


@contextlib.contextmanager
def _input_lines(path: Path | None) -> Iterator[Iterator[str | None]]:
    """Input lines; from a pipe or terminal also None when the producer stalls (see _buffers)."""
    with contextlib.ExitStack() as stack:
        stream = sys.stdin.buffer if path is None else stack.enter_context(open_binary(path))
        name = "<stdin>" if path is None else path
        if is_stream(stream):
            yield iter_lines_or_stalls(stream, name, STALL_SECONDS)
        else:
            yield iter_lines(stream, name)


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    remove_stale_temporaries(path.parent, re.escape(path.name))  # a killed earlier run's
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


@contextlib.contextmanager
def _progress(enabled: bool, console: Any, total: int | None = None) -> Iterator[Any]:
    """A progress bar on a terminal: with the input file's line count, its share, rate and ETA."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [SpinnerColumn()]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TextColumn("sentences")]
    else:
        columns += [TextColumn("{task.completed} sentences")]
    columns += [_rate_column(), TimeElapsedColumn()]
    if total is not None:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("translate", total=total)
        yield lambda n: progress.advance(task, n)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.0f} sentences/s" if speed else "")

    return RateColumn()


def _buffers(lines: Iterator[str | None], size: int) -> Iterator[list[str]]:
    """Full buffers of ``size`` lines, or what has arrived when the input stalls (None)."""
    buffer: list[str] = []
    for line in lines:
        if line is not None:
            buffer.append(line)
        if buffer and (line is None or len(buffer) == size):
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def _report_truncation(result: Translation, index: int, limit: int) -> None:
    if result.truncated:
        log.warning("line %d: longer than --max-source-len %d pieces; truncated", index + 1, limit)


def _format(result: Translation, index: int, options: StreamOptions) -> str:
    if options.output_format == "jsonl":
        hypotheses = []
        for hyp in result.hypotheses:
            entry: dict[str, Any] = {"text": hyp.text, "score": hyp.score, "pieces": hyp.pieces}
            if options.print_alignment:
                entry["alignment"] = format_alignment(hyp.alignment or [])
            hypotheses.append(entry)
        return json.dumps(
            # ids are line numbers (from 1), as in warnings and attention plot file names
            {"id": index + 1, "source": result.source, "hypotheses": hypotheses},
            ensure_ascii=False,
        )
    fields = []
    for hyp in result.hypotheses:
        fields.append(hyp.text)
        if options.print_alignment:
            fields.append(format_alignment(hyp.alignment or []))
    return "\t".join(fields)


def _plot(directory: Path, index: int, result: Translation) -> None:
    best = result.hypotheses[0]
    if best.attention is None:
        return
    write_attention_plot(
        directory,
        index,
        best.attention,
        [*result.source_pieces, "</s>"],
        [*best.pieces, "</s>"],
        score=best.score,
        piece_scores=best.positional_scores,
    )
