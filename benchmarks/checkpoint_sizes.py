#!/usr/bin/env python3
"""Checkpoint sizes of a recipe's model: the full `checkpoint_last.pt` and the smaller
`checkpoint_best.pt` (no optimizer or RNG state), measured by training it for a few updates.

Sizes depend only on the model's shapes and the optimizer, not on how long it trained, so a
few updates give the sizes of the fully trained run.

    python benchmarks/checkpoint_sizes.py --data DATASET_DIR [--config recipes/multi30k/cpu-15min.yaml]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, machine, s2s_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset from s2s preprocess")
    parser.add_argument(
        "--config", type=Path, default=HERE.parent / "recipes" / "multi30k" / "cpu-15min.yaml"
    )
    args = parser.parse_args()
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-ckpt-") as tmp:
        run = Path(tmp) / "run"
        subprocess.run(
            [
                *s2s_command(),
                "train",
                str(args.config),
                "--data",
                str(args.data),
                "--save-dir",
                str(run),
                "--device",
                "cpu",
                "-q",
                "train.max_updates=3",
                "train.max_minutes=null",
                "train.validate_every=3",
                "train.valid_max_sentences=8",
                "train.precision=fp32",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        from s2s_cli.checkpoint import load_checkpoint

        last = load_checkpoint(run / "checkpoint_last.pt")
        unique = {t.untyped_storage().data_ptr(): t.numel() for t in last.model.values()}
        parameters = sum(unique.values())
        print(f"config {args.config.name}: {parameters:,} parameter values (shared ones once)")
        print("| file | holds | bytes | MB |")
        print("|---|---|---|---|")
        for name, holds in (
            ("checkpoint_last.pt", "everything: weights, Adam moments, RNG, schedule"),
            ("checkpoint_best.pt", "weights, config, vocabularies, progress"),
        ):
            size = (run / name).stat().st_size
            print(f"| `{name}` | {holds} | {size:,} | {size / 2**20:.1f} |")
        ratio = (run / "checkpoint_best.pt").stat().st_size / (
            run / "checkpoint_last.pt"
        ).stat().st_size
        print(f"best / last: {ratio:.3f}")


if __name__ == "__main__":
    main()
