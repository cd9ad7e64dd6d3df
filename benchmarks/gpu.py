#!/usr/bin/env python3
"""GPU throughput of s2s training and decoding, each beside a plain-PyTorch reference in one run.

    python benchmarks/gpu.py train  --data DATASET_DIR [--out DIR]
    python benchmarks/gpu.py trainer --data DATASET_DIR [--updates 500 --turns 2]
    python benchmarks/gpu.py decode --checkpoint CKPT --source test.en.gz [--big-lines 100000]

``train`` times updates (forward, backward, clipping, Adam) in this process, with CUDA
synchronised around the timed window, in steady state (a second pass over the same batches), for

* bench-lstm (BENCH_MODEL of benchmarks/common.py) on the real Multi30k batches of DATASET_DIR
  (4,096-token batches): s2s in fp32/bf16/fp16, the choices s2s makes per device (the RNN's
  precision, fused vs plain loss, gathered vs weighted positions, fused vs foreach Adam), the
  input-feeding model, and the reference loop;
* a GNMT-v2-shaped model: 4-layer 1024-unit LSTM encoder whose first layer is bidirectional,
  4-layer 1024 decoder with attention, 32k vocabulary, synthetic batches of 128 sentences of
  25-30 tokens: s2s vs the reference loop; ``--profile`` adds where one update's time goes
  (kernels per update, GPU busy time against wall time, the costliest kernels) for both.

``--interleave N`` then builds s2s's main choices and the reference loop once per model and
measures them in N turns (ABC..ABC..), reporting each one's median and its ratio to the reference
loop's median: the same configuration measured twice in one process differed by up to 20% on an
H200, so single rows decide nothing; ``--only interleaved`` leaves the one-by-one rows out.
The synthetic GNMT batches carry their token counts on the host, as ``collate`` gives them to the
trainer (before 2026-11-27 they did not, and each s2s update read its counts back from the GPU).

``trainer`` runs the trainer itself (``s2s train``'s code) on the Multi30k GPU recipe's model, in
the recipe's bf16 and in fp32, in turns, and reports the medians of its own log's tokens/s.

The reference loop is what a user writes by hand: ``nn.Embedding``, ``nn.LSTM`` over padded
batches, batched attention, ``nn.Linear`` over every position and ``F.cross_entropy`` with label
smoothing, the same Adam, clipping and autocast. MFU is model FLOPs per target token (forward x 3)
times tokens/s over a bf16 matmul (8192^3) measured in the same run.

``decode`` times ``Translator.translate_hypotheses`` (SentencePiece in and out included, model
loading not) on the given source file and on a synthetic file of --big-lines lines drawn from it
and --extra sources, for beam 5 and greedy, batch 128 and a larger batch, bf16 and fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import BENCH_MODEL

from s2s_cli.config import TrainConfig, load_config
from s2s_cli.data.batching import make_batches
from s2s_cli.data.dataset import Dataset
from s2s_cli.data.loader import Batch, collate
from s2s_cli.data.spm import BOS, EOS, PAD
from s2s_cli.device import autocast
from s2s_cli.models import recurrent
from s2s_cli.models.build import build_model, parameter_counts
from s2s_cli.models.recurrent import cudnn_rnn_supports
from s2s_cli.training import schedule
from s2s_cli.training import step as step_module
from s2s_cli.training.distributed import DistributedContext
from s2s_cli.training.schedule import build_optimizer
from s2s_cli.training.step import LossModule, Updater

GNMT_MODEL = [
    "model.embed_dim=1024",
    "model.hidden_size=1024",
    "model.encoder_hidden_size=1024",
    "model.encoder_layers=4",
    "model.bidirectional_layers=1",
    "model.decoder_layers=4",
    "model.attention=general",
    "model.attention_placement=luong",
    "model.input_feeding=false",
    "model.bridge=zero",
    "model.share_embeddings=true",
    "model.dropout=0.2",
]


# -- the measured ceiling ---------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def environment(device: torch.device) -> dict:
    if device.type != "cuda":  # a dry run of the script itself
        return {"gpu": "none (CPU dry run)", "torch": torch.__version__, "bf16_matmul_tflops": 1.0}
    return {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_bf16_rnn": cudnn_rnn_supports(torch.bfloat16, device),
        "bf16_matmul_tflops": matmul_tflops(device),
    }


# -- FLOPs ------------------------------------------------------------------------------------


def flops_per_target_token(cfg, vocab: int, src_per_tgt: float, src_len: float) -> float:
    """Training FLOPs (forward x 3) per target token; matrix products only, LSTM gates = 4."""
    m = cfg.model
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[m.cell]
    enc_out, hidden, embed = m.encoder_output_size, m.hidden_size, m.embed_dim
    bidi = m.encoder_layers if m.bidirectional_layers is None else m.bidirectional_layers
    bidi = bidi if m.bidirectional else 0
    encoder = 0.0
    for layer in range(m.encoder_layers):
        directions = 2 if layer < bidi else 1
        size = enc_out // directions
        inputs = embed if layer == 0 else enc_out
        encoder += directions * 2 * gates * size * (inputs + size)
    keys = 2 * enc_out * hidden if m.attention in ("general", "additive") else 0
    decoder = 0.0
    for layer in range(m.decoder_layers):
        inputs = (embed + (hidden if m.input_feeding else 0)) if layer == 0 else hidden
        decoder += 2 * gates * hidden * (inputs + hidden)
    attention = 2 * src_len * (hidden + enc_out) if m.attention != "none" else 0
    combine = 2 * (enc_out + hidden) * hidden if m.attention != "none" else 0
    output = 2 * hidden * vocab + (2 * hidden * embed if m.tie_embeddings else 0)
    forward = src_per_tgt * (encoder + keys) + decoder + attention + combine + output
    return 3 * forward


# -- the plain-PyTorch reference loop ---------------------------------------------------------


class Reference(nn.Module):
    """Encoder-decoder as a user writes it by hand: padded nn.LSTM calls, no packing."""

    def __init__(self, cfg, vocab: int) -> None:
        super().__init__()
        m = cfg.model
        self.embed = nn.Embedding(vocab, m.embed_dim, padding_idx=PAD)
        self.tgt_embed = self.embed if m.share_embeddings else nn.Embedding(vocab, m.embed_dim)
        enc_out, hidden = m.encoder_output_size, m.hidden_size
        bidi = m.encoder_layers if m.bidirectional_layers is None else m.bidirectional_layers
        bidi = bidi if m.bidirectional else 0
        self.bottom = nn.LSTM(
            m.embed_dim,
            enc_out // 2 if bidi else enc_out,
            num_layers=max(bidi, 1),
            bidirectional=bidi > 0,
            batch_first=True,
        )
        upper = m.encoder_layers - max(bidi, 1)
        self.upper = nn.LSTM(enc_out, enc_out, upper, batch_first=True) if upper > 0 else None
        self.decoder = nn.LSTM(m.embed_dim, hidden, m.decoder_layers, batch_first=True)
        self.key = nn.Linear(enc_out, hidden, bias=False)
        self.combine = nn.Linear(enc_out + hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, vocab)
        self.bridge = m.bridge
        self.dropout = nn.Dropout(m.dropout)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        x, (h, c) = self.bottom(self.dropout(self.embed(src)))
        if self.upper is not None:
            x, (h, c) = self.upper(self.dropout(x))
        state = None
        if self.bridge != "zero":  # final states, directions concatenated (bench-lstm)
            batch = src.size(0)
            state = tuple(s.view(-1, 2, batch, s.size(-1)).transpose(1, 2) for s in (h, c))
            state = tuple(s.reshape(-1, batch, 2 * s.size(-1)).contiguous() for s in state)
        y, _ = self.decoder(self.dropout(self.tgt_embed(tgt_in)), state)
        scores = torch.bmm(y, self.key(x).transpose(1, 2))
        scores = scores.masked_fill((src == PAD).unsqueeze(1), float("-inf"))
        context = torch.bmm(torch.softmax(scores.float(), dim=-1).to(x.dtype), x)
        features = torch.tanh(self.combine(torch.cat([context, y], dim=-1)))
        return self.out(self.dropout(features))


def reference_step(model, optimizer, scaler, precision: str, device: torch.device):
    def step(batch: Batch) -> None:
        with autocast(device, precision):
            logits = model(batch.src, batch.tgt_in)
            tokens = (batch.tgt_out != PAD).sum()
            loss = (
                F.cross_entropy(
                    logits.view(-1, logits.size(-1)).float(),
                    batch.tgt_out.view(-1),
                    ignore_index=PAD,
                    label_smoothing=0.1,
                    reduction="sum",
                )
                / tokens
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# -- measuring --------------------------------------------------------------------------------


def measure(step, batches: list[Batch], device: torch.device, warm: bool = True) -> dict:
    """Steady state: one untimed pass over all batches (unless ``warm`` is False: the step has
    seen them), then a timed pass over the same ones.

    cuDNN and cuBLAS plan per shape on first sight, which made whichever variant ran first
    look up to 1.6x slower in the first runs (docs/benchmarks.md, "GPU").
    """
    if warm:
        for batch in batches:
            step(batch)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens = sum(int((b.tgt_out != PAD).sum()) for b in batches)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "tokens_per_s": tokens / seconds,
        "updates": len(batches),
        "ms_per_update": 1000 * seconds / len(batches),
        "peak_gib": peak_gib(device),
    }


@contextlib.contextmanager
def choices(rnn: str | None = None, gather: bool | None = None, fused_adam: bool | None = None):
    """The per-device choices s2s makes, set for one measurement and restored afterwards:
    ``rnn`` recurrent.BF16_RNN_ON_CUDA, ``gather`` step.GATHER_POSITIONS["cuda"], ``fused_adam``
    schedule.FUSED_ADAM["cuda"] (None: the default)."""
    saved = (
        recurrent.BF16_RNN_ON_CUDA,
        step_module.GATHER_POSITIONS["cuda"],
        schedule.FUSED_ADAM["cuda"],
    )
    try:
        if rnn is not None:
            recurrent.BF16_RNN_ON_CUDA = rnn
        if gather is not None:
            step_module.GATHER_POSITIONS["cuda"] = gather
        if fused_adam is not None:
            schedule.FUSED_ADAM["cuda"] = fused_adam
        yield
    finally:
        recurrent.BF16_RNN_ON_CUDA, step_module.GATHER_POSITIONS["cuda"] = saved[:2]
        schedule.FUSED_ADAM["cuda"] = saved[2]


def profile_steps(name: str, step, batches: list[Batch], device: torch.device, updates: int = 3):
    """Where an update's time goes: kernels per update, GPU busy time against wall time, and the
    kernels that take the most GPU time (printed, and returned for the JSON)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for batch in batches[:updates]:
            step(batch)
        sync(device)
        wall = (time.perf_counter() - start) / updates
    events = prof.key_averages()

    def device_us(e) -> float:
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))

    # the GPU's own activities (kernels, copies, memsets), not the CPU ops that launched them
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and device_us(e) > 0]
    busy = sum(device_us(e) for e in kernels) / updates / 1e6
    launches = sum(e.count for e in kernels) / updates
    top = sorted(kernels, key=device_us, reverse=True)[:15]
    cpu_ops = sum(e.count for e in events if e.key.startswith("aten::")) / updates
    result = {
        "name": name,
        "wall_ms_per_update": 1000 * wall,
        "gpu_busy_ms_per_update": 1000 * busy,
        "kernels_per_update": launches,
        "aten_ops_per_update": cpu_ops,
        "top_kernels": [
            {"kernel": e.key[:120], "calls": e.count / updates, "ms": device_us(e) / updates / 1000}
            for e in top
        ],
    }
    print(
        f"# profile {name}: {result['wall_ms_per_update']:.1f} ms/update wall, GPU busy "
        f"{result['gpu_busy_ms_per_update']:.1f} ms, {launches:,.0f} kernels, "
        f"{cpu_ops:,.0f} aten ops per update",
        flush=True,
    )
    for row in result["top_kernels"]:
        print(f"#   {row['ms']:7.2f} ms {row['calls']:6.0f}x  {row['kernel']}", flush=True)
    return result


