"""Corpus and sentence scores through sacrebleu (BLEU, chrF, chrF++, TER), with their signatures,
and sacrebleu's paired significance tests between systems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s_cli.errors import ConfigError, DataError
from s2s_cli.io import read_lines

METRICS = ("bleu", "chrf", "chrf++", "ter", "bleu_tok_lc")
PAIRED_TESTS = {"bs": "paired bootstrap resampling", "ar": "paired approximate randomization"}


@dataclass
class MetricResult:
    name: str
    score: float
    signature: str
    verbose: str

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "signature": self.signature, "verbose": self.verbose}


@dataclass
class PairedScore:
    """One system's score in a paired test: p-value against the baseline (None for it), and the
    bootstrap mean and 95% confidence interval where the test gives them."""

    system: str
    score: float
    p_value: float | None
    mean: float | None
    ci: float | None


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"--metrics: unknown metric(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(METRICS)}"
        )
    return names


def _metric(name: str, tokenize: str | None, lowercase: bool, sentence: bool = False) -> Any:
    """The sacrebleu metric object; ``sentence``: for sentence scores (BLEU then uses effective
    n-gram order, as sacrebleu recommends, instead of warning on every short sentence)."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        return BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=sentence)
    if name == "bleu_tok_lc":
        # The older literature's "tokenized, lowercased BLEU": sacrebleu's 13a tokenization with
        # lowercasing; labelled separately so it is never mistaken for detokenized sacreBLEU.
        return BLEU(tokenize="13a", lowercase=True, effective_order=sentence)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "chrf++":
        return CHRF(word_order=2, lowercase=lowercase)
    return TER(case_sensitive=not lowercase)


def corpus_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("bleu", "chrf"),
    tokenize: str | None = None,
    lowercase: bool = False,
    width: int = 2,
) -> dict[str, MetricResult]:
    """Corpus-level scores; ``references`` is a list of reference streams, each parallel to the
    hypotheses."""
    results = {}
    for name in metrics:
        metric = _metric(name, tokenize, lowercase)
        score = metric.corpus_score(list(hypotheses), [list(r) for r in references])
        verbose = score.format(width=width)
        results[name] = MetricResult(name, float(score.score), str(metric.get_signature()), verbose)
    return results


def sentence_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str],
    tokenize: str | None = None,
    lowercase: bool = False,
) -> list[dict[str, float]]:
    scorers = {name: _metric(name, tokenize, lowercase, sentence=True) for name in metrics}
    rows = []
    for i, hyp in enumerate(hypotheses):
        refs = [r[i] for r in references]
        rows.append({name: float(m.sentence_score(hyp, refs).score) for name, m in scorers.items()})
    return rows


def paired_test(
    systems: Sequence[tuple[str, Sequence[str]]],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str],
    test: str = "bs",
    samples: int = 0,
    tokenize: str | None = None,
    lowercase: bool = False,
) -> tuple[dict[str, list[PairedScore]], dict[str, str]]:
    """sacrebleu's paired test (``bs``: bootstrap resampling, ``ar``: approximate randomization)
    of every system against the first, the baseline. ``samples`` 0 takes sacrebleu's default
    (1,000 resamples, 10,000 trials). Returns, per metric, the systems' scores and the signature."""
    from sacrebleu.significance import PairedTest

    if len(systems) < 2:
        raise ConfigError("a paired test needs two or more systems: repeat -i (first: baseline)")
    if test not in PAIRED_TESTS:
        raise ConfigError(f"paired test '{test}' is not one of: {', '.join(PAIRED_TESTS)}")
    scores: dict[str, list[PairedScore]] = {}
    signatures: dict[str, str] = {}
    for name in metrics:  # one test per metric: bleu and bleu_tok_lc are both "BLEU" to sacrebleu
        run = PairedTest(
            [(system, list(hyps)) for system, hyps in systems],
            {name: _metric(name, tokenize, lowercase)},
            [list(r) for r in references],
            test_type=test,
            n_samples=samples,
            # The bootstrap's CIs come from its own resamples; sacrebleu's extra bootstrap for
            # randomization's CIs would also overwrite the signature's "bs:N" with its 1,000.
            n_ar_confidence=-1,
        )
        signature, columns = run()
        names = [str(n) for n in columns.pop("System")]
        ((label, results),) = columns.items()
        scores[name] = [
            PairedScore(system, float(r.score), _float(r.p_value), _float(r.mean), _float(r.ci))
            for system, r in zip(names, results, strict=True)
        ]
        signatures[name] = str(signature[label])
    return scores, signatures


def _float(value: Any) -> float | None:
    return None if value is None else float(value)  # sacrebleu gives numpy scalars


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


def read_systems(
    hypothesis_paths: Sequence[Path], reference_paths: Sequence[Path]
) -> tuple[list[tuple[str, list[str]]], list[list[str]]]:
    """Several systems' hypotheses (named by their files) and the references, all parallel."""
    systems = []
    references: list[list[str]] = []
    for path in hypothesis_paths:
        hypotheses, references = read_parallel(path, reference_paths)
        systems.append((str(path), hypotheses))
    return systems, references
