#!/usr/bin/env python3
"""Distinct batch shapes per epoch, and what a first meeting with a shape costs (issue 14, item 2).

oneDNN builds one primitive per tensor shape. Length-bucketed 4,096-token batches give an epoch
of Multi30k en-de many shapes; the question is whether meeting them for the first time makes the
first epoch slower than the next. Each configuration runs in its own process (the cache capacity
is read when oneDNN starts), times model forward + backward over the same ``--batches`` batches
of epoch 1 three times in a row (pass 1 meets every shape for the first time, passes 2-3 meet
them again), with oneDNN's primitive cache at s2s's 64 entries and at 1,024 (oneDNN's default,
which holds every shape of the epoch).

    python benchmarks/batch_shapes.py [--multi30k DIR] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_MODEL, benchmark_dataset, data_dir_argument, machine

CONFIGS = {
    "input feeding, fp32": ("luong", "fp32"),
    "fast path, bf16": ("fast", "bf16"),
}
CAPACITIES = (64, 1024)


def epoch_shapes(data: Path) -> dict[str, int]:
    """How many distinct shapes the batches of epoch 1 have, at the batch and the RNN level."""
    from s2s_cli.data.batching import make_batches
    from s2s_cli.data.dataset import Dataset

    split = Dataset(data).split("train")
    src, tgt = split.src_sizes + 1, split.tgt_sizes + 1
    batches = make_batches(src, tgt, 4096, None, seed=1, epoch=1)
    batch_shapes = {(len(b), int(src[b].max()), int(tgt[b].max())) for b in batches}
    # the CPU encoder runs one fused call per distinct length: rows still running x segment
    segments = set()
    for b in batches:
        lengths = sorted(set(src[b].tolist()))
        previous = 0
        for length in lengths:
            segments.add((int((src[b] >= length).sum()), length - previous))
            previous = length
    return {
        "batches": len(batches),
        "batch shapes (sentences, source, target)": len(batch_shapes),
        "batch sizes": len({shape[0] for shape in batch_shapes}),
        "decoder shapes (sentences, target)": len({(s[0], s[2]) for s in batch_shapes}),
        "encoder segment shapes (rows, steps)": len(segments),
    }


def passes(data: Path, preset: str, precision: str, count: int) -> list[float]:
    """Target tokens/s of forward + backward over the same ``count`` batches, three passes."""
    import torch

    from s2s_cli.config import load_config
    from s2s_cli.data.batching import make_batches
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.data.loader import collate
    from s2s_cli.device import autocast
    from s2s_cli.models.build import build_model
    from s2s_cli.training.step import LossModule

    split = Dataset(data).split("train")
    order = make_batches(split.src_sizes + 1, split.tgt_sizes + 1, 4096, None, seed=1, epoch=1)
    batches = [collate(split, b) for b in order[:count]]
    feeding = ["model.input_feeding=true"] if preset == "luong" else []
    cfg = load_config(overrides=[*BENCH_MODEL, f"model.preset={preset}", *feeding]).model
    torch.manual_seed(0)
    objective = LossModule(build_model(cfg, 8000, 8000), 0.1)
    device = torch.device("cpu")
    rates = []
    for _ in range(3):
        start, tokens = time.perf_counter(), 0
        for batch in batches:
            with autocast(device, precision):
                loss, _ = objective(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
            loss.backward()
            objective.zero_grad(set_to_none=True)
            tokens += batch.target_tokens
        rates.append(tokens / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument(
        "--child", nargs=3, metavar=("PRESET", "PRECISION", "DATA"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        preset, precision, data = args.child
        print(json.dumps(passes(Path(data), preset, precision, args.batches)))
        return
    data = benchmark_dataset(args.multi30k)
    print(f"# machine: {machine()}")
    print("# epoch 1 of Multi30k en-de, 4,096-token batches:")
    for name, count in epoch_shapes(data).items():
        print(f"#   {name}: {count}")
    print(
        f"# forward + backward over the first {args.batches} batches, three passes in one process"
    )
    print("| model | oneDNN cache | pass 1 tok/s | pass 2 | pass 3 | pass 1 / mean of 2-3 |")
    print("|---|---|---|---|---|---|")
    for name, (preset, precision) in CONFIGS.items():
        for capacity in CAPACITIES:
            env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(capacity)}
            command = [sys.executable, __file__, "--batches", str(args.batches)]
            command += ["--child", preset, precision, str(data)]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            rates = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = rates[0] / ((rates[1] + rates[2]) / 2)
            cells = " | ".join(f"{r:,.0f}" for r in rates)
            print(f"| {name} | {capacity} | {cells} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
