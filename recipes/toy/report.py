#!/usr/bin/env python3
"""Results of a toy task run by run.sh: a markdown table and an SVG plot of accuracy per epoch.

Reads WORK/TASK/VARIANT/{metrics.jsonl,test.hyp,wall_seconds} and WORK/TASK/raw/test.tgt
(standard library only). Usage: report.py WORK/TASK
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def curves(task_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """variant -> [(epoch, exact-match %)] from the per-validation metrics."""
    result = {}
    for variant in sorted(p for p in task_dir.iterdir() if (p / "metrics.jsonl").exists()):
        rows = [json.loads(line) for line in (variant / "metrics.jsonl").read_text().splitlines()]
        valid = [r for r in rows if r["kind"] == "valid"]
        # validations at an epoch's end are logged with the next epoch number
        result[variant.name] = [
            (r["epoch"] - 1 if r["epoch"] > 1 else r["update"], r["accuracy"]) for r in valid
        ]
    return result


def translate_accuracy(task_dir: Path, variant: str) -> float:
    hyps = (task_dir / variant / "test.hyp").read_text(encoding="utf-8").splitlines()
    refs = (task_dir / "raw" / "test.tgt").read_text(encoding="utf-8").splitlines()
    return 100.0 * sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)


def order_of(task_dir: Path) -> list[str]:
    """Variants in the order run.sh ran them."""
    done = [p for p in task_dir.iterdir() if (p / "wall_seconds").exists()]
    return [p.name for p in sorted(done, key=lambda p: (p / "wall_seconds").stat().st_mtime)]


def table(task_dir: Path, data: dict[str, list[tuple[float, float]]]) -> str:
    epochs = max(len(c) for c in data.values())
    shown = sorted({1, 2, 3, 5, 10, epochs} & set(range(1, epochs + 1)))
    head = (
        "| variant | first epoch >= 90% | best (epoch) | mean of last 5 epochs | "
        + " | ".join(f"epoch {e}" for e in shown)
        + " | test exact match (s2s translate) | wall time |"
    )
    lines = [head, "|" + "---|" * (len(shown) + 6)]
    for variant in order_of(task_dir):
        curve = data[variant]
        accuracies = [acc for _, acc in curve]
        passing = next((i + 1 for i, acc in enumerate(accuracies) if acc >= 90.0), None)
        best = max(range(len(accuracies)), key=lambda i: accuracies[i])
        cells = [
            str(passing) if passing else "never",
            f"{accuracies[best]:.2f}% ({best + 1})",
            f"{sum(accuracies[-5:]) / len(accuracies[-5:]):.2f}%",
            *(f"{curve[e - 1][1]:.2f}%" if e <= len(curve) else "" for e in shown),
        ]
        wall = int((task_dir / variant / "wall_seconds").read_text())
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + f" | **{translate_accuracy(task_dir, variant):.2f}%** | {wall} s |"
        )
    return "\n".join(lines)


def svg_plot(data: dict[str, list[tuple[float, float]]], title: str) -> str:
    width, height, left, bottom, top, right = 640, 380, 55, 45, 30, 150
    epochs = max(len(c) for c in data.values())
    x = lambda e: left + (e - 1) / max(epochs - 1, 1) * (width - left - right)  # noqa: E731
    y = lambda a: top + (100 - a) / 100 * (height - top - bottom)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for a in range(0, 101, 20):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(a)}" y2="{y(a)}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(a) + 4}" text-anchor="end">{a}%</text>'
        )
    for e in range(1, epochs + 1, max(1, epochs // 10)):
        parts.append(f'<text x="{x(e)}" y="{height - bottom + 16}" text-anchor="middle">{e}</text>')
    parts.append(
        f'<text x="{(width - right + left) / 2}" y="{height - 8}" text-anchor="middle">epoch</text>'
    )
    for i, (variant, curve) in enumerate(data.items()):
        color = COLORS[i % len(COLORS)]
        points = " ".join(f"{x(j + 1):.1f},{y(acc):.1f}" for j, (_, acc) in enumerate(curve))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(
            f'<text x="{width - right + 10}" y="{top + 16 * i + 10}" fill="{color}">{variant}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    task_dir = Path(sys.argv[1])
    data = curves(task_dir)
    data = {v: data[v] for v in order_of(task_dir)}
    print(f"\n{task_dir.name}: exact-match accuracy of greedy output on the test split\n")
    print(table(task_dir, data))
    plot = task_dir / f"{task_dir.name}-accuracy.svg"
    plot.write_text(svg_plot(data, f"{task_dir.name}: test exact match by epoch"), encoding="utf-8")
    (task_dir / "results.md").write_text(table(task_dir, data) + "\n", encoding="utf-8")
    print(f"\nplot: {plot}")


if __name__ == "__main__":
    main()
