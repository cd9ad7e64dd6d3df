#!/usr/bin/env python3
"""Whole-command speed of `s2s translate` on Multi30k test2016 (1,000 sentences, en->de).

For a trained checkpoint of the benchmark size: beam 5 and greedy, fp32 and bf16, batch 64,
each as a separate `s2s translate -i ... -o ...` process (start-up and model load included).
Reports seconds, sentences/s, target pieces/s, peak RSS and detokenized BLEU; checks that batch
sizes 1 and 64 give identical output; then breaks one in-process run down into start-up, model
load, model arithmetic, search bookkeeping and text I/O.

With ``--shortlist FILE`` (from ``s2s shortlist``) it measures the ways to ship a model instead
(``--only deploy``) or as well (``--only all``): beam 5 in fp32, bf16 and int8, each with and
without the shortlist, in alternating rounds (``--rounds``, median reported, every ratio against
fp32 of the same rounds), with BLEU and the shortlist's coverage of the fp32 output.

    python benchmarks/translate_speed.py --checkpoint CKPT [--multi30k DIR]
    python benchmarks/translate_speed.py --checkpoint CKPT --shortlist FILE --only deploy
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
from common import data_dir_argument, machine, run_measured, s2s_command

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


def translate_command(
    model: Path,
    src: Path,
    out: Path,
    beam: int,
    precision: str | None,
    shortlist: Path | None,
    batch_size: int = 64,
) -> list[str]:
    """``s2s translate`` arguments on the CPU (precision: the model's own when None)."""
    args = ["translate", "-c", str(model), "-i", str(src), "-o", str(out), "--beam", str(beam)]
    args += ["--batch-size", str(batch_size), "--device", "cpu"]
    args += ["--precision", precision] if precision else []
    return args + (["--shortlist", str(shortlist)] if shortlist else [])


def shortlist_coverage(
    checkpoint: Path, shortlist: Path, src: Path, hyp: Path
) -> tuple[float, float]:
    """Share of the pieces of the full-vocabulary output ``hyp`` that the shortlist of their
    translation batch holds, and the mean shortlist size (batches as s2s translate makes them)."""
    from s2s_cli.decoding.search import length_sorted_batches
    from s2s_cli.decoding.shortlist import Shortlist, coverage
    from s2s_cli.decoding.translator import Translator

    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    lines = src.read_text(encoding="utf-8").splitlines()
    sources, _ = translator._encode(lines, translator.config.decode.max_source_len)
    outputs = translator.tgt_spm.encode(hyp.read_text(encoding="utf-8").splitlines(), out_type=int)
    todo = [i for i, p in enumerate(sources) if p]
    batches = [
        [todo[k] for k in batch]
        for batch in length_sorted_batches([len(sources[i]) for i in todo], 64, None)
    ]
    return coverage(Shortlist.load(shortlist), sources, outputs, batches)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size


def deploy_rows(
    checkpoint: Path, shortlist: Path, src: Path, reference: list[str], tmp: Path, rounds: int
) -> None:
    """The ways to ship a model, beam 5, in alternating rounds: the checkpoint in fp32, bf16 and
    int8, the int8 export, each with and without the shortlist, and the ONNX export."""
    import statistics

    int8_file, onnx_dir = tmp / "model.int8.pt", tmp / "model-onnx"
    for fmt, out in (("int8", int8_file), ("onnx", onnx_dir)):
        subprocess.run(
            [*s2s_command(), "export", "-c", str(checkpoint), "-o", str(out), "--format", fmt],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    variants = [
        (name, model, precision, listed)
        for listed in (None, shortlist)
        for name, model, precision in (
            ("checkpoint", checkpoint, "fp32"),
            ("checkpoint", checkpoint, "bf16"),
            ("checkpoint", checkpoint, "int8"),
            ("int8 export", int8_file, None),
        )
    ] + [("ONNX export", onnx_dir, None, None)]
    walls: dict[tuple, list[float]] = {v: [] for v in variants}
    rss: dict[tuple, float] = {}
    outputs = {v: tmp / f"deploy-{k}.de" for k, v in enumerate(variants)}
    for _ in range(rounds):
        for variant in variants:
            _, model, precision, listed = variant
            wall, peak = run_measured(
                translate_command(model, src, outputs[variant], 5, precision, listed),
                stderr=subprocess.DEVNULL,
            )
            walls[variant].append(wall)
            rss[variant] = peak
    baseline = variants[0]
    base = statistics.median(walls[baseline])
    base_bleu = bleu(outputs[baseline], reference)
    base_lines = outputs[baseline].read_text(encoding="utf-8").splitlines()
    print(f"\nbeam 5, batch 64, {rounds} alternating rounds (median seconds, whole command):\n")
    print(
        "| model | precision | shortlist | seconds | each round | vs fp32 | peak RSS | BLEU "
        "| vs fp32 | lines differing from fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        name, _, precision, listed = variant
        median = statistics.median(walls[variant])
        score = bleu(outputs[variant], reference)
        lines = outputs[variant].read_text(encoding="utf-8").splitlines()
        differing = sum(a != b for a, b in zip(lines, base_lines, strict=True))
        each = " / ".join(f"{w:.2f}" for w in walls[variant])
        shown = precision or ("int8" if name == "int8 export" else "fp32")
        print(
            f"| {name} | {shown} | {'yes' if listed else 'no'} | {median:.2f} | {each} | "
            f"{base / median:.2f}x | {rss[variant]:.0f} MB | {score:.2f} | "
            f"{score - base_bleu:+.2f} | {differing} |",
            flush=True,
        )
    share, size = shortlist_coverage(checkpoint, shortlist, src, outputs[baseline])
    print(
        f"\nshortlist coverage: {100 * share:.2f}% of the pieces the full-vocabulary fp32 beam "
        f"chose are in their batch's list ({size:.0f} pieces per 64-sentence batch on average)"
    )
    print("\n| file | bytes | vs the checkpoint |\n|---|---|---|")
    for name, path in (
        ("checkpoint", checkpoint),
        ("int8 export", int8_file),
        ("ONNX export", onnx_dir),
    ):
        print(f"| {name} | {size_of(path):,} | {size_of(path) / size_of(checkpoint):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shortlist", type=Path, help="a shortlist file for the deploy rows")
    parser.add_argument(
        "--only",
        choices=("classic", "deploy", "all"),
        default=None,
        help="which table (default: classic, or all with --shortlist)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (deploy rows)")
    args = parser.parse_args()
    only = args.only or ("all" if args.shortlist else "classic")
    if only != "classic" and args.shortlist is None:
        parser.error("--only deploy/all needs --shortlist FILE (s2s shortlist --data DIR)")
    source_gz = args.multi30k / "test_2016_flickr.en.gz"
    reference = (
        gzip.decompress((args.multi30k / "test_2016_flickr.de.gz").read_bytes())
        .decode()
        .splitlines()
    )
    print(f"# machine: {machine()}")
    if only == "deploy":
        with tempfile.TemporaryDirectory(prefix="s2s-bench-tr-") as tmp:
            src = Path(tmp) / "test2016.en"
            src.write_bytes(gzip.decompress(source_gz.read_bytes()))
            deploy_rows(args.checkpoint, args.shortlist, src, reference, Path(tmp), args.rounds)
        return
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
                    translate_command(args.checkpoint, src, out, beam, precision, None),
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
            translate_command(args.checkpoint, src, single, 5, None, None, batch_size=1),
            stderr=subprocess.DEVNULL,
        )
        same = single.read_bytes() == outputs[(5, "fp32")].read_bytes()
        print(f"\nbatch size 1 vs 64 (beam 5, fp32): {'identical' if same else 'DIFFERENT'} output")
        lines = src.read_text(encoding="utf-8").splitlines()
        if only == "all":
            deploy_rows(args.checkpoint, args.shortlist, src, reference, Path(tmp), args.rounds)
    for search_name, beam in (("beam 5", 5), ("greedy", 1)):
        parts = breakdown(args.checkpoint, lines, beam, "fp32")
        total = sum(parts.values())
        print(f"\nwhere the time goes, {search_name}, fp32 (in-process, {total:.2f} s):")
        for name, seconds in parts.items():
            print(f"  {name:46s} {seconds:6.2f} s  {100 * seconds / total:4.0f}%")


if __name__ == "__main__":
    main()
