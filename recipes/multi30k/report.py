#!/usr/bin/env python3
"""Results of a Multi30k run: a markdown table of test scores and an SVG plot of validation BLEU.

Usage: report.py WORK_DIR PAIR TEST... (standard library only)
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def plot(points: list[tuple[int, float]], title: str) -> str:
    width, height, left, bottom, top, right = 640, 360, 55, 45, 30, 20
    last = max(u for u, _ in points)
    high = max(40.0, max(b for _, b in points) + 2)
    x = lambda u: left + u / last * (width - left - right)  # noqa: E731
    y = lambda b: top + (high - b) / high * (height - top - bottom)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for b in range(0, int(high) + 1, 10):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(b)}" y2="{y(b)}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(b) + 4}" text-anchor="end">{b}</text>'
        )
    parts.append(
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">update (last: {last})</text>'
    )
    line = " ".join(f"{x(u):.1f},{y(b):.1f}" for u, b in points)
    parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line}"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    work, pair, tests = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    rows = [
        json.loads(line) for line in (work / "model" / "metrics.jsonl").read_text().splitlines()
    ]
    valid = [(r["update"], r["bleu"]) for r in rows if r["kind"] == "valid"]
    minutes = int((work / "train_seconds").read_text()) / 60
    chosen = (work / "chosen_checkpoint").read_text().strip()
    lenpen_file = work / "chosen_lenpen"  # runs from before the length-penalty choice lack it
    lenpen = lenpen_file.read_text().strip() if lenpen_file.exists() else "1.0"
    print(
        f"\n{pair}, {work.name}: {chosen}.pt (the better of averaged/best on validation), beam 5, "
        f"length penalty {lenpen} (chosen on validation); "
        f"trained {minutes:.1f} min "
        f"on {platform.machine()} ({len(valid)} validations, best valid BLEU "
        f"{max(b for _, b in valid):.2f})\n"
    )
    lines = [
        "| test set | BLEU (detok sacreBLEU) | chrF | BLEU (tokenized, lowercased) |",
        "|---|---|---|---|",
    ]
    signatures = {}
    for test in tests:
        score = json.loads((work / f"{test}.score.json").read_text())
        lines.append(
            f"| {test} | {score['bleu']['score']:.2f} | {score['chrf']['score']:.2f} | "
            f"{score['bleu_tok_lc']['score']:.2f} |"
        )
        signatures = {k: v["signature"] for k, v in score.items()}
    table = "\n".join(lines)
    print(table)
    print("\nsignatures: " + "; ".join(f"{k}: {v}" for k, v in signatures.items()))
    (work / "results.md").write_text(
        table + "\n\n" + "\n".join(f"- {k}: `{v}`" for k, v in signatures.items()) + "\n"
    )
    (work / "valid-bleu.svg").write_text(
        plot(valid, f"{pair} {work.name}: validation BLEU (greedy)")
    )
    print(f"plot: {work / 'valid-bleu.svg'}")


if __name__ == "__main__":
    main()
