#!/usr/bin/env python3
"""Forward + backward time of the fused output projection + loss (`ProjectedCrossEntropy`).

At the benchmark model's output layer (4,096 rows, features 256, vocabulary 8,000), fp32 and
bf16, for several row-chunk sizes, round-robin so machine noise hits every size alike. Beside
them: the three matrix products alone (the floor the loss work sits on) and autograd's route
(`F.linear` + `label_smoothed_nll`).

    python benchmarks/fused_loss.py [--rows 4096] [--features 256] [--vocab 8000]
                                    [--chunks 32,64,128,256] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--chunks", default="32,64,128,256")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    import torch

    chunks = [int(c) for c in args.chunks.split(",")]
    print(f"# machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"# {args.rows} rows x {args.features} features -> {args.vocab} pieces; "
        f"{args.rounds} rounds after 3 warm-up rounds; ms per forward + backward (median)"
    )
    print("| precision | contender | ms | vs the three products |")
    print("|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        contenders = make_contenders(
            args, torch.float32 if precision == "fp32" else torch.bfloat16, chunks
        )
        times = round_robin(contenders, args.rounds)
        floor = statistics.median(times["3 products"])
        for name, values in times.items():
            median = statistics.median(values)
            print(
                f"| {precision} | {name} | {1000 * median:.1f} | {median / floor:.2f}x |",
                flush=True,
            )


def make_contenders(args: argparse.Namespace, dtype, chunks: list[int]) -> dict:
    """name -> a no-argument function running one forward + backward."""
    import torch

    import s2s_cli.training.loss as loss_module

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.rows, args.features, generator=generator).to(dtype)
    weight = torch.randn(args.vocab, args.features, generator=generator) * 0.05
    bias = torch.zeros(args.vocab)
    target = torch.randint(0, args.vocab, (args.rows,), generator=generator)
    params = [t.requires_grad_(True) for t in (inputs, weight, bias)]
    criterion = loss_module.ProjectedCrossEntropy(0.1)

    def products() -> None:  # what any route must compute: logits, d inputs, d weight
        w = weight.detach().to(dtype)
        logits = torch.addmm(bias.detach().to(dtype), inputs.detach(), w.t())
        _ = logits @ w
        _ = logits.t() @ inputs.detach()

    def fused(chunk: int):
        def run() -> None:
            loss_module.ROWS_PER_CHUNK = chunk
            loss, _ = criterion(*params, target)
            loss.backward()

        return run

    def plain() -> None:
        logits = torch.nn.functional.linear(inputs, weight.to(dtype), bias.to(dtype))
        loss, _ = loss_module.label_smoothed_nll(logits, target, 0.1)
        loss.backward()

    def clear_gradients() -> None:
        for param in params:
            param.grad = None

    contenders = {"3 products": products, "autograd": plain}
    contenders.update({f"fused, {c} rows/chunk": fused(c) for c in chunks})
    return {name: (run, clear_gradients) for name, run in contenders.items()}


def round_robin(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, one call each in turn; 3 warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(rounds + 3):
        for name, (run, reset) in contenders.items():
            reset()
            start = time.perf_counter()
            run()
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
