#!/usr/bin/env python3
"""Summary of several runs and their ensembles: per test set, each run's score, mean ± standard
deviation (sample, n-1), and the ensembles of the first 2, 3, ... runs (standard library only).

Usage: seeds.py OUT_DIR PAIR TEST... -- RUN_DIR...   (what ensemble.sh calls)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = (("bleu", "BLEU"), ("bleu_tok_lc", "BLEU (tok, lc)"), ("chrf", "chrF"))


def score(path: Path, metric: str) -> float:
    return json.loads(path.read_text())[metric]["score"]


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    out, pair, tests = Path(args[0]), args[1], args[2:split]
    runs = [Path(r) for r in args[split + 1 :]]
    src, tgt = pair.split("-")
    print(
        f"{src}→{tgt}: {len(runs)} runs ({', '.join(r.name for r in runs)} in "
        + ", ".join(str(r.parent) for r in runs)
        + "), beam 5\n"
    )
    header = ["test set", "metric", *[f"run {i + 1}" for i in range(len(runs))], "mean ± sd"]
    header += [f"ensemble of {k}" for k in range(2, len(runs) + 1)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for test in tests:
        for metric, label in METRICS:
            singles = [score(r / f"{test}.score.json", metric) for r in runs]
            ensembles = [
                score(out / f"{test}.ensemble{k}.score.json", metric)
                for k in range(2, len(runs) + 1)
            ]
            row = [test, label, *(f"{s:.2f}" for s in singles)]
            row.append(f"{statistics.mean(singles):.2f} ± {statistics.stdev(singles):.2f}")
            row += [f"{e:.2f}" for e in ensembles]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
