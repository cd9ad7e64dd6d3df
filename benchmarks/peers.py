#!/usr/bin/env python3
"""s2s beside its peers in one run on this machine: training vs fairseq, translating vs OpenNMT-py.

    python benchmarks/peers.py [--multi30k DIR] [--updates 220] [--rounds 1]    # make bench-peers

1. **Environments** (built once under ``benchmarks/out/peers/``, reused): fairseq-fixed 0.12.3.1
   (the maintained fork of fairseq 0.12 for current Python), built from its source distribution
   without build isolation against the same pinned CPU torch as s2s; OpenNMT-py 3.5.1, which pins
   torch < 2.3, installed without dependencies and then given its declared runtime dependencies
   and s2s's torch. Both environments hold the torch of the one running this script.
2. **Data**: Multi30k en→de; the joint BPE 8,000 SentencePiece model of ``s2s preprocess``
   (``benchmarks/out/multi30k-en-de-bpe8000``) splits the raw text once, and the same pieces feed
   ``fairseq-preprocess --joined-dictionary`` and ``onmt_build_vocab --share_vocab``.
3. **Training** (bench-lstm: embeddings 256, a bidirectional LSTM encoder of 256 per direction,
   an LSTM decoder of 512 with Luong "general" attention and input feeding, untied embeddings,
   every parameter initialised U(-0.1, 0.1) as both peers do; Adam 1e-3, label smoothing 0.1,
   dropout 0.2, clipping at 5, batches of 4,096 tokens, seed 1):
   fairseq's ``lstm`` (fp32: it has no CPU bf16), s2s with input feeding in fp32 and bf16 and
   s2s's fused path (no input feeding) in bf16, each for ``--updates`` updates in its own process,
   one after the other, the order reversed in every other round. Throughput is target tokens per
   second over the logged 10-update windows after the first ``--warmup`` updates (each system's
   own log: fairseq's ``wps``, s2s's ``tokens_per_s``).
4. **Translating** test2016 (1,000 sentences), beam 5 and greedy, batches of 64 sentences: the
   whole ``onmt_translate`` command against the whole ``s2s translate`` command (fp32 and bf16),
   alternating, ``--rounds`` times; the models are OpenNMT-py's bench-lstm and s2s's input-feeding
   fp32 run above, both trained for the same ``--updates`` updates in this run (so their outputs
   have realistic lengths; the BLEU of each is printed). OpenNMT-py reads and writes pieces (its
   SentencePiece splitting is not timed); s2s reads raw text and writes detokenized text. s2s
   also translates with a lexical shortlist (``s2s shortlist --data DATASET``, the defaults,
   built once from the training split, its time printed but not counted), in rows of their own
   whose BLEU is shown beside the full-vocabulary search's: the shortlist changes what the
   search may choose, so its rows are a different setting, never the plain one.

Printed: the CPU model, the fp32 and bf16 matmul rates and the load average beside the tables;
JSON of every measurement goes to ``benchmarks/out/peers/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_MODEL,
    OUT,
    benchmark_dataset,
    cpu_model,
    data_dir_argument,
    gemm_rate,
    machine,
    s2s_translate_command,
)

from s2s_cli.io import read_lines

PEERS = OUT / "peers"
# the torch both peers get: the same as s2s's (make passes its TORCH_SPEC)
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0").split()
FAIRSEQ = "fairseq-fixed==0.12.3.1"
OPENNMT = "OpenNMT-py==3.5.1"
# fairseq 0.12's declared dependencies, less torchaudio (speech tasks only; it has no wheel for
# every torch) and with the build tools it compiles its extensions with
FAIRSEQ_DEPS = [
    "cffi",
    "cython",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "numpy",
    "regex",
    "sacrebleu",
    "tqdm",
    "bitarray",
    "scikit-learn",
    "packaging",
    "setuptools",
    "wheel",
]
# OpenNMT-py 3.5.1's declared dependencies, less its torch pin (it imports every transform, so
# spacy, fasttext and the rest are needed even for plain training)
OPENNMT_DEPS = [
    "configargparse",
    "ctranslate2>=4,<5",
    "tensorboard>=2.3",
    "flask",
    "waitress",
    "pyonmttok>=1.37,<2",
    "pyyaml",
    "sacrebleu",
    "rapidfuzz",
    "pyahocorasick",
    "fasttext-wheel",
    "spacy",
    "six",
    "sentencepiece",
]
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- environments ------------------------------------------------------------------------------


def venv(name: str) -> Path:
    return PEERS / f"{name}-venv"


def ensure_environment(name: str, install: list[list[str]]) -> Path:
    """A virtual environment under benchmarks/out/peers/, built once (``ready`` marks it done)."""
    root = venv(name)
    if (root / "ready").exists():
        return root
    log(f"== building the {name} environment in {root} (once)")
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q"]
    for arguments in install:
        subprocess.run([*pip, *arguments], check=True)
    (root / "ready").write_text("\n".join(" ".join(a) for a in install) + "\n")
    return root


def environments() -> tuple[Path, Path]:
    fairseq = ensure_environment(
        "fairseq",
        [
            [*TORCH_SPEC, *FAIRSEQ_DEPS],
            ["--no-build-isolation", "--no-deps", FAIRSEQ],  # isolation would fetch a CUDA torch
        ],
    )
    opennmt = ensure_environment("onmt", [[*TORCH_SPEC, *OPENNMT_DEPS], ["--no-deps", OPENNMT]])
    return fairseq, opennmt


# -- data --------------------------------------------------------------------------------------


def piece_files(multi30k: Path, dataset: Path) -> Path:
    """Multi30k en/de split into the dataset's SentencePiece pieces, one file per split and side."""
    import gzip

    import sentencepiece as spm

    dest = PEERS / "pieces"
    if (dest / "ready").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    processor = spm.SentencePieceProcessor(model_file=str(dataset / "spm.model"))
    for split, stem in SPLITS.items():
        for lang in ("en", "de"):
            with gzip.open(multi30k / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f]
            pieces = processor.encode(lines, out_type=str)
            (dest / f"{split}.{lang}").write_text("".join(" ".join(p) + "\n" for p in pieces))
    (dest / "ready").write_text("")
    return dest