def s2s_step(cfg, vocab, precision, device, encoder_impl="auto", fused=None):
    """One s2s update: the trainer's Updater and optimizer (call inside :func:`choices`)."""
    torch.manual_seed(1)
    model = build_model(cfg.model, vocab, vocab).to(device)
    model.encoder.impl = encoder_impl
    optimizer = build_optimizer(model.parameters(), TrainConfig(lr=1e-3))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    loss_module = LossModule(model, 0.1, fused=fused)
    updater = Updater(loss_module, optimizer, scaler, device, precision, 5.0, DistributedContext())
    params = parameter_counts(model)["total"]
    return (lambda batch: updater.update([batch], 1.0)), params


def ref_step(cfg, vocab, precision, device):
    torch.manual_seed(1)
    model = Reference(cfg, vocab).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    params = sum(p.numel() for p in model.parameters())
    return reference_step(model, optimizer, scaler, precision, device), params


def multi30k_batches(data: Path, device: torch.device, count: int) -> tuple[list[Batch], int]:
    dataset = Dataset(data)
    split = dataset.split("train")
    order = make_batches(split.src_sizes + 1, split.tgt_sizes + 1, 4096, None, 1, 1)
    batches = [collate(split, indices).to(device) for indices in order[:count]]
    return batches, dataset.vocab_sizes[1]


