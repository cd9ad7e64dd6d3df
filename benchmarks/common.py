"""Shared pieces of the benchmark scripts: data location, the benchmark dataset, GEMM ceilings."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

# The benchmark model of the issues ("bench-lstm"): embeddings 256, 1-layer bi-LSTM encoder with
# 256 units per direction, 1-layer LSTM decoder 512, Luong "general" attention, dropout 0.2,
# every parameter initialised U(-0.1, 0.1) as in the peers (only the learning, not the speed,
# depends on it).
BENCH_MODEL = [
    "model.embed_dim=256",
    "model.hidden_size=512",
    "model.encoder_hidden_size=512",
    "model.bidirectional=true",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.attention=general",
    "model.attention_placement=luong",
    "model.dropout=0.2",
    "model.bridge=last",
    "model.weight_init=uniform",  # U(-0.1, 0.1), as fairseq's and OpenNMT-py's LSTM models start
]


def data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--multi30k",
        type=Path,
        default=Path(
            os.environ.get("MULTI30K", HERE.parent.parent / "shared" / "data" / "multi30k")
        ),
        help="directory with Multi30k task-1 raw files (train.en.gz, ...); env MULTI30K",
    )


def s2s_command() -> list[str]:
    return [sys.executable, "-m", "s2s_cli"]


def benchmark_dataset(multi30k: Path, src: str = "en", tgt: str = "de") -> Path:
    """Multi30k SRC-TGT, joint BPE 8000, built once under benchmarks/out/."""
    dest = OUT / f"multi30k-{src}-{tgt}-bpe8000"
    if (dest / "manifest.json").exists():
        return dest
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *s2s_command(),
            "preprocess",
            "--src-lang",
            src,
            "--tgt-lang",
            tgt,
            "--train",
            str(multi30k / "train"),
            "--valid",
            str(multi30k / "val"),
            "--test",
            str(multi30k / "test_2016_flickr"),
            "--vocab-size",
            "8000",
            "--workers",
            "2",
            "--dest",
            str(dest),
            "--force",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return dest


def gemm_rate(
    dtype_name: str = "fp32", size: int = 2048, repeats: int = 8, trials: int = 3
) -> float:
    """Measured matmul GFLOP/s on this machine now (the ceiling MFU is reported against).

    The best of a few trials: a noisy neighbour only ever makes a trial slower.
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the line every benchmark table carries."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def s2s_translate_command(
    checkpoint: Path,
    source: Path,
    out: Path,
    beam: int,
    precision: str,
    shortlist: Path | None = None,
) -> list[str]:
    """The ``s2s translate`` command the translation benchmarks time: test2016 as
    ``make bench-peers`` translates it (batches of 64 sentences; OpenNMT-py stops a batch at
    1.25 x its longest source + 5 pieces, so s2s gets the same limit per sentence), with a
    lexical ``shortlist`` where one is given."""
    command = [
        sys.executable, "-m", "s2s_cli", "translate", "-c", str(checkpoint), "-i", str(source),
        "-o", str(out), "--beam", str(beam), "--batch-size", "64", "--precision", precision,
        "--max-len-a", "1.25", "--max-len-b", "5", "--device", "cpu", "-q",
    ]  # fmt: skip
    return command if shortlist is None else [*command, "--shortlist", str(shortlist)]


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.2f}"


def run_measured(args: list[str], **kwargs) -> tuple[float, float]:
    """Run ``s2s ARGS`` as a child process; returns (wall seconds, peak RSS in MiB) of that child."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        env = {**os.environ, "S2S_RSS_FILE": rss.name}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(HERE / "measure.py"), *args], check=True, env=env, **kwargs
        )
        wall = time.perf_counter() - start
        peak_kib = int(rss.read().split()[-1])
    return wall, peak_kib / 1024
