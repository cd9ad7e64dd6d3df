#!/usr/bin/env python3
"""Steady-state training throughput of `s2s train` on Multi30k en-de with the benchmark model.

Each configuration runs as its own `s2s train` process (so peak RSS is its own), for
--updates updates; target tokens/s is the mean of the logged windows after the first
(warm-up) window. Model-FLOPs utilisation = model FLOPs per target token x tokens/s divided by
the fp32 (or bf16) matmul rate measured in this same run.

    python benchmarks/train_throughput.py [--multi30k DIR] [--updates 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_MODEL,
    benchmark_dataset,
    data_dir_argument,
    gemm_rate,
    machine,
    run_measured,
)

CONFIGS = {
    "input feeding, fp32": ["model.input_feeding=true", "train.precision=fp32"],
    "input feeding, bf16": ["model.input_feeding=true", "train.precision=bf16"],
    "fast path, fp32": ["model.input_feeding=false", "train.precision=fp32"],
    "fast path, bf16": ["model.input_feeding=false", "train.precision=bf16"],
}


def flops_per_target_token(data: Path, input_feeding: bool) -> float:
    """Training FLOPs (forward x 3) per target token of the benchmark model on this data."""
    manifest = json.loads((data / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    sentences = train["sentences"]
    src_per_tgt = (train["tokens"]["src"] + sentences) / (train["tokens"]["tgt"] + sentences)
    vocab = manifest["vocab_size"]["tgt"]
    embed, enc_dir, hidden, enc_out = 256, 256, 512, 512
    src_len = (train["tokens"]["src"] + sentences) / sentences
    encoder = 2 * 2 * 4 * enc_dir * (embed + enc_dir)  # per source token, both directions
    keys = 2 * enc_out * hidden  # general attention key projection, per source token
    dec_in = embed + (hidden if input_feeding else 0)
    decoder = 2 * 4 * hidden * (dec_in + hidden)
    attention = 2 * src_len * (hidden + enc_out)  # scores + context, per target token
    combine = 2 * (enc_out + hidden) * hidden
    output = 2 * hidden * vocab
    forward = src_per_tgt * (encoder + keys) + decoder + attention + combine + output
    return 3 * forward


def run_config(data: Path, overrides: list[str], updates: int, log_every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="s2s-bench-") as save_dir:
        command = [
            "train",
            "--data",
            str(data),
            "--save-dir",
            save_dir,
            "--device",
            "cpu",
            *BENCH_MODEL,
            *overrides,
            "train.max_tokens=4096",
            f"train.max_updates={updates}",
            f"train.log_every={log_every}",
            "train.validate_every=100000",
            "train.seed=1",
            "train.valid_max_sentences=1",
        ]
        _, peak_mb = run_measured(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [
            json.loads(line) for line in (Path(save_dir) / "metrics.jsonl").read_text().splitlines()
        ]
    windows = [r for r in rows if r["kind"] == "train"][1:]  # drop the warm-up window
    rate = sum(r["tokens_per_s"] for r in windows) / len(windows)
    padding = sum(r["padding"] for r in windows) / len(windows)
    return {"tokens_per_s": rate, "padding": padding, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    data_dir_argument(parser)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument(
        "--only", nargs="*", help="run only configs whose name contains one of these"
    )
    args = parser.parse_args()
    data = benchmark_dataset(args.multi30k)
    ceilings = {"fp32": gemm_rate("fp32"), "bf16": gemm_rate("bf16")}
    print(f"# machine: {machine()}")
    print(
        f"# matmul 2048^3: fp32 {ceilings['fp32']:.0f} GFLOP/s, bf16 {ceilings['bf16']:.0f} GFLOP/s"
    )
    # (ratios to the peers come from benchmarks/peers.py, which runs them beside s2s: a peer
    # figure from another run or machine is no basis for a ratio)
    print(
        "| configuration | target tok/s | MFLOP/token | MFU vs fp32 GEMM | MFU vs own-precision GEMM | padding | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, overrides in CONFIGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        result = run_config(data, overrides, args.updates, args.log_every)
        flops = flops_per_target_token(data, "feeding" in name)
        mfu = flops * result["tokens_per_s"] / (ceilings["fp32"] * 1e9)
        own = (
            flops * result["tokens_per_s"] / (ceilings["bf16" if "bf16" in name else "fp32"] * 1e9)
        )
        print(
            f"| {name} | {result['tokens_per_s']:,.0f} | "
            f"{flops / 1e6:.1f} | {100 * mfu:.0f}% | {100 * own:.0f}% | {100 * result['padding']:.1f}% | "
            f"{result['peak_rss_mb']:,.0f} MB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
