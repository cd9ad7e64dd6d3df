#!/usr/bin/env python3
"""Whole-command `s2s translate` of two source trees, alternating, in one run (an A/B of a change).

Each round runs every (search, precision) setting once with the base tree's s2s and once with the
new tree's, alternating, each a separate ``python -m s2s_cli translate`` process on Multi30k
test2016 (1,000 sentences, batches of 64, OpenNMT-py's length limit 1.25 x source + 5, as
``make bench-peers`` translates), so machine drift hits both sides alike. Reports the median
seconds per setting, the ratio base/new, BLEU of each (sacreBLEU against the reference) and how
many lines differ between the two outputs. With ``--shortlist FILE`` (``s2s shortlist``) every
command translates with that lexical shortlist.

    git worktree add /tmp/base HEAD
    python benchmarks/translate_ab.py --base /tmp/base --new . --checkpoint CKPT [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, data_dir_argument, machine, s2s_translate_command

SETTINGS = [
    ("beam 5", 5, "fp32"),
    ("beam 5", 5, "bf16"),
    ("greedy", 1, "fp32"),
    ("greedy", 1, "bf16"),
]


def translate(
    tree: Path,
    checkpoint: Path,
    source: Path,
    beam: int,
    precision: str,
    out: Path,
    shortlist: Path | None,
) -> float:
    command = s2s_translate_command(checkpoint, source, out, beam, precision, shortlist)
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=tree)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="source tree of the base s2s")
    parser.add_argument("--new", type=Path, required=True, help="source tree of the changed s2s")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shortlist", type=Path, help="translate with this lexical shortlist")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/translate_ab"))
    data_dir_argument(parser)
    args = parser.parse_args()
    import sacrebleu

    source = args.multi30k / "test_2016_flickr.en.gz"
    with gzip.open(args.multi30k / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        reference = f.read().splitlines()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint.resolve()
    shortlist = args.shortlist.resolve() if args.shortlist else None
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, beam, precision in SETTINGS:
            for side, tree in (("base", args.base), ("new", args.new)):
                out = (args.out / f"{side}.beam{beam}.{precision}.txt").resolve()
                seconds = translate(
                    tree, checkpoint, source.resolve(), beam, precision, out, shortlist
                )
                times.setdefault((name, precision, side), []).append(seconds)
    print(f"# CPU: {cpu_model()} ({machine()})")
    listed = f", shortlist {args.shortlist}" if args.shortlist else ""
    print(
        f"# translate_ab: base {args.base}, new {args.new}, {args.rounds} alternating rounds"
        f"{listed}"
    )
    print(
        "| search | precision | base s (median) | new s (median) | base/new | BLEU base | BLEU new | lines differing |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, beam, precision in SETTINGS:
        base = statistics.median(times[(name, precision, "base")])
        new = statistics.median(times[(name, precision, "new")])
        outputs = {
            side: (args.out / f"{side}.beam{beam}.{precision}.txt")
            .read_text(encoding="utf-8")
            .splitlines()
            for side in ("base", "new")
        }
        scores = {s: sacrebleu.corpus_bleu(o, [reference]).score for s, o in outputs.items()}
        differing = sum(a != b for a, b in zip(outputs["base"], outputs["new"], strict=True))
        print(
            f"| {name} | {precision} | {base:.2f} | {new:.2f} | {base / new:.2f}x | "
            f"{scores['base']:.2f} | {scores['new']:.2f} | {differing} |"
        )


if __name__ == "__main__":
    main()
