#!/usr/bin/env python3
"""Whole-command speed of `s2s translate` on Multi30k test2016 (1,000 sentences, en->de).

For a trained checkpoint of the benchmark size: beam 5 and greedy, fp32 and bf16, batch 64,
each as a separate `s2s translate -i ... -o ...` process (start-up and model load included).
Reports seconds, sentences/s, target pieces/s, peak RSS and detokenized BLEU; checks that batch
sizes 1 and 64 give identical output; then breaks one in-process run down into start-up, model
load, model arithmetic, search bookkeeping and text I/O.

    python benchmarks/translate_speed.py --checkpoint CKPT [--multi30k DIR]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir_argument, machine, run_measured

PEERS = {
    "beam 5": 17.5,
    "greedy": 9.1,
}  # OpenNMT-py 3.5 onmt_translate, whole command, same machine


def bleu(hyp: Path, ref: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(hyp.read_text(encoding="utf-8").splitlines(), [ref]).score


def pieces(hyp: Path, checkpoint: Path) -> int:
    import sentencepiece as spm
    import torch

    model = torch.load(checkpoint, weights_only=True, map_location="cpu")["spm"]["tgt"]
    processor = spm.SentencePieceProcessor(model_proto=model.numpy().tobytes())
    return sum(
        len(ids) + 1 for ids in processor.encode(hyp.read_text(encoding="utf-8").splitlines())
    )


def breakdown(checkpoint: Path, source: list[str], beam: int, precision: str) -> dict[str, float]:
    """Where one run's time goes, measured in this process (start-up measured separately)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, s2s_cli.decoding.translator, s2s_cli.cli"], check=True
    )
    startup = time.perf_counter() - start

    import torch

    from s2s_cli.decoding import search
    from s2s_cli.decoding.translator import Translator

    start = time.perf_counter()
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    load = time.perf_counter() - start
    model_time = [0.0]
    scorer = translator.scorer
    for name in ("step", "encode"):
        original = getattr(scorer, name)

        def timed(*args, _original=original):
            t0 = time.perf_counter()
            out = _original(*args)
            model_time[0] += time.perf_counter() - t0
            return out

        setattr(scorer, name, timed)
    search_total = [0.0]
    original_search = search.search_all

    def timed_search(*args, **kwargs):
        t0 = time.perf_counter()
        out = original_search(*args, **kwargs)
        search_total[0] += time.perf_counter() - t0
        return out

    search.search_all = timed_search
    import s2s_cli.decoding.translator as translator_module

    translator_module.search_all = timed_search
    with torch.inference_mode():
        start = time.perf_counter()
        translator.translate(source, beam=beam, batch_size=64, precision=precision)
        total = time.perf_counter() - start
    return {
        "start-up (python, torch import)": startup,
        "model load": load,
        "model arithmetic (encode + steps)": model_time[0],
        "search bookkeeping (top-k, beams, penalties)": search_total[0] - model_time[0],
        "text I/O (SentencePiece, sorting, detok)": total - search_total[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--checkpoint", type=Path, required=True)
    args = parser.parse_args()
    source_gz = args.multi30k / "test_2016_flickr.en.gz"
    reference = (
        gzip.decompress((args.multi30k / "test_2016_flickr.de.gz").read_bytes())
        .decode()
        .splitlines()
    )
    print(f"# machine: {machine()}")
    print(
        "| search | precision | seconds (whole command) | vs OpenNMT-py | sentences/s | target pieces/s | peak RSS | BLEU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-tr-") as tmp:
        src = Path(tmp) / "test2016.en"
        src.write_bytes(gzip.decompress(source_gz.read_bytes()))
        outputs = {}
        for search_name, beam in (("beam 5", 5), ("greedy", 1)):
            for precision in ("fp32", "bf16"):
                out = Path(tmp) / f"{beam}-{precision}.de"
                wall, rss = run_measured(
                    [
                        "translate",
                        "-c",
                        str(args.checkpoint),
                        "-i",
                        str(src),
                        "-o",
                        str(out),
                        "--beam",
                        str(beam),
                        "--batch-size",
                        "64",
                        "--precision",
                        precision,
                        "--device",
                        "cpu",
                    ],
                    stderr=subprocess.DEVNULL,
                )
                outputs[(beam, precision)] = out
                n_pieces = pieces(out, args.checkpoint)
                print(
                    f"| {search_name} | {precision} | {wall:.2f} | {PEERS[search_name] / wall:.2f}x faster | "
                    f"{len(reference) / wall:.0f} | {n_pieces / wall:,.0f} | {rss:.0f} MB | "
                    f"{bleu(out, reference):.2f} |",
                    flush=True,
                )
        single = Path(tmp) / "batch1.de"
        run_measured(
            [
                "translate",
                "-c",
                str(args.checkpoint),
                "-i",
                str(src),
                "-o",
                str(single),
                "--beam",
                "5",
                "--batch-size",
                "1",
                "--device",
                "cpu",
            ],
            stderr=subprocess.DEVNULL,
        )
        same = single.read_bytes() == outputs[(5, "fp32")].read_bytes()
        print(f"\nbatch size 1 vs 64 (beam 5, fp32): {'identical' if same else 'DIFFERENT'} output")
        lines = src.read_text(encoding="utf-8").splitlines()
    for search_name, beam in (("beam 5", 5), ("greedy", 1)):
        parts = breakdown(args.checkpoint, lines, beam, "fp32")
        total = sum(parts.values())
        print(f"\nwhere the time goes, {search_name}, fp32 (in-process, {total:.2f} s):")
        for name, seconds in parts.items():
            print(f"  {name:46s} {seconds:6.2f} s  {100 * seconds / total:4.0f}%")


if __name__ == "__main__":
    main()
