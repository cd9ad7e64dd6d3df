#!/usr/bin/env python3
"""`s2s translate` behind a pipe: throughput against a file, and a slow producer's latency.

Translates the same lines as a file (`-i FILE -o OUT`) and through a pipe (`cat FILE | s2s
translate > OUT`), alternating A/B/A/B in one run, and checks the outputs are identical: a fast
producer never stalls, so the pipe still decodes in full buffers. Then feeds one line, waits for
its translation before writing the next, and reports how long each took to come back.

    python benchmarks/translate_pipe.py --checkpoint CKPT --input FILE [--repeat N] [--rounds R]
"""

from __future__ import annotations

import argparse
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, s2s_command


def translate_command(checkpoint: Path, beam: int, *args: str) -> list[str]:
    return [*s2s_command(), "translate", "-c", str(checkpoint), "--beam", str(beam), *args]


def file_run(checkpoint: Path, source: Path, out: Path, beam: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        translate_command(checkpoint, beam, "-i", str(source), "-o", str(out), "--device", "cpu"),
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def pipe_run(checkpoint: Path, source: Path, out: Path, beam: int) -> float:
    start = time.perf_counter()
    with open(out, "wb") as sink:
        cat = subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE)
        subprocess.run(
            translate_command(checkpoint, beam, "--device", "cpu"),
            stdin=cat.stdout,
            stdout=sink,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        cat.stdout.close()
        cat.wait()
    return time.perf_counter() - start


def slow_producer(checkpoint: Path, lines: list[str], beam: int) -> list[float]:
    """Seconds from writing each line to reading its translation (the next line waits)."""
    proc = subprocess.Popen(
        translate_command(checkpoint, beam, "--device", "cpu"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    latencies = []
    try:
        for line in lines:
            start = time.perf_counter()
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            if not select.select([proc.stdout], [], [], 300)[0]:
                raise SystemExit("no translation came back within 300 s: not streaming")
            proc.stdout.readline()
            latencies.append(time.perf_counter() - start)
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="source text, one per line")
    parser.add_argument("--repeat", type=int, default=1, help="concatenate the input N times")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()
    lines = args.input.read_text(encoding="utf-8").splitlines() * args.repeat
    print(f"# machine: {machine()}")
    print(f"# {len(lines)} lines, beam {args.beam}, {args.rounds} rounds alternating file/pipe")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-pipe-") as tmp:
        source = Path(tmp) / "source.txt"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        times: dict[str, list[float]] = {"file": [], "pipe": []}
        for _ in range(args.rounds):
            times["file"].append(file_run(args.checkpoint, source, Path(tmp) / "f.out", args.beam))
            times["pipe"].append(pipe_run(args.checkpoint, source, Path(tmp) / "p.out", args.beam))
        same = (Path(tmp) / "f.out").read_bytes() == (Path(tmp) / "p.out").read_bytes()
    file_s, pipe_s = statistics.median(times["file"]), statistics.median(times["pipe"])
    print("| input | seconds (median, whole command) | sentences/s |")
    print("|---|---|---|")
    for name, seconds in (("-i FILE", file_s), ("cat FILE, a pipe", pipe_s)):
        print(f"| {name} | {seconds:.2f} | {len(lines) / seconds:.0f} |")
    print(f"pipe / file time: {pipe_s / file_s:.3f}; outputs {'identical' if same else 'DIFFER'}")
    latencies = slow_producer(args.checkpoint, lines[:5], args.beam)
    print(
        "slow producer, seconds from writing a line to its translation (the next line waits): "
        + ", ".join(f"{s:.2f}" for s in latencies)
        + " (the first includes start-up and model load)"
    )


if __name__ == "__main__":
    main()
