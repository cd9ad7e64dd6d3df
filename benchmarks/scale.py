#!/usr/bin/env python3
"""Past Multi30k: preprocessing, training start-up and translating at 1x, 10x and 100x (issue 16).

The corpora are made on the fly from Multi30k en-de: 1x is its training set (29,000 pairs), 10x
290,000 pairs and 100x 3,000,000 (103x); the larger ones join two random training pairs into one (source with source, target with target),
drawn without replacement from the 29,000² ordered pairs, so their lines are distinct (repeated
lines would be free for SentencePiece's counting). Written gzipped under --out.

For each corpus, every command a child process (peak RSS of the child, wall time from launch):

- ``s2s preprocess`` (joint BPE 8,000, --workers 2, valid + test2016): wall time, pairs per
  second, peak RSS, output size; ``--shard-size`` is left at none (one dataset);
- ``s2s train`` of a small model (the toy size: embeddings 64, LSTM 128, 2,048-token batches) for
  --updates updates: seconds from launch to the first update, and resident memory sampled every
  0.2 s (its value at the 10th and the last update, and the peak; past 1,000 updates also its
  value at update 1,000 and its range after it, in all and private (anonymous) alone: the
  memory-mapped token files count in VmRSS as far as the kernel keeps their pages in);
- with --translate-lines N (largest corpus only): that small model greedily translating N source
  lines and 10,000 of them, one after the other: throughput of each and their peak RSS.

    python benchmarks/scale.py [--multi30k DIR] [--scales 1 10 100] [--updates 1000]
                               [--translate-lines 1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, data_dir_argument, machine, run_measured, s2s_command

BASE_PAIRS = 29_000
FLAT_AFTER = 1000  # updates after which training's resident memory must stay flat
SMALL_MODEL = [
    "model.preset=fast",
    "model.embed_dim=64",
    "model.hidden_size=128",
    "model.encoder_hidden_size=128",
    "model.dropout=0.1",
    "train.max_tokens=2048",
    "train.lr=0.003",
    "train.log_every=1",
    "train.validate_every=null",
    "train.save_every=null",
]


def read_gz_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def make_corpus(multi30k: Path, scale: int, out: Path) -> tuple[Path, int]:
    """``out/train.{en,de}.gz`` for ``scale`` (1: Multi30k's own); returns (prefix, pairs)."""
    prefix = out / "train"
    src, tgt = read_gz_lines(multi30k / "train.en.gz"), read_gz_lines(multi30k / "train.de.gz")
    pairs = len(src) * scale
    if scale >= 100:  # the "at least 3 million distinct pairs"
        pairs = max(pairs, 3_000_000)
    if (out / "done").exists():
        return prefix, pairs
    out.mkdir(parents=True, exist_ok=True)
    if scale == 1:
        picks = [(i,) for i in range(len(src))]
    else:
        flat = np.random.default_rng(scale).choice(len(src) ** 2, size=pairs, replace=False)
        picks = list(zip((flat // len(src)).tolist(), (flat % len(src)).tolist(), strict=True))
    for lang, lines in (("en", src), ("de", tgt)):
        with gzip.open(out / f"train.{lang}.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            for chunk in range(0, len(picks), 100_000):
                f.write(
                    "".join(
                        " ".join(lines[i] for i in p) + "\n" for p in picks[chunk : chunk + 100_000]
                    )
                )
    (out / "done").write_text("")
    return prefix, pairs


def directory_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def preprocess(prefix: Path, multi30k: Path, dest: Path) -> dict:
    args = [
        "preprocess", "--src-lang", "en", "--tgt-lang", "de", "--train", str(prefix),
        "--valid", str(multi30k / "val"), "--test", str(multi30k / "test_2016_flickr"),
        "--vocab-size", "8000", "--joint", "--workers", "2", "--dest", str(dest), "--force",
        "--quiet",
    ]  # fmt: skip
    seconds, rss = run_measured(args, stdout=subprocess.DEVNULL)
    return {"seconds": seconds, "peak_rss_mib": rss, "output_mib": directory_mib(dest)}


class RssSampler:
    """Resident memory of a process (and its children's, which s2s does not start) every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self.anonymous = pid, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                text = status.read_text()
            except OSError:
                return
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if "VmRSS" not in fields:  # exited (a zombie has no resident set)
                return
            now = time.perf_counter()
            self.samples.append((now, int(fields["VmRSS"].split()[0]) / 1024))
            # private memory alone: the memory-mapped token files count in VmRSS as the kernel
            # pages them in and out, which is not memory the process holds
            self.anonymous.append((now, int(fields["RssAnon"].split()[0]) / 1024))
            time.sleep(0.2)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def train(dataset: Path, save_dir: Path, updates: int) -> dict:
    """Seconds from launch to the first update, and resident memory over ``updates`` updates."""
    metrics = save_dir / "metrics.jsonl"
    if save_dir.exists():
        subprocess.run(["rm", "-rf", str(save_dir)], check=True)
    command = [*s2s_command(), "train", "--data", str(dataset), "--save-dir", str(save_dir),
               "--device", "cpu", "--quiet", *SMALL_MODEL, f"train.max_updates={updates}"]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    sampler = RssSampler(child.pid)
    first_update = None
    while child.poll() is None:
        if first_update is None and metrics.exists() and '"train"' in metrics.read_text():
            first_update = time.perf_counter() - start
        time.sleep(0.05)
    samples = sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"s2s train failed on {dataset} (exit {child.returncode})")
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    finished = time.perf_counter()
    # RSS at the time of the 10th update and at the end (update times: from the log's elapsed)
    offset = finished - start - train_rows[-1]["elapsed_s"]  # launch -> reporter start, roughly

    def rss_at(elapsed: float) -> float:
        moment = start + offset + elapsed
        before = [rss for t, rss in samples if t <= moment]
        return before[-1] if before else float("nan")

    tenth = train_rows[min(9, len(train_rows) - 1)]["elapsed_s"]
    result = {
        "first_update_s": first_update,
        "updates": len(train_rows),
        "seconds": finished - start,
        "rss_at_update_10_mib": rss_at(tenth),
        "rss_at_end_mib": samples[-1][1] if samples else float("nan"),
        "peak_rss_mib": max((rss for _, rss in samples), default=float("nan")),
    }
    if len(train_rows) > FLAT_AFTER:  # the "RSS flat after the first 1,000 updates"
        moment = start + offset + train_rows[FLAT_AFTER - 1]["elapsed_s"]
        later = [rss for t, rss in samples if t >= moment]
        anonymous = [rss for t, rss in sampler.anonymous if t >= moment]
        result[f"rss_at_update_{FLAT_AFTER}_mib"] = rss_at(train_rows[FLAT_AFTER - 1]["elapsed_s"])
        result[f"rss_after_update_{FLAT_AFTER}_min_max_mib"] = [min(later), max(later)]
        result[f"anonymous_rss_after_update_{FLAT_AFTER}_min_max_mib"] = [
            min(anonymous),
            max(anonymous),
        ]
        result["anonymous_rss_at_end_mib"] = sampler.anonymous[-1][1]
    return result


def translate(checkpoint: Path, source_lines: list[str], lines: int, work: Path) -> dict:
    """Greedy translation of ``lines`` source lines (cycled), file to file."""
    src = work / f"translate-{lines}.en"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(source_lines[i % len(source_lines)] + "\n")
    out = work / f"translate-{lines}.de"
    args = ["translate", "-c", str(checkpoint), "-i", str(src), "-o", str(out), "--beam", "1",
            "--batch-size", "128", "--device", "cpu", "--quiet"]  # fmt: skip
    seconds, rss = run_measured(args)
    with open(out, encoding="utf-8") as f:
        produced = sum(1 for _ in f)
    return {"lines": lines, "seconds": seconds, "lines_per_s": lines / seconds,
            "peak_rss_mib": rss, "output_lines": produced}  # fmt: skip


def training_cells(t: dict | None) -> str:
    """The table's training columns (first update, RSS at 10 / end, RSS after FLAT_AFTER)."""
    if t is None:
        return "- | - | -"
    flat = t.get(f"rss_after_update_{FLAT_AFTER}_min_max_mib")
    private = t.get(f"anonymous_rss_after_update_{FLAT_AFTER}_min_max_mib")
    flat_cell = (
        f"{flat[0]:,.0f}-{flat[1]:,.0f} MiB (private {private[0]:,.0f}-{private[1]:,.0f})"
        if flat and private
        else "-"
    )
    return (
        f"{t['first_update_s']:.1f} s | {t['rss_at_update_10_mib']:,.0f} / "
        f"{t['rss_at_end_mib']:,.0f} MiB | {flat_cell}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--translate-lines", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT / "scale")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="train on datasets already preprocessed under --out (preprocessing not measured)",
    )
    parser.add_argument(
        "--preprocess-only",
        action="store_true",
        help="measure preprocessing alone (no training, no translating)",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    print(f"# {machine()}", flush=True)
    rows = []
    checkpoint = None
    for scale in args.scales:
        corpus = args.out / f"corpus-{scale}x"
        prefix, pairs = make_corpus(args.multi30k, scale, corpus)
        dataset = args.out / f"data-{scale}x"
        if args.reuse_data and (dataset / "manifest.json").exists():
            made = {
                "seconds": float("nan"),
                "peak_rss_mib": float("nan"),
                "output_mib": float("nan"),
            }
        else:
            made = preprocess(prefix, args.multi30k, dataset)
        made["pairs_per_s"] = pairs / made["seconds"]
        rows.append({"scale": scale, "pairs": pairs, "preprocess": made})
        if not args.preprocess_only:
            rows[-1]["train"] = train(dataset, args.out / f"run-{scale}x", args.updates)
            checkpoint = args.out / f"run-{scale}x" / "checkpoint_last.pt"
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["preprocess"]
    print(
        "\n| corpus | pairs | preprocess | pairs/s | peak RSS | RSS vs 1x | output | "
        f"first update | RSS at update 10 / end | RSS after update {FLAT_AFTER:,} (min-max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["preprocess"]
        print(f"| {r['scale']}x | {r['pairs']:,} | {p['seconds']:.1f} s | {p['pairs_per_s']:,.0f} "
              f"| {p['peak_rss_mib']:,.0f} MiB | {p['peak_rss_mib'] / base['peak_rss_mib']:.2f}x "
              f"| {p['output_mib']:,.0f} MiB | {training_cells(r.get('train'))} |")  # fmt: skip
    result = {"machine": machine(), "rows": rows}
    if args.translate_lines and checkpoint is not None:
        source = read_gz_lines(args.multi30k / "train.en.gz")
        work = args.out / "translate"
        work.mkdir(parents=True, exist_ok=True)
        small = translate(checkpoint, source, 10_000, work)
        large = translate(checkpoint, source, args.translate_lines, work)
        result["translate"] = [small, large]
        print(f"\ntranslate: 10,000 lines {small['lines_per_s']:,.0f} lines/s, peak RSS "
              f"{small['peak_rss_mib']:,.0f} MiB; {large['lines']:,} lines "
              f"{large['lines_per_s']:,.0f} lines/s ({large['lines_per_s'] / small['lines_per_s']:.2f}x), "
              f"peak RSS {large['peak_rss_mib']:,.0f} MiB, {large['output_lines']:,} lines out")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