def fairseq_data(fairseq: Path, pieces: Path) -> Path:
    dest = PEERS / "fairseq-bin"
    if (dest / "ready").exists():
        return dest
    subprocess.run(
        [
            str(fairseq / "bin" / "fairseq-preprocess"),
            "--source-lang", "en", "--target-lang", "de",
            "--trainpref", str(pieces / "train"),
            "--validpref", str(pieces / "valid"),
            "--testpref", str(pieces / "test"),
            "--joined-dictionary", "--workers", "2", "--destdir", str(dest),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    (dest / "ready").write_text("")
    return dest


# -- training ----------------------------------------------------------------------------------

# bench-lstm in each system (12,451,440 parameters in all three on this data)
FAIRSEQ_MODEL = [
    "--arch", "lstm", "--encoder-embed-dim", "256", "--encoder-hidden-size", "256",
    "--encoder-layers", "1", "--encoder-bidirectional", "--decoder-embed-dim", "256",
    "--decoder-hidden-size", "512", "--decoder-layers", "1", "--decoder-out-embed-dim", "512",
    "--decoder-attention", "True", "--dropout", "0.2",
]  # fmt: skip
FAIRSEQ_TRAINING = [
    "--optimizer", "adam", "--lr", "0.001", "--lr-scheduler", "fixed", "--clip-norm", "5",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "4096", "--seed", "1",
]  # fmt: skip
S2S_TRAINING = [
    *BENCH_MODEL,
    "train.lr=0.001",
    "train.clip_norm=5",
    "train.label_smoothing=0.1",
    "train.max_tokens=4096",
    "train.seed=1",
]
S2S_SYSTEMS = {
    "s2s input feeding, fp32": ["model.input_feeding=true", "train.precision=fp32"],
    "s2s input feeding, bf16": ["model.input_feeding=true", "train.precision=bf16"],
    "s2s fast path, bf16": ["model.input_feeding=false", "train.precision=bf16"],
}
TRANSLATION_MODEL = "s2s input feeding, fp32"  # the s2s run whose model translates


def peer_env() -> dict[str, str]:
    # OpenNMT-py 3.5 loads its own checkpoints with torch.load's pre-2.6 default
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(os.cpu_count()),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    }


def steady(windows: list[tuple[int, float]], warmup: int) -> dict:
    """Mean target tokens/s of the logged windows that end after ``warmup`` updates."""
    rates = [rate for update, rate in windows if update > warmup]
    if not rates:
        raise SystemExit(f"benchmarks/peers.py: no logged window after update {warmup}")
    return {
        "tokens_per_s": statistics.fmean(rates),
        "window_min": min(rates),
        "window_max": max(rates),
        "windows": len(rates),
    }


def fairseq_windows(log_text: str) -> list[tuple[int, float]]:
    """(updates so far, target tokens/s) of each ``train_inner`` line of a JSON-format log."""
    windows = []
    for line in log_text.splitlines():
        if "| train_inner |" in line:
            record = json.loads(line.split("| train_inner | ", 1)[1])
            windows.append((int(record["num_updates"]), float(record["wps"])))
    return windows


def onmt_windows(log_text: str) -> list[tuple[int, float]]:
    """(step, target tokens/s) of each ``Step N/M; ... SRC/TGT tok/s`` line of onmt_train."""
    return [
        (int(m.group(1)), float(m.group(2)))
        for m in re.finditer(r"Step (\d+)/\s*\d+;.*?\d+/\s*(\d+) tok/s", log_text)
    ]


def run_timed(
    name: str, command: list[str], env: dict[str, str] | None = None
) -> tuple[str, float]:
    """Run ``command``: its stdout + stderr and wall seconds; exits with its log's end if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    text = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{text[-3000:]}")
    return text, wall


def train_fairseq(fairseq: Path, data: Path, updates: int, warmup: int) -> dict:
    command = [
        str(fairseq / "bin" / "fairseq-train"), str(data), "--cpu", *FAIRSEQ_MODEL,
        *FAIRSEQ_TRAINING, "--max-update", str(updates), "--log-interval", "10",
        "--log-format", "json", "--disable-validation", "--no-save", "--num-workers", "0",
        "--save-dir", str(PEERS / "fairseq-checkpoints"),  # created even with --no-save
    ]  # fmt: skip
    text, wall = run_timed("fairseq-train", command, peer_env())
    params = re.search(r"num\. shared model params: ([\d,]+)", text)
    return {
        **steady(fairseq_windows(text), warmup),
        "parameters": int(params.group(1).replace(",", "")) if params else None,
        "wall_s": wall,
    }


def train_s2s(dataset: Path, overrides: list[str], updates: int, warmup: int, save: Path) -> dict:
    shutil.rmtree(save, ignore_errors=True)
    command = [
        sys.executable, "-m", "s2s_cli", "train", "--data", str(dataset), "--save-dir", str(save),
        "--device", "cpu", *S2S_TRAINING, *overrides, f"train.max_updates={updates}",
        "train.log_every=10", "train.validate_every=100000", "train.valid_max_sentences=1",
    ]  # fmt: skip
    _, wall = run_timed("s2s train", command)
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    windows = [(r["update"], r["tokens_per_s"]) for r in rows if r["kind"] == "train"]
    params = re.search(r"model: ([\d,]+) parameters", (save / "train.log").read_text())
    return {
        **steady(windows, warmup),
        "parameters": int(params.group(1).replace(",", "")) if params else None,
        "wall_s": wall,
    }


def onmt_config(pieces: Path, run: Path, updates: int) -> Path:
    """OpenNMT-py's bench-lstm (shared vocabulary, like the joined dictionaries of the others)."""
    config = {
        "save_data": str(run / "data"),
        "src_vocab": str(run / "vocab.shared"),
        "share_vocab": True,
        "overwrite": True,
        "data": {
            "corpus_1": {
                "path_src": str(pieces / "train.en"),
                "path_tgt": str(pieces / "train.de"),
            },
            "valid": {"path_src": str(pieces / "valid.en"), "path_tgt": str(pieces / "valid.de")},
        },
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": "LSTM",
        "enc_layers": 1,
        "dec_layers": 1,
        "enc_hid_size": 512,
        "dec_hid_size": 512,
        "word_vec_size": 256,
        "global_attention": "general",
        "input_feed": 1,
        "dropout": [0.2],
        "batch_type": "tokens",
        "batch_size": 4096,
        "optim": "adam",
        "learning_rate": 0.001,
        "max_grad_norm": 5,
        "label_smoothing": 0.1,
        "train_steps": updates,
        "valid_steps": 10**6,
        "save_checkpoint_steps": updates,
        "save_model": str(run / "model"),
        "report_every": 10,
        "seed": 1,
        # no loader processes competing with the compute threads for 2 cores, and buckets of
        # 32,768 examples instead of 262,144 (whose filling delayed the first update by minutes)
        "num_workers": 0,
        "bucket_size": 32768,
    }
    path = run / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def train_onmt(opennmt: Path, pieces: Path, updates: int, warmup: int, run: Path) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    config = onmt_config(pieces, run, updates)
    bin_dir = opennmt / "bin"
    subprocess.run(
        [str(bin_dir / "onmt_build_vocab"), "-config", str(config), "-n_sample", "-1"],
        check=True, capture_output=True, env=peer_env(),
    )  # fmt: skip
    text, wall = run_timed(
        "onmt_train", [str(bin_dir / "onmt_train"), "-config", str(config)], peer_env()
    )
    params = re.search(r"number of parameters: (\d+)", text)
    return {
        **steady(onmt_windows(text), warmup),
        "parameters": int(params.group(1)) if params else None,
        "wall_s": wall,
        "model": str(run / f"model_step_{updates}.pt"),
    }


# -- translating -------------------------------------------------------------------------------


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def translate_onmt(opennmt: Path, model: str, pieces: Path, beam: int, out: Path) -> tuple:
    command = [
        str(opennmt / "bin" / "onmt_translate"), "-model", model, "-src", str(pieces / "test.en"),
        "-output", str(out), "-beam_size", str(beam), "-batch_size", "64", "-batch_type", "sents",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=peer_env())
    return time.perf_counter() - start, out


def translate_s2s(
    checkpoint: Path, source: Path, beam: int, system: str, out: Path, shortlist: Path
) -> tuple:
    """``system``: "s2s PRECISION", or "s2s PRECISION + shortlist"."""
    precision = system.split()[1]
    listed = shortlist if system.endswith("+ shortlist") else None
    command = s2s_translate_command(checkpoint, source, out, beam, precision, listed)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start, out


def build_shortlist(dataset: Path) -> tuple[Path, float]:
    """``s2s shortlist`` with its defaults on the benchmark's dataset: (the file, seconds)."""
    path = PEERS / "shortlist.npz"
    command = [
        sys.executable, "-m", "s2s_cli", "shortlist", "--data", str(dataset), "-o", str(path),
    ]  # fmt: skip
    _, wall = run_timed("s2s shortlist", command)
    return path, wall


TRANSLATORS = ("OpenNMT-py", "s2s fp32", "s2s bf16", "s2s fp32 + shortlist", "s2s bf16 + shortlist")


def detokenized(path: Path, spm_model: Path, pieces: bool) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not pieces:
        return lines
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    return [processor.decode(line.split()) for line in lines]


# -- the run -----------------------------------------------------------------------------------


def training_table(results: dict, order: list[str]) -> list[str]:
    base = statistics.median(r["tokens_per_s"] for r in results["fairseq lstm, fp32"])
    lines = [
        "| system | target tok/s (mean of windows) | window range | vs fairseq | parameters | wall |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        runs = results[name]
        rate = statistics.median(r["tokens_per_s"] for r in runs)
        low = min(r["window_min"] for r in runs)
        high = max(r["window_max"] for r in runs)
        params = runs[0]["parameters"]
        lines.append(
            f"| {name} | {rate:,.0f} | {low:,.0f}–{high:,.0f} | {rate / base:.2f}x | "
            f"{params:,} | {statistics.median(r['wall_s'] for r in runs):.0f} s |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--updates", type=int, default=220, help="updates per training run")
    parser.add_argument("--warmup", type=int, default=20, help="updates left out of the rate")
    parser.add_argument("--rounds", type=int, default=1, help="training rounds (order alternates)")
    parser.add_argument("--translate-rounds", type=int, default=3)
    args = parser.parse_args()
    began = time.perf_counter()
    PEERS.mkdir(parents=True, exist_ok=True)
    fairseq, opennmt = environments()
    dataset = benchmark_dataset(args.multi30k)
    pieces = piece_files(args.multi30k, dataset)
    fairseq_bin = fairseq_data(fairseq, pieces)
    source = args.multi30k / "test_2016_flickr.en.gz"
    references = list(read_lines(args.multi30k / "test_2016_flickr.de.gz"))

    header = [
        f"# CPU: {cpu_model()} ({machine()})",
        f"# matmul 2048^3: fp32 {gemm_rate('fp32'):.0f} GFLOP/s, bf16 {gemm_rate('bf16'):.0f} GFLOP/s",
        f"# bench-lstm, Multi30k en-de, 4,096-token batches, {args.updates} updates per run, "
        f"rates over the windows after update {args.warmup}",
    ]
    print("\n".join(header), flush=True)

    systems = ["fairseq lstm, fp32", *S2S_SYSTEMS]
    training: dict[str, list[dict]] = {name: [] for name in systems}
    runs = PEERS / "runs"
    for round_ in range(args.rounds):
        for name in systems if round_ % 2 == 0 else systems[::-1]:
            log(f"== training: {name} (round {round_ + 1})")
            if name.startswith("fairseq"):
                result = train_fairseq(fairseq, fairseq_bin, args.updates, args.warmup)
            else:
                save = runs / name.replace(" ", "-").replace(",", "")
                result = train_s2s(dataset, S2S_SYSTEMS[name], args.updates, args.warmup, save)
                if name == TRANSLATION_MODEL:
                    result["model"] = str(save / "checkpoint_last.pt")
            training[name].append(result)
            log(f"   {result['tokens_per_s']:,.0f} target tok/s")
    log("== training: OpenNMT-py (its model translates below)")
    onmt = train_onmt(opennmt, pieces, args.updates, args.warmup, runs / "onmt")
    training["OpenNMT-py, fp32"] = [onmt]
    print("\n" + "\n".join(training_table(training, [*systems, "OpenNMT-py, fp32"])), flush=True)

    s2s_model = Path(training[TRANSLATION_MODEL][-1]["model"])
    log("== building the lexical shortlist (s2s shortlist, defaults)")
    shortlist, shortlist_seconds = build_shortlist(dataset)
    configs = [(beam, system) for beam in (5, 1) for system in TRANSLATORS]
    seconds: dict[tuple[int, str], list[float]] = {c: [] for c in configs}
    outputs: dict[tuple[int, str], Path] = {}
    translations = PEERS / "translations"
    translations.mkdir(exist_ok=True)
    for round_ in range(args.translate_rounds):
        for beam, system in configs if round_ % 2 == 0 else configs[::-1]:
            out = translations / f"beam{beam}.{system.replace(' ', '-')}.txt"
            log(f"== translating test2016: {system}, beam {beam} (round {round_ + 1})")
            if system == "OpenNMT-py":
                wall, path = translate_onmt(opennmt, onmt["model"], pieces, beam, out)
            else:
                wall, path = translate_s2s(s2s_model, source, beam, system, out, shortlist)
            seconds[(beam, system)].append(wall)
            outputs[(beam, system)] = path

    lines = [
        "| search | system | seconds (median) | each round | vs OpenNMT-py | BLEU | words per line |",
        "|---|---|---|---|---|---|---|",
    ]
    reference_words = sum(len(r.split()) for r in references) / len(references)
    translation_rows = []
    scores: dict[tuple[int, str], float] = {}
    for beam, system in configs:
        median = statistics.median(seconds[(beam, system)])
        base = statistics.median(seconds[(beam, "OpenNMT-py")])
        hypotheses = detokenized(
            outputs[(beam, system)], dataset / "spm.model", pieces=system == "OpenNMT-py"
        )
        score = scores[(beam, system)] = corpus_bleu(hypotheses, references)
        bleu = f"{score:.2f}"
        full = system.removesuffix(" + shortlist")
        if full != system:  # beside the same search over the whole vocabulary
            bleu += f" ({score - scores[(beam, full)]:+.2f} vs {full})"
        words = sum(len(h.split()) for h in hypotheses) / len(hypotheses)
        search = "beam 5" if beam == 5 else "greedy"
        rounds = " / ".join(f"{s:.2f}" for s in seconds[(beam, system)])
        lines.append(
            f"| {search} | {system} | {median:.2f} | {rounds} | {base / median:.2f}x | "
            f"{bleu} | {words:.1f} |"
        )
        translation_rows.append(
            {"beam": beam, "system": system, "seconds": seconds[(beam, system)], "bleu": score,
             "words_per_line": words}
        )  # fmt: skip
    print(
        f"\n# translating test2016 (1,000 sentences, batches of 64; reference {reference_words:.1f} "
        f"words per line), whole command; models trained for {args.updates} updates above; "
        f"the shortlist (built once in {shortlist_seconds:.0f} s, not counted) scores a few "
        "thousand of the 8,000 pieces per batch",
        flush=True,
    )
    print("\n".join(lines))
    total = time.perf_counter() - began
    print(f"\n# whole benchmark: {total / 60:.1f} min; {machine()}")
    results = {
        "header": header,
        "training": training,
        "translation": translation_rows,
        "shortlist_build_s": shortlist_seconds,
        "minutes": total / 60,
    }
    (PEERS / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
