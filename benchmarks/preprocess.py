#!/usr/bin/env python3
"""Wall time and peak RSS of `s2s preprocess` on Multi30k en-de, and on a 10x replicated corpus.

Multi30k train + valid + test2016, joint BPE 8000, --workers 2, the whole command (start-up
included), each run in its own process. The 10x corpus repeats the training files ten times.

    python benchmarks/preprocess.py [--multi30k DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir_argument, machine, run_measured


def replicate(multi30k: Path, out: Path, times: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        data = gzip.decompress((multi30k / f"train.{lang}.gz").read_bytes())
        with open(out / f"train.{lang}", "wb") as f:
            for _ in range(times):
                f.write(data)
    return out / "train"


def preprocess(train: Path, multi30k: Path, dest: Path) -> tuple[float, float]:
    args = [
        "preprocess",
        "--src-lang",
        "en",
        "--tgt-lang",
        "de",
        "--train",
        str(train),
        "--valid",
        str(multi30k / "val"),
        "--test",
        str(multi30k / "test_2016_flickr"),
        "--vocab-size",
        "8000",
        "--joint",
        "--workers",
        "2",
        "--dest",
        str(dest),
        "--force",
    ]
    return run_measured(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-pre-") as tmp:
        tmp_path = Path(tmp)
        corpora = {
            "Multi30k (1x)": args.multi30k / "train",
            "Multi30k train x10": replicate(args.multi30k, tmp_path / "x10", 10),
        }
        results = {}
        for name, train in corpora.items():
            runs = [preprocess(train, args.multi30k, tmp_path / "out") for _ in range(args.repeats)]
            results[name] = (min(r[0] for r in runs), max(r[1] for r in runs))
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
    base_rss = results["Multi30k (1x)"][1]
    print(
        f"| corpus | wall time (best of {args.repeats}) | vs fairseq route (13 s) | peak RSS | RSS vs 1x |"
    )
    print("|---|---|---|---|---|")
    for name, (wall, rss) in results.items():
        print(
            f"| {name} | {wall:.2f} s | {13.0 / wall:.1f}x faster | {rss:.0f} MB | {rss / base_rss:.2f}x |"
        )


if __name__ == "__main__":
    main()
