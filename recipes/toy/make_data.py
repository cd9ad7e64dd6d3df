#!/usr/bin/env python3
"""Toy corpora for the classic seq2seq lessons (no download, no s2s imports).

addition: "16+75" -> "91", operands 0-999, 50,000 problems, a seeded 45,000 / 5,000 split
          (as in Saito, "Deep Learning from Scratch 2", ch. 7).
dates:    many human date formats ("september 27, 1994", "2/10/93",
          "TUESDAY, SEPTEMBER 25, 1984", ...) -> "1994-09-27", 50,000 examples, 45,000 / 5,000
          (the task of ch. 8).

Like the reference data, every problem is padded to a fixed width (addition: 7 characters in,
4 out; dates: 29 in), with "_" instead of the reference's spaces because SentencePiece folds
runs of spaces. The padding matters: on the same model and data, the fixed-width format learns
about ten times faster than unpadded variable-length text (see README.md).

Usage: make_data.py {addition,dates} OUT_DIR [--seed N] [--size N]
       -> OUT_DIR/{train,test}.{src,tgt}
"""

from __future__ import annotations

import argparse
import datetime
import random
from pathlib import Path

MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


PAD = "_"


def addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"{a}+{b}".ljust(7, PAD), str(a + b).ljust(4, PAD)


def _casing(text: str, rng: random.Random) -> str:
    return rng.choice([text.lower(), text.upper(), text.title()])


def human_date(day: datetime.date, rng: random.Random) -> str:
    month, weekday = MONTHS[day.month - 1], DAYS[day.weekday()]
    yy = f"{day.year % 100:02d}"
    formats = [
        lambda: f"{month} {day.day}, {day.year}",
        lambda: f"{month[:3]} {day.day}, {day.year}",
        lambda: f"{day.day} {month} {day.year}",
        lambda: f"{day.day} {month[:3]} {day.year}",
        lambda: f"{day.day:02d} {month[:3]} {day.year}",
        lambda: f"{day.day} {month}, {day.year}",
        lambda: f"{weekday}, {month} {day.day}, {day.year}",
        lambda: f"{weekday[:3]}, {month[:3]} {day.day}, {day.year}",
        lambda: f"{day.month}/{day.day}/{yy}",
        lambda: f"{day.month:02d}/{day.day:02d}/{day.year}",
        lambda: f"{day.day:02d}.{day.month:02d}.{yy}",
        lambda: f"{day.day}.{day.month}.{day.year}",
        lambda: f"{month} {day.day} {day.year}",
        lambda: f"{day.year}/{day.month:02d}/{day.day:02d}",
    ]
    return _casing(rng.choice(formats)(), rng)


def dates(rng: random.Random) -> tuple[str, str]:
    # 1950-2049, so that two-digit years are unambiguous (50-99 -> 19xx, 00-49 -> 20xx)
    first = datetime.date(1950, 1, 1).toordinal()
    last = datetime.date(2049, 12, 31).toordinal()
    day = datetime.date.fromordinal(rng.randint(first, last))
    return human_date(day, rng).ljust(29, PAD), day.isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["addition", "dates"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1984)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--test-size", type=int, default=5_000)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    make = addition if args.task == "addition" else dates
    pairs = [make(rng) for _ in range(args.size)]
    rng.shuffle(pairs)
    split = len(pairs) - args.test_size
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", pairs[:split]), ("test", pairs[split:])):
        (args.out / f"{name}.src").write_text("".join(f"{s}\n" for s, _ in part), encoding="utf-8")
        (args.out / f"{name}.tgt").write_text("".join(f"{t}\n" for _, t in part), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
