"""Corpus and sentence scores through sacrebleu (BLEU, chrF, TER), with their signatures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s_cli.errors import ConfigError, DataError
from s2s_cli.io import read_lines

METRICS = ("bleu", "chrf", "ter", "bleu_tok_lc")


@dataclass
class MetricResult:
    name: str
    score: float
    signature: str
    verbose: str

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "signature": self.signature, "verbose": self.verbose}


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"--metrics: unknown metric(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(METRICS)}"
        )
    return names


def _metric(name: str, tokenize: str | None, lowercase: bool) -> Any:
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        return BLEU(tokenize=tokenize, lowercase=lowercase)
    if name == "bleu_tok_lc":
        # The older literature's "tokenized, lowercased BLEU": sacrebleu's 13a tokenization with
        # lowercasing; labelled separately so it is never mistaken for detokenized sacreBLEU.
        return BLEU(tokenize="13a", lowercase=True)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    return TER(case_sensitive=not lowercase)


def corpus_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("bleu", "chrf"),
    tokenize: str | None = None,
    lowercase: bool = False,
) -> dict[str, MetricResult]:
    """Corpus-level scores; ``references`` is a list of reference streams, each parallel to the
    hypotheses."""
    results = {}
    for name in metrics:
        metric = _metric(name, tokenize, lowercase)
        score = metric.corpus_score(list(hypotheses), [list(r) for r in references])
        results[name] = MetricResult(
            name, float(score.score), str(metric.get_signature()), str(score)
        )
    return results


def sentence_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str],
    tokenize: str | None = None,
    lowercase: bool = False,
) -> list[dict[str, float]]:
    scorers = {name: _metric(name, tokenize, lowercase) for name in metrics}
    rows = []
    for i, hyp in enumerate(hypotheses):
        refs = [r[i] for r in references]
        rows.append({name: float(m.sentence_score(hyp, refs).score) for name, m in scorers.items()})
    return rows


def read_parallel(
    hypothesis_path: Path | None,
    reference_paths: Sequence[Path],
    stdin_lines: list[str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Hypotheses (file or given stdin lines) and references, checked for equal line counts."""
    hypotheses = (
        list(read_lines(hypothesis_path)) if hypothesis_path is not None else (stdin_lines or [])
    )
    name = str(hypothesis_path) if hypothesis_path is not None else "<stdin>"
    if not hypotheses:
        raise DataError(f"{name}: no hypotheses (empty input)")
    references = []
    for path in reference_paths:
        refs = list(read_lines(path))
        if len(refs) != len(hypotheses):
            raise DataError(
                f"{path} has {len(refs)} lines but {name} has {len(hypotheses)}; "
                "hypotheses and references must be line-parallel"
            )
        references.append(refs)
    return hypotheses, references
