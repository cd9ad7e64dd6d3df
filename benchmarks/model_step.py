#!/usr/bin/env python3
"""Forward+backward speed of the `fast` preset (fused decoder) against `luong` (step loop).

Both at the benchmark size (embeddings 256, bi-LSTM 256 per direction, decoder 512, joint
vocabulary 8000), on the same real Multi30k en-de batches of ~4,096 target tokens; the output
projection and loss run outside the time loop in both. Measures model forward + backward only
(no optimizer), fp32 and bf16, alternating the two presets batch by batch so machine noise hits
both alike.

    python benchmarks/model_step.py [--multi30k DIR] [--batches 12]

With --deferred it compares instead the `luong` preset's training step loop two ways, batch by
batch alternating: `Decoder.forward_steps` (weight gradients once per batch, the default on the
CPU) against the autograd loop of `Decoder.step` (one weight gradient per step).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_MODEL, benchmark_dataset, data_dir_argument, gemm_rate, machine
from train_throughput import flops_per_target_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument(
        "--deferred", action="store_true", help="the luong step loop: deferred vs autograd"
    )
    args = parser.parse_args()

    import torch

    from s2s_cli.config import load_config
    from s2s_cli.data.batching import make_batches
    from s2s_cli.data.dataset import Dataset
    from s2s_cli.data.loader import collate
    from s2s_cli.models.build import build_model
    from s2s_cli.training.step import LossModule

    data_dir = benchmark_dataset(args.multi30k)
    split = Dataset(data_dir).split("train")
    order = make_batches(split.src_sizes + 1, split.tgt_sizes + 1, 4096, None, seed=1, epoch=1)
    batches = [collate(split, b) for b in order[: args.batches + 2]]
    models = {}
    for preset in ("fast", "luong"):
        cfg = load_config(overrides=[*BENCH_MODEL, f"model.preset={preset}"]).model
        torch.manual_seed(0)
        models[preset] = LossModule(build_model(cfg, 8000, 8000), 0.1)
    if args.deferred:
        compare_deferred(models["luong"], batches, data_dir)
        return
    ceilings = machine_header()
    print("| precision | preset | fwd+bwd target tok/s | MFLOP/token | MFU | fast / luong |")
    print("|---|---|---|---|---|---|")
    contenders = {name: (objective, lambda: None) for name, objective in models.items()}
    for precision in ("fp32", "bf16"):
        rates = alternating_rates(contenders, batches, precision)
        for name, rate in rates.items():
            flops = flops_per_target_token(data_dir, input_feeding=name == "luong")
            mfu = flops * rate / (ceilings[precision] * 1e9)
            ratio = f"{rates['fast'] / rates['luong']:.2f}x" if name == "fast" else ""
            print(
                f"| {precision} | {name} | {rate:,.0f} | {flops / 1e6:.1f} | {100 * mfu:.0f}% | {ratio} |",
                flush=True,
            )


def machine_header() -> dict[str, float]:
    """Print the machine and its matmul rates; returns the rates (GFLOP/s) by precision."""
    import torch

    ceilings = {"fp32": gemm_rate("fp32"), "bf16": gemm_rate("bf16")}
    print(f"# machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# matmul 2048^3: fp32 {ceilings['fp32']:.0f}, bf16 {ceilings['bf16']:.0f} GFLOP/s")
    return ceilings


def alternating_rates(contenders: dict, batches: list, precision: str) -> dict[str, float]:
    """Forward + backward target tokens/s of each ``name -> (objective, prepare)`` over the same
    batches, batch by batch in turn (``prepare()`` runs before each); two warm-up batches."""
    import torch

    from s2s_cli.device import autocast

    device = torch.device("cpu")
    seconds = {name: 0.0 for name in contenders}
    tokens = 0
    for i, batch in enumerate(batches):
        for name, (objective, prepare) in contenders.items():
            prepare()
            start = time.perf_counter()
            with autocast(device, precision):
                loss, _ = objective(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
            loss.backward()
            elapsed = time.perf_counter() - start
            objective.zero_grad(set_to_none=True)
            if i >= 2:  # the first two batches warm up kernels and caches
                seconds[name] += elapsed
        tokens += batch.target_tokens if i >= 2 else 0
    return {name: tokens / s for name, s in seconds.items()}


def compare_deferred(objective, batches, data_dir: Path) -> None:
    """The luong preset's step loop with deferred weight gradients vs autograd's, alternating."""

    import s2s_cli.models.decoder as decoder

    ceilings = machine_header()
    flops = flops_per_target_token(data_dir, input_feeding=True)
    print("| precision | step loop | fwd+bwd target tok/s | MFU | deferred / autograd |")
    print("|---|---|---|---|---|")

    def loop(deferred: bool):
        return lambda: setattr(decoder, "DEFER_WEIGHT_GRADIENTS", deferred)

    contenders = {"autograd": (objective, loop(False)), "deferred": (objective, loop(True))}
    for precision in ("fp32", "bf16"):
        rates = alternating_rates(contenders, batches, precision)
        for name, rate in rates.items():
            mfu = flops * rate / (ceilings[precision] * 1e9)
            ratio = f"{rates['deferred'] / rates['autograd']:.2f}x" if name == "deferred" else ""
            print(
                f"| {precision} | {name} | {rate:,.0f} | {100 * mfu:.0f}% | {ratio} |", flush=True
            )
    decoder.DEFER_WEIGHT_GRADIENTS = True


if __name__ == "__main__":
    main()