def synthetic_batches(
    device: torch.device, count: int, sentences: int = 128, vocab: int = 32000
) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        src_len = torch.randint(25, 31, (sentences,), generator=g)
        tgt_len = torch.randint(25, 31, (sentences,), generator=g)
        src = torch.full((sentences, int(src_len.max()) + 1), PAD)
        tgt_in = torch.full((sentences, int(tgt_len.max()) + 1), PAD)
        tgt_out = tgt_in.clone()
        for i in range(sentences):
            s, t = int(src_len[i]), int(tgt_len[i])
            src[i, :s] = torch.randint(4, vocab, (s,), generator=g)
            src[i, s] = EOS
            words = torch.randint(4, vocab, (t,), generator=g)
            tgt_in[i, 0], tgt_in[i, 1 : t + 1] = BOS, words
            tgt_out[i, :t], tgt_out[i, t] = words, EOS
        # the token counts known on the host, as collate gives them to the trainer (without
        # them every update read its counts back from the GPU: three waits per update)
        counts = int((src_len + 1).sum()), int((tgt_len + 1).sum())
        batch = Batch(src, src_len + 1, tgt_in, tgt_out, torch.arange(sentences), *counts)
        batches.append(batch.to(device))
    return batches


def run_train(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    env = environment(device)
    print(f"# {json.dumps(env)}", flush=True)
    rows: list[dict] = []
    profiles: list[dict] = []
    summaries: list[dict] = []

    def record(model: str, system: str, result: dict, flops: float, params: int) -> None:
        result.update(model=model, system=system, params=params)
        result["mfu"] = flops * result["tokens_per_s"] / (env["bf16_matmul_tflops"] * 1e12)
        rows.append(result)
        print(
            f"{model:10s} {system:52s} {result['tokens_per_s']:>10,.0f} tok/s "
            f"{result['ms_per_update']:7.2f} ms/update  peak {result['peak_gib']:.2f} GiB  "
            f"MFU {100 * result['mfu']:.1f}%",
            flush=True,
        )

    batches, vocab = multi30k_batches(args.data, device, args.updates)
    manifest = json.loads((args.data / "manifest.json").read_text())["splits"]["train"]
    n = manifest["sentences"]
    src_per_tgt = (manifest["tokens"]["src"] + n) / (manifest["tokens"]["tgt"] + n)
    src_len = (manifest["tokens"]["src"] + n) / n
    bench = load_config(overrides=[*BENCH_MODEL, "model.input_feeding=false"])
    feeding = load_config(overrides=[*BENCH_MODEL, "model.input_feeding=true"])
    flops = flops_per_target_token(bench, vocab, src_per_tgt, src_len)
    flops_feeding = flops_per_target_token(feeding, vocab, src_per_tgt, src_len)
    gnmt = load_config(overrides=GNMT_MODEL)
    gnmt_batches = synthetic_batches(device, args.gnmt_updates, sentences=args.gnmt_sentences)
    gnmt_flops = flops_per_target_token(gnmt, 32000, 1.0, 28.5)
    dry_run = device.type != "cuda"  # fp16 needs CUDA: a CPU dry run leaves it out
    one_by_one = args.only not in ("gnmt", "interleaved")

    # (name, config, precision, choices, s2s_step options); the first row is the default
    variants = [
        ("s2s fast path, bf16", bench, "bf16", {}, {}),
        ("s2s fast path, bf16, gathered positions (sync)", bench, "bf16", {"gather": True}, {}),
        ("s2s fast path, bf16, foreach Adam", bench, "bf16", {"fused_adam": False}, {}),
        ("s2s fast path, bf16, RNN bf16", bench, "bf16", {"rnn": "bf16"}, {}),
        ("s2s fast path, bf16, fused loss", bench, "bf16", {}, {"fused": True}),
        ("s2s fast path, fp16", bench, "fp16", {}, {}),
        ("s2s fast path, fp32", bench, "fp32", {}, {}),
        ("s2s input feeding, bf16", feeding, "bf16", {}, {}),
        ("s2s input feeding, fp32", feeding, "fp32", {}, {}),
    ]
    for name, cfg, precision, chosen, options in variants if one_by_one else []:
        if dry_run and precision == "fp16":
            continue
        with choices(**chosen):
            step, params = s2s_step(cfg, vocab, precision, device, **options)
            result = measure(step, batches, device)
        record("bench-lstm", name, result, flops_feeding if cfg is feeding else flops, params)
    for precision in (("bf16",) if dry_run else ("bf16", "fp16")) if one_by_one else ():
        step, params = ref_step(bench, vocab, precision, device)
        result = measure(step, batches, device)
        record("bench-lstm", f"reference loop, {precision}", result, flops, params)

    gnmt_variants = [
        ("s2s, bf16", "bf16", {}),
        ("s2s, bf16, gathered positions (sync)", "bf16", {"gather": True}),
        ("s2s, bf16, foreach Adam", "bf16", {"fused_adam": False}),
        ("s2s, bf16, RNN bf16", "bf16", {"rnn": "bf16"}),
        ("s2s, bf16, RNN autocast fp16", "bf16", {"rnn": "autocast"}),
        ("s2s, fp16", "fp16", {}),
        # the default again, last: how much of the gaps above is the order of measurement
        ("s2s, bf16 (again, measured last)", "bf16", {}),
    ]
    if args.only != "interleaved":
        for name, precision, chosen in gnmt_variants[: 1 if dry_run else len(gnmt_variants)]:
            with choices(**chosen):
                step, params = s2s_step(gnmt, 32000, precision, device)
                result = measure(step, gnmt_batches, device)
            record("gnmt-v2", name, result, gnmt_flops, params)
            if name == "s2s, bf16" and args.profile and not args.interleave:
                profiles.append(profile_steps("gnmt-v2 s2s, bf16", step, gnmt_batches, device))
        for precision in ("bf16",) if dry_run else ("bf16", "fp16"):
            step, params = ref_step(gnmt, 32000, precision, device)
            result = measure(step, gnmt_batches, device)
            record("gnmt-v2", f"reference loop, {precision}", result, gnmt_flops, params)
            if precision == "bf16" and args.profile and not args.interleave:
                profiles.append(
                    profile_steps("gnmt-v2 reference loop, bf16", step, gnmt_batches, device)
                )

    if args.interleave:
        # Every system built once, then measured in turns (ABC..ABC..): one configuration
        # measured twice in a process differed by up to 20% on an H200, so the ratio of the
        # medians over the turns is the claim, not any single pair of rows.
        half = [] if dry_run else ["fp16"]
        lstm_systems = [
            ("s2s fast path, bf16", bench, "bf16", {}),
            ("s2s fast path, bf16, RNN autocast fp16", bench, "bf16", {"rnn": "autocast"}),
            ("s2s fast path, fp32", bench, "fp32", {}),
        ]
        gnmt_systems = [
            ("s2s, bf16", gnmt, "bf16", {}),
            ("s2s, bf16, RNN autocast fp16", gnmt, "bf16", {"rnn": "autocast"}),
            ("s2s, bf16, RNN bf16", gnmt, "bf16", {"rnn": "bf16"}),
            *[("s2s, fp16", gnmt, "fp16", {}) for _ in half],
        ]
        for model, systems, data, model_flops, vocab_size in (
            ("bench-lstm", lstm_systems, batches, flops, vocab),
            ("gnmt-v2", gnmt_systems, gnmt_batches, gnmt_flops, 32000),
        ):
            if args.only == "gnmt" and model == "bench-lstm":
                continue
            cfg = systems[0][1]
            built = []
            for name, config, precision, chosen in systems:
                with choices(**chosen):
                    step, params = s2s_step(config, vocab_size, precision, device)
                built.append((name, step, params, chosen))
            for precision in ("bf16", *half):
                step, params = ref_step(cfg, vocab_size, precision, device)
                built.append((f"reference loop, {precision}", step, params, {}))
            summaries.append(
                interleave(model, built, data, device, args.interleave, model_flops, record)
            )
            if model == "gnmt-v2" and args.profile:
                for name, step, _, chosen in (built[0], built[len(systems)]):
                    with choices(**chosen):
                        profiles.append(profile_steps(f"gnmt-v2 {name}", step, data, device))
    return {"environment": env, "rows": rows, "interleaved": summaries, "profiles": profiles}


def interleave(model: str, built: list, batches, device, turns: int, flops, record) -> dict:
    """``turns`` rounds over the built systems, each measured once per round; the median tokens/s
    of each and its ratio to the reference loop's median (bf16), printed and returned."""
    seen: dict[str, list[float]] = {name: [] for name, *_ in built}
    for turn in range(turns):
        for name, step, params, chosen in built:
            with choices(**chosen):
                result = measure(step, batches, device, warm=turn == 0)
            record(model, f"{name} (turn {turn + 1})", result, flops, params)
            seen[name].append(result["tokens_per_s"])
    medians = {name: statistics.median(v) for name, v in seen.items()}
    reference = medians["reference loop, bf16"]
    summary = {
        "model": model,
        "turns": turns,
        "tokens_per_s": seen,
        "median_tokens_per_s": medians,
        "median_over_reference_bf16": {name: m / reference for name, m in medians.items()},
    }
    print(f"# {model}, medians over {turns} interleaved turns:", flush=True)
    for name, median in medians.items():
        print(
            f"#   {name:52s} {median:>10,.0f} tok/s  {median / reference:.2f}x the reference (bf16)"
            f"  [{', '.join(f'{v:,.0f}' for v in seen[name])}]",
            flush=True,
        )
    return summary


def run_trainer(args: argparse.Namespace) -> dict:
    """The trainer itself (``s2s_cli.train``, what ``s2s train`` runs) on the Multi30k GPU recipe's
    model in the recipe's precision (bf16) and in fp32, in turns; tokens/s from the trainer's own
    log windows (the first left out), the median of each run, then the median over the turns."""
    import tempfile

    from s2s_cli import train

    recipe = Path(__file__).resolve().parent.parent / "recipes/multi30k/gpu.yaml"
    overrides = [
        "train.max_minutes=null",
        f"train.max_updates={args.updates}",
        "train.validate_every=1000000",  # no validation inside the timed windows
        "train.validate_metric=loss",  # the final one: cheap
        "train.log_every=50",
    ]
    if args.device == "cpu":  # a dry run of the script itself
        overrides += [
            "model.hidden_size=32",
            "model.embed_dim=32",
            "model.encoder_hidden_size=32",
            "train.max_tokens=512",
            "train.log_every=2",
        ]
    systems = {
        "s2s train, bf16 (the recipe)": load_config(recipe, overrides=overrides),
        "s2s train, fp32": load_config(recipe, overrides=[*overrides, "train.precision=fp32"]),
    }
    seen: dict[str, list[float]] = {name: [] for name in systems}
    for turn in range(args.turns):
        for name, cfg in systems.items():
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train(cfg, args.data, Path(tmp), device=args.device)
                wall = time.perf_counter() - start
                lines = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
            speeds = [r["tokens_per_s"] for r in map(json.loads, lines) if r["kind"] == "train"]
            median = statistics.median(speeds[1:])
            seen[name].append(median)
            print(
                f"{name} (turn {turn + 1}): median {median:,.0f} tok/s over "
                f"{len(speeds) - 1} log windows, {wall:.1f} s in all",
                flush=True,
            )
    medians = {name: statistics.median(v) for name, v in seen.items()}
    bf16, fp32 = medians.values()
    print(
        f"# trainer: fp32 / bf16 = {fp32 / bf16:.2f}x (medians over {args.turns} turns)", flush=True
    )
    return {"updates": args.updates, "turns": args.turns, "tokens_per_s": seen, "medians": medians}


# -- decoding ---------------------------------------------------------------------------------


def run_decode(args: argparse.Namespace) -> dict:
    from s2s_cli import Translator
    from s2s_cli.decoding import graphed_beam
    from s2s_cli.io import read_lines

    device = torch.device(args.device)
    env = environment(device)
    print(f"# {json.dumps(env)}", flush=True)
    translator = Translator.from_checkpoint(args.checkpoint, device=args.device)
    params = parameter_counts(translator.models[0])["total"]
    source = list(read_lines(args.source))
    pool = list(source)
    for extra in args.extra:
        pool.extend(read_lines(extra))
    rng = random.Random(1)
    big = [rng.choice(pool) for _ in range(args.big_lines)]
    rows = []

    seconds_per_line: dict[str, float] = {}  # per options, from the rows measured so far

    def time_one(name: str, lines: list[str], **options) -> list[str]:
        key = json.dumps(options, sort_keys=True)
        expected = seconds_per_line.get(key, 0.0) * (len(lines) + min(len(lines), 2000))
        if time.perf_counter() + expected > deadline:
            print(f"{name} {key}: skipped (time budget; about {expected:.0f} s)", flush=True)
            return []
        # warm-up: weight casts, cuDNN/cuBLAS plans and recorded CUDA graphs for the shapes the
        # timed pass meets; where it covers the whole input it is also timed (a cold first pass)
        start = time.perf_counter()
        translator.translate_hypotheses(lines[:2000], **options)
        sync(device)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        out = translator.translate_hypotheses(lines, **options)
        sync(device)
        seconds = time.perf_counter() - start
        tokens = sum(len(t.hypotheses[0].tokens) + 1 for t in out)  # pieces + EOS
        row = {"set": name, **options, "lines": len(lines), "seconds": seconds}
        row["tokens_per_s"] = tokens / seconds
        if len(lines) <= 2000:
            row["cold_tokens_per_s"] = tokens / cold
        row["sentences_per_s"] = len(lines) / seconds
        seconds_per_line[key] = seconds / len(lines)
        rows.append(row)
        print(
            f"{name:10s} {json.dumps(options):62s} {row['tokens_per_s']:>10,.0f} tok/s "
            f"{row['sentences_per_s']:>9,.0f} sent/s  {seconds:6.2f} s",
            flush=True,
        )
        return [t.text for t in out]

    deadline = time.perf_counter() + args.budget_s
    # the target's row first, with and without CUDA graphs (beam steps replayed or launched op by
    # op), in both precisions
    graph_checks = {}
    for precision in ("bf16", "fp32"):
        for beam in (5, 1):
            replayed, eager = (
                time_one(
                    "test2016",
                    source,
                    beam=beam,
                    batch_size=128,
                    precision=precision,
                    cuda_graphs=graphs,
                )
                for graphs in (True, False)
            )
            scorer = translator._scorer(precision)
            check = {
                "recorded": scorer in graphed_beam._GRAPHS
                and scorer not in graphed_beam._UNGRAPHABLE,
                "cudnn_recorded": scorer not in graphed_beam._WITHOUT_CUDNN,
                "lines_differing_from_eager": sum(
                    a != b for a, b in zip(replayed, eager, strict=True)
                )
                if replayed and eager
                else None,
            }
            graph_checks[f"{precision} beam {beam}"] = check
            print(f"# CUDA graphs, {precision}, beam {beam}: {json.dumps(check)}", flush=True)
    for precision in ("bf16", "fp32"):
        for beam in (5, 1):
            time_one("test2016", source, beam=beam, batch_size=args.big_batch, precision=precision)
    # the large file: the best batch first (batch 128 takes longer there), then batch 128; bf16,
    # then fp32 as far as the budget goes
    for precision in ("bf16", "fp32"):
        for batch in (args.big_batch, 128):
            for beam in (5, 1):
                time_one("synthetic", big, beam=beam, batch_size=batch, precision=precision)
    # Profiled last: the rows of the first H200 runs were timed after a CUDA profile in the same
    # process and behind a 256-line warm-up, and a diagnostic run without either measured the
    # same beam search in half the time (docs/benchmarks.md, GPU).
    profiles = []
    if args.profile:  # where beam 5 at batch 128 spends its time, per precision
        for precision in ("bf16", "fp32"):
            options = {"beam": 5, "batch_size": 128, "precision": precision}
            decode = lambda _batch, o=options: translator.translate_hypotheses(source[:128], **o)  # noqa: E731
            decode(None)  # warm-up: weight casts, kernel plans
            profiles.append(profile_steps(f"decode beam 5, {precision}", decode, [None], device, 1))
    return {
        "environment": env,
        "parameters": params,
        "rows": rows,
        "cuda_graphs": graph_checks,
        "profiles": profiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--data", type=Path, required=True, help="preprocessed Multi30k en-de")
    train.add_argument("--updates", type=int, default=60)
    train.add_argument("--gnmt-updates", type=int, default=40)
    train.add_argument("--gnmt-sentences", type=int, default=128)
    train.add_argument("--profile", action="store_true", help="profile a GNMT update of each")
    train.add_argument(
        "--only",
        choices=["gnmt", "interleaved"],
        help="gnmt: the GNMT-shaped model alone; interleaved: only the interleaved turns",
    )
    train.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="then N turns over s2s's choices and the reference loop (per model), ABC..ABC..",
    )
    trainer = sub.add_parser("trainer")
    trainer.add_argument("--data", type=Path, required=True, help="preprocessed Multi30k en-de")
    trainer.add_argument("--updates", type=int, default=500)
    trainer.add_argument("--turns", type=int, default=2)
    decode = sub.add_parser("decode")
    decode.add_argument("--checkpoint", type=Path, required=True)
    decode.add_argument("--source", type=Path, required=True)
    decode.add_argument("--extra", type=Path, nargs="*", default=[])
    decode.add_argument("--big-lines", type=int, default=100_000)
    decode.add_argument("--big-batch", type=int, default=1024)
    decode.add_argument("--budget-s", type=float, default=120.0)
    decode.add_argument("--profile", action="store_true", help="profile beam 5 on 128 sentences")
    for p in (train, trainer, decode):
        p.add_argument("--out", type=Path, help="write the results as JSON here")
        p.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: needs a CUDA device")
    commands = {"train": run_train, "trainer": run_trainer, "decode": run_decode}
    result = commands[args.command](args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"# peak GPU memory of the process: {peak_gib(torch.device(args.device)):.2f} GiB")


if __name__ == "__main__":
    main()
