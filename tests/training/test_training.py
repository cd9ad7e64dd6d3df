import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s_cli import Dataset, Translator, load_config, train
from s2s_cli.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from s2s_cli.data.loader import collate
from s2s_cli.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    OutOfMemory,
    StorageError,
    out_of_memory,
)
from s2s_cli.models.build import build_model
from s2s_cli.training.average import average_checkpoints
from s2s_cli.training.distributed import DistributedContext
from s2s_cli.training.step import LossModule, Updater

from ..conftest import TINY_MODEL


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model


def losses(save_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def run(tiny_dataset: Path, save_dir: Path, *overrides: str, **kwargs) -> Path:
    cfg = load_config(overrides=[*TINY_MODEL, "train.log_every=1", *overrides])
    return train(cfg, tiny_dataset, save_dir, device="cpu", **kwargs)


def test_resume_reproduces_the_uninterrupted_run(tiny_dataset, tmp_path):
    """Interrupted mid-epoch (dropout on, so RNG state matters) and resumed across an epoch end."""
    common = ["model.dropout=0.3", "train.validate_every=4", "train.max_tokens=2000"]
    straight = tmp_path / "straight"
    run(tiny_dataset, straight, *common, "train.max_updates=30")
    resumed = tmp_path / "resumed"
    run(tiny_dataset, resumed, *common, "train.max_updates=7")
    progress = load_checkpoint(resumed / "checkpoint_last.pt").progress
    assert (progress.updates, progress.position, progress.epoch) == (7, 7, 1)
    run(tiny_dataset, resumed, *common, "train.max_updates=30", resume=True)
    assert load_checkpoint(resumed / "checkpoint_last.pt").progress.epoch >= 2
    a, b = params(straight / "checkpoint_last.pt"), params(resumed / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(resumed)


# what PyTorch's CPU allocator raises (a plain RuntimeError), and CUDA's message
CPU_REFUSAL = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"
)
CUDA_REFUSAL = (
    "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.06 GiB is free."
)


def test_out_of_memory_is_told_from_other_runtime_errors():
    assert out_of_memory(RuntimeError(CPU_REFUSAL)) == "could not allocate 37.3 GiB"
    assert out_of_memory(RuntimeError(CUDA_REFUSAL)) == "could not allocate 2.50 GiB"
    assert out_of_memory(MemoryError()) == "could not allocate memory"
    assert out_of_memory(RuntimeError("MPS backend out of memory")) == "could not allocate memory"
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(ValueError("out of memory")) is None


def test_running_out_of_memory_in_an_update_names_the_batch_and_keeps_the_checkpoint(
    tiny_dataset, tmp_path, monkeypatch
):
    original = Updater.update
    seen = []

    def update(self, batches, teacher_forcing):
        seen.append(batches)
        if len(seen) == 5:
            raise RuntimeError(CPU_REFUSAL)
        return original(self, batches, teacher_forcing)

    monkeypatch.setattr(Updater, "update", update)
    with pytest.raises(OutOfMemory) as refused:
        run(tiny_dataset, tmp_path, "train.save_every=2", "train.max_updates=10")
    batch = seen[-1][0]
    assert str(refused.value) == (
        "update 5: out of memory (could not allocate 37.3 GiB) on a batch of "
        f"{batch.src.size(0):,} sentences, {batch.target_tokens:,} target tokens, longest source "
        f"{batch.src.size(1)} and target {batch.tgt_in.size(1)} pieces; try a smaller "
        "train.max_tokens (now 1,024) or data.max_length, or a smaller model; "
        f"{tmp_path / 'checkpoint_last.pt'} is left as it was; the same command resumes from it"
    )
    assert load_checkpoint(tmp_path / "checkpoint_last.pt").progress.updates == 4
    # any other error of the step is a bug, and keeps its traceback
    seen.clear()
    monkeypatch.setattr(
        Updater, "update", lambda self, batches, tf: (_ for _ in ()).throw(RuntimeError("shapes"))
    )
    with pytest.raises(RuntimeError, match="shapes"):
        run(tiny_dataset, tmp_path / "other", "train.max_updates=10")


def test_rerunning_a_finished_run_changes_nothing(tiny_dataset, tmp_path):
    best = run(tiny_dataset, tmp_path, "train.max_updates=3")
    before = params(tmp_path / "checkpoint_last.pt")
    assert run(tiny_dataset, tmp_path, "train.max_updates=3") == best
    after = params(tmp_path / "checkpoint_last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_refuses_a_different_architecture(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path, "train.max_updates=2")
    with pytest.raises(ConfigError, match="model.hidden_size"):
        run(tiny_dataset, tmp_path, "train.max_updates=4", "model.hidden_size=32")


def test_resume_without_a_checkpoint_is_an_error(tiny_dataset, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run(tiny_dataset, tmp_path, "train.max_updates=2", resume=True)


def test_corrupt_checkpoint_on_resume_is_an_error_and_is_kept(tiny_dataset, tmp_path):
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable s2s checkpoint"):
        run(tiny_dataset, tmp_path, "train.max_updates=2")
    assert last.read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize("with_state", [False, True])
def test_the_best_checkpoint_is_sized_for_translation_unless_asked(
    tiny_dataset, tmp_path, with_state
):
    best = run(
        tiny_dataset,
        tmp_path,
        "train.max_updates=3",
        "train.validate_every=3",
        f"train.best_with_state={str(with_state).lower()}",
    )
    last = load_checkpoint(tmp_path / "checkpoint_last.pt")
    kept = load_checkpoint(best)
    assert kept.best == last.best and kept.best.update == 3  # the best is the last update here
    assert all(torch.equal(kept.model[k], v) for k, v in last.model.items())
    assert kept.config == last.config and kept.spm == last.spm
    assert kept.progress.updates == last.progress.updates
    assert last.training is not None
    if with_state:
        assert kept.training is not None  # resumable from the best too
    else:
        assert kept.training is None
        moments = sum(
            t.numel() * t.element_size()
            for state in last.training.optimizer["state"].values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )
        assert moments >= 2 * sum(v.numel() * v.element_size() for v in last.model.values())
        saved = (tmp_path / "checkpoint_last.pt").stat().st_size - best.stat().st_size
        assert saved >= moments  # the Adam moments (and RNG state) are left out
        translated = Translator.from_checkpoint(best, device="cpu").translate(["one two"])
        full = Translator.from_checkpoint(tmp_path / "checkpoint_last.pt", device="cpu")
        assert translated == full.translate(["one two"])


def test_checkpoint_is_plain_data_and_reloads_identically(tiny_dataset, tmp_path):
    best = run(tiny_dataset, tmp_path, "train.max_updates=3")
    payload = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    for key in (
        "config",
        "spm",
        "model",
        "optimizer",
        "schedule",
        "rng",
        "progress",
        "format_version",
        "digest",
    ):
        assert key in payload
    checkpoint = load_checkpoint(best)
    model, cfg = model_from_checkpoint(checkpoint), checkpoint.config
    split = Dataset(tiny_dataset).split("valid")
    batch = collate(split, np.arange(5))
    torch.manual_seed(0)
    again = build_model(cfg.model, 48, 48).eval()
    again.load_state_dict(payload["model"])
    with torch.no_grad():
        assert torch.equal(
            model(batch.src, batch.src_lengths, batch.tgt_in),
            again(batch.src, batch.src_lengths, batch.tgt_in),
        )


def test_any_corrupt_checkpoint_is_a_one_line_error(tmp_path, trained_checkpoint):
    import random

    rng = random.Random(0)
    good = trained_checkpoint.read_bytes()
    for i in range(30):
        path = tmp_path / f"bad{i}.pt"
        if i % 2:
            path.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000))))
        else:  # a truncated real checkpoint
            path.write_bytes(good[: rng.randint(0, len(good) - 1)])
        with pytest.raises(CheckpointError, match="not a readable s2s checkpoint") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)


def _tensor_records(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each tensor's bytes inside a checkpoint (a zip archive)."""
    import struct
    import zipfile

    records = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if "/data/" in info.filename and info.file_size >= 64:
                raw.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
                records.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return records


def _flip(path: Path, offset: int, count: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_bit_rot_in_any_tensor_of_a_checkpoint_is_a_one_line_error(tmp_path, trained_checkpoint):
    """Weights, optimizer moments, RNG states, SentencePiece bytes: each is covered."""
    trained_checkpoint = trained_checkpoint.parent / "checkpoint_last.pt"  # the full one
    records = _tensor_records(trained_checkpoint)
    assert len(records) > 20  # model, optimizer state, rng and spm tensors
    for i, (offset, size) in enumerate(records):
        path = tmp_path / f"rot{i}.pt"
        shutil.copyfile(trained_checkpoint, path)
        _flip(path, offset + size // 2 - 32)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: damaged: its contents do not match")
        assert "\n" not in str(info.value)
    middle = tmp_path / "middle.pt"  # the case: 64 bytes in the middle of the file
    shutil.copyfile(trained_checkpoint, middle)
    _flip(middle, middle.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="damaged|not a readable"):
        load_checkpoint(middle)


def test_a_translator_verifies_the_digest_while_it_builds(tmp_path, trained_checkpoint):
    """Translator.from_checkpoint maps the file and checks its digest on a thread while the model
    is built: bit rot in the weights is still the one-line error, raised before any translation,
    and it wins over an error the build itself raised; a sound file gives the build's own error
    and the same weights as load_checkpoint."""
    from s2s_cli.checkpoint import checkpoint_to_build_from

    offset, size = max(_tensor_records(trained_checkpoint), key=lambda record: record[1])
    rotten = tmp_path / "rotten.pt"
    shutil.copyfile(trained_checkpoint, rotten)
    _flip(rotten, offset + size // 2 - 32)
    with pytest.raises(CheckpointError) as info:
        Translator.from_checkpoint(rotten, device="cpu")
    assert str(info.value).startswith(f"{rotten}: damaged: its contents do not match")
    with pytest.raises(CheckpointError, match="damaged"), checkpoint_to_build_from(rotten):
        raise RuntimeError("size mismatch")  # what rotten weights could make a build say
    sound = checkpoint_to_build_from(trained_checkpoint)
    with pytest.raises(RuntimeError, match="size mismatch"), sound:
        raise RuntimeError("size mismatch")
    with checkpoint_to_build_from(trained_checkpoint) as mapped:
        read = load_checkpoint(trained_checkpoint)
        assert mapped.model.keys() == read.model.keys()
        assert all(torch.equal(mapped.model[k], read.model[k]) for k in read.model)
        assert mapped.spm == read.spm and mapped.config == read.config


def test_changed_metadata_fails_the_digest(tmp_path, trained_checkpoint):
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["progress"]["updates"] += 1
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_checkpoint_without_a_digest_loads_with_one_warning(tmp_path, trained_checkpoint, caplog):
    import s2s_cli.checkpoint as checkpoint_module

    payload = torch.load(trained_checkpoint, weights_only=True)
    assert payload["digest"].startswith("sha256:")
    del payload["digest"]
    torch.save(payload, tmp_path / "old.pt")
    checkpoint_module._warned_undigested = False
    with caplog.at_level(logging.WARNING, logger="s2s_cli"):
        old = load_checkpoint(tmp_path / "old.pt")
        load_checkpoint(tmp_path / "old.pt")
    warnings = [r.getMessage() for r in caplog.records if "integrity digest" in r.getMessage()]
    assert warnings == [
        f"{tmp_path / 'old.pt'}: written by s2s {payload['s2s_version']} without an integrity "
        "digest; loaded unverified (checkpoints saved by this version carry one)"
    ]
    assert old.digest is None
    current = load_checkpoint(trained_checkpoint)
    assert current.digest == torch.load(trained_checkpoint, weights_only=True)["digest"]
    assert all(torch.equal(old.model[k], v) for k, v in current.model.items())
    save_checkpoint(old, tmp_path / "resaved.pt")  # saving again adds a digest
    assert load_checkpoint(tmp_path / "resaved.pt").digest is not None


@pytest.mark.parametrize(
    ("kind", "described"),
    [
        ("text", "a text file, not a checkpoint"),
        ("gzip", "a gzip file, not a checkpoint"),
        ("empty", "the file is empty"),
        ("objects", "a PyTorch file holding Python objects, not plain data"),
        ("old pickle", "a pickle in an older torch.save format"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_described(tmp_path, kind, described):
    import argparse
    import gzip
    import pickle

    path = tmp_path / "x.pt"
    if kind == "text":
        path.write_text("the cat sat on the mat\n")
    elif kind == "gzip":
        path.write_bytes(gzip.compress(b"the cat\n"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "objects":  # what a fairseq checkpoint holds
        torch.save({"args": argparse.Namespace(arch="lstm"), "model": {}}, path)
    else:
        path.write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable s2s checkpoint ({described}")
    assert "\n" not in str(info.value) and "PyTorch 2.6" not in str(info.value)


def test_checkpoint_format_version_mismatch(tmp_path, trained_checkpoint):
    save_checkpoint(load_checkpoint(trained_checkpoint), tmp_path / "x.pt")
    payload = torch.load(tmp_path / "x.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "x.pt")


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        ("missing", DataError, "no such dataset directory"),
        ("no_manifest", DataError, "manifest.json: missing"),
        ("corrupt_manifest", DataError, "corrupt manifest"),
        ("old_version", DataError, "dataset format version 0 is not supported"),
        ("unwritable", StorageError, "cannot write to this save directory"),
    ],
)
def test_bad_training_inputs(tiny_dataset, tmp_path, setup, error, message):
    data, save_dir = tmp_path / "data", tmp_path / "save"
    if setup != "missing":
        shutil.copytree(tiny_dataset, data)
    manifest = data / "manifest.json"
    if setup == "no_manifest":
        manifest.unlink()
    elif setup == "corrupt_manifest":
        manifest.write_text("{not json")
    elif setup == "old_version":
        content = json.loads(manifest.read_text())
        content["format_version"] = 0
        manifest.write_text(json.dumps(content))
    elif setup == "unwritable":
        (tmp_path / "blocker").write_text("a file")
        save_dir = tmp_path / "blocker" / "save"
    cfg = load_config(overrides=[*TINY_MODEL, "train.max_updates=2"])
    with pytest.raises(error, match=message):
        train(cfg, data, save_dir, device="cpu")
    assert not (save_dir / "checkpoint_last.pt").exists()


def _updater(model, precision="fp32", clip=None, scaler=None):
    objective = LossModule(model, 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Updater(
        objective, optimizer, scaler, torch.device("cpu"), precision, clip, DistributedContext()
    )


def _model():
    cfg = load_config(overrides=[*TINY_MODEL]).model
    torch.manual_seed(0)
    return build_model(cfg, 48, 48)


def test_accumulating_micro_batches_equals_one_big_batch(tiny_dataset):
    split = Dataset(tiny_dataset).split("train")
    first, second = np.arange(0, 8), np.arange(8, 20)
    accumulated, whole = _model(), _model()
    _updater(accumulated).update([collate(split, first), collate(split, second)], 1.0)
    _updater(whole).update([collate(split, np.concatenate([first, second]))], 1.0)
    for (name, a), b in zip(accumulated.named_parameters(), whole.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_clipping_limits_the_gradient_norm(tiny_dataset):
    split = Dataset(tiny_dataset).split("train")
    model = _model()
    updater = _updater(model, clip=0.01)
    optimizer_step = updater.optimizer.step
    seen = []

    def record():
        seen.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item())
        optimizer_step()

    updater.optimizer.step = record
    result = updater.update([collate(split, np.arange(10))], 1.0)
    assert result.grad_norm > 0.01  # the norm before clipping is reported...
    assert seen[0] == pytest.approx(0.01, rel=1e-3)  # ...and the step saw the clipped one


def test_fp16_step_with_non_finite_gradient_is_skipped(tiny_dataset):
    split = Dataset(tiny_dataset).split("train")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    # CPU autocast has no fp16 LSTM kernel, so the scaler logic runs here in fp32 arithmetic;
    # the same Updater runs real fp16 on CUDA.
    updater = _updater(model, precision="fp32", scaler=scaler)
    handle = model.decoder.output_bias.register_hook(lambda g: torch.full_like(g, float("inf")))
    result = updater.update([collate(split, np.arange(10))], 1.0)
    handle.remove()
    assert result.skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scaler.get_scale() < 1024.0  # the scaler backs off
    result = updater.update([collate(split, np.arange(10))], 1.0)
    assert not result.skipped
    assert not torch.equal(before["decoder.output_bias"], model.decoder.output_bias)


def test_fp16_on_cpu_is_a_clear_config_error(tiny_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is supported where CUDA is")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run(tiny_dataset, tmp_path, "train.precision=fp16", "train.max_updates=2")


def test_bf16_autocast_trains_on_cpu(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path, "train.precision=bf16", "train.max_updates=40")
    curve = losses(tmp_path)
    assert np.mean(curve[-5:]) < 0.6 * np.mean(curve[:5])


def test_periodic_checkpoints_keep_last_k_and_average(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path, "train.max_updates=8", "train.save_every=2", "train.keep_last=2")
    periodic = sorted(p.name for p in tmp_path.glob("checkpoint_u*.pt"))
    assert periodic == ["checkpoint_u6.pt", "checkpoint_u8.pt"]
    out = average_checkpoints(
        [tmp_path / "checkpoint_u6.pt", tmp_path / "checkpoint_u8.pt"], tmp_path / "avg.pt"
    )
    a, b, avg = (
        params(tmp_path / "checkpoint_u6.pt"),
        params(tmp_path / "checkpoint_u8.pt"),
        params(out),
    )
    for key in a:
        assert torch.allclose(avg[key], (a[key] + b[key]) / 2, atol=1e-6)
    same = average_checkpoints([tmp_path / "checkpoint_u8.pt"], tmp_path / "one.pt")
    assert all(torch.equal(params(same)[k], b[k]) for k in b)
    assert load_checkpoint(out).training is None
    assert "optimizer" not in torch.load(out, weights_only=True)


def test_validation_tracks_the_best_checkpoint_and_early_stops(tiny_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="s2s_cli")
    best = run(
        tiny_dataset,
        tmp_path,
        "train.max_updates=200",
        "train.validate_every=5",
        "train.patience=2",
        "train.lr=0.5",
        "train.validate_metric=loss",
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert valid[-1]["update"] < 200  # lr 0.5 diverges, so patience ends the run early
    best_row = min(valid, key=lambda r: r["loss"])
    assert load_checkpoint(best).progress.updates == best_row["update"]
    assert best.name == "checkpoint_best.pt"
    # the log says which rule ended training, with the best score it is measured against
    stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done after")]
    assert stops == [
        f"done after {valid[-1]['update']} updates: no better validation loss in 2 "
        f"validations (train.patience); best {best_row['loss']:.2f} at update {best_row['update']}"
        f"; best checkpoint: {tmp_path / 'checkpoint_best.pt'}"
    ]


DDP_COMMON = [
    *TINY_MODEL,
    "train.max_updates=6",
    "train.max_tokens=600",
    "train.validate_every=1000",
]
DDP_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_command(data: Path, save_dir: Path, *overrides: str) -> list[str]:
    return [
        "-m",
        "s2s_cli",
        "train",
        "--data",
        str(data),
        "--save-dir",
        str(save_dir),
        "--device",
        "cpu",
        *DDP_COMMON,
        *overrides,
    ]


@pytest.fixture(scope="module")
def one_process_two_micro_batches(tiny_dataset, tmp_path_factory) -> Path:
    """The reference of the DDP tests: 1 process, update_freq=2 (the same global batch)."""
    save_dir = tmp_path_factory.mktemp("one-process")
    single = subprocess.run(
        [sys.executable, *_train_command(tiny_dataset, save_dir, "train.update_freq=2")],
        capture_output=True,
        text=True,
        env=DDP_ENV,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    return save_dir / "checkpoint_last.pt"


def _assert_same_training(reference: Path, distributed: Path) -> None:
    a, b = params(reference), params(distributed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    for path in (reference, distributed):
        assert load_checkpoint(path).progress.updates == 6


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(
    tiny_dataset, tmp_path, one_process_two_micro_batches
):
    """torchrun with 2 ranks x 1 micro-batch == 1 process with 2 micro-batches per update."""
    torchrun = Path(sys.executable).with_name("torchrun")
    double = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            *_train_command(tiny_dataset, tmp_path / "two", "train.update_freq=1"),
        ],
        capture_output=True,
        text=True,
        env=DDP_ENV,
        check=False,
    )
    assert double.returncode == 0, double.stderr[-2000:]
    assert double.stdout.strip().endswith(".pt") and double.stdout.count("\n") == 1  # rank 0 prints
    _assert_same_training(one_process_two_micro_batches, tmp_path / "two" / "checkpoint_last.pt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_torchrun_match_one_process_on_the_same_global_batch(
    tiny_dataset, tmp_path, one_process_two_micro_batches
):
    """Two "nodes" on localhost, each its own torchrun with one process, meeting through the c10d
    rendezvous as two machines do (docs/distributed.md) == 1 process with update_freq=2. The save
    directory is shared, as on a shared filesystem; only global rank 0 writes it."""
    torchrun = Path(sys.executable).with_name("torchrun")
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "s2s-two-nodes",
                *_train_command(tiny_dataset, tmp_path / "shared", "train.update_freq=1"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=DDP_ENV,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-2000:]
    # exactly one process (global rank 0, on whichever node) printed the best checkpoint's path
    printed = [stdout.strip() for stdout, _ in outputs if stdout.strip()]
    assert len(printed) == 1 and printed[0].endswith(".pt")
    _assert_same_training(one_process_two_micro_batches, tmp_path / "shared" / "checkpoint_last.pt")


def _worker_pids(marker: str, rank: int) -> list[int]:
    """PIDs of the torchrun workers with this global RANK whose environment carries ``marker``."""
    wanted = {f"S2S_TEST_MARKER={marker}".encode(), f"RANK={rank}".encode()}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            pids.append(int(proc.name))
    return pids


def _endless_two_rank_run(
    tiny_dataset: Path, tmp_path: Path, *overrides: str
) -> tuple[subprocess.Popen, list[str], int, int]:
    """Start 2 gloo ranks on an endless run (a checkpoint every 2 updates) and wait for the
    first checkpoint. Returns the torchrun process, its command (without train.max_updates) and
    the PIDs of the rank-0 and rank-1 workers."""
    marker = f"{os.getpid()}-{tmp_path.name}"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        *_train_command(
            tiny_dataset, tmp_path / "run", "train.max_epochs=null", "train.save_every=2", "-q"
        ),
        *overrides,
    ]
    env = {**DDP_ENV, "S2S_TEST_MARKER": marker}
    run = subprocess.Popen(
        [*command, "train.max_updates=100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "checkpoint_last.pt").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
        time.sleep(0.2)
    (rank_0,) = _worker_pids(marker, rank=0)
    (rank_1,) = _worker_pids(marker, rank=1)
    return run, command, rank_0, rank_1


def _wait_for_exit(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` has exited (a zombie counts: its /proc environ reads empty)."""
    deadline = time.monotonic() + timeout
    environ = Path(f"/proc/{pid}/environ")
    while time.monotonic() < deadline:
        try:
            if not environ.read_bytes():
                return
        except OSError:
            return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} still runs after {timeout} s")


def _lost_contact_line(run: subprocess.Popen, stderr: str) -> str:
    """The one line s2s ends a distributed run with when a peer is lost (rank 0's)."""
    assert run.returncode != 0
    lost = [line for line in stderr.splitlines() if "lost contact with the other training" in line]
    assert len(lost) == 1 and lost[0].startswith("error: rank 0 of 2: "), stderr[-3000:]
    assert "s2s_cli" + os.sep not in stderr  # no traceback frame from s2s (torchrun adds its own)
    return lost[0]


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the worker"
)
def test_a_dead_process_ends_its_peer_with_one_line_and_the_same_command_resumes(
    tiny_dataset, tmp_path
):
    """SIGKILL one of two ranks mid-training (a node dying): the other stops at once, not after
    the 30-minute collective timeout, with one line naming the failure and where to resume from;
    no traceback from s2s; the checkpoint saved before is intact and the same command resumes."""
    run, command, _, rank_1 = _endless_two_rank_run(tiny_dataset, tmp_path)
    started = time.monotonic()
    os.kill(rank_1, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert time.monotonic() - started < 60  # no wait for the collective timeout
    assert "run the same command again on every node to resume" in _lost_contact_line(run, stderr)
    last = tmp_path / "run" / "checkpoint_last.pt"
    saved = load_checkpoint(last).progress.updates
    assert saved >= 2
    again = subprocess.run(
        [*command, f"train.max_updates={saved + 4}"],
        capture_output=True,
        text=True,
        env=DDP_ENV,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_checkpoint(last).progress.updates == saved + 4


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the worker"
)
def test_a_silent_peer_ends_the_run_after_the_dist_timeout(tiny_dataset, tmp_path):
    """A peer that stops answering without closing its connections (SIGSTOP: a machine gone from
    the network) ends the others after train.dist_timeout_minutes, with the same one line."""
    run, _, rank_0, rank_1 = _endless_two_rank_run(
        tiny_dataset,
        tmp_path,
        "train.dist_timeout_minutes=0.1",  # 6 seconds
    )
    os.kill(rank_1, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # rank 0 gives up after the 6 s timeout; then end the frozen rank for torchrun
        _wait_for_exit(rank_0, timeout=90)
        assert time.monotonic() - stopped > 5.0  # not long before the 6 s it was given
    finally:
        os.kill(rank_1, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    line = _lost_contact_line(run, stderr)
    assert "train.dist_timeout_minutes=0.1" in line and "Timed out" in line


def test_max_minutes_stops_training_and_says_why(tiny_dataset, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run(tiny_dataset, tmp_path, "train.max_minutes=0.002", "train.max_epochs=null")
    assert "train.max_minutes=0.002 reached" in caplog.text
    progress = load_checkpoint(tmp_path / "checkpoint_last.pt").progress
    assert progress.updates >= 1 and progress.train_seconds >= 0.12


def test_typed_checkpoint_round_trips_through_its_payload(trained_checkpoint, tmp_path):
    from s2s_cli.checkpoint import Checkpoint

    original = load_checkpoint(trained_checkpoint.parent / "checkpoint_last.pt")
    assert original.training is not None and original.best is not None
    save_checkpoint(original, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    for name in ("config", "vocab", "spm", "progress", "best", "s2s_version", "data_dir"):
        assert getattr(again, name) == getattr(original, name), name
    assert again.model.keys() == original.model.keys()
    assert all(torch.equal(again.model[k], v) for k, v in original.model.items())
    broken = torch.load(tmp_path / "copy.pt", weights_only=True)
    del broken["vocab"]
    with pytest.raises(CheckpointError, match="malformed s2s checkpoint"):
        Checkpoint.from_payload(broken, tmp_path / "copy.pt")


def test_a_run_stopped_by_max_minutes_can_be_extended(tiny_dataset, tmp_path, caplog):
    """The checkpoint records the time really trained, so a larger budget continues the run."""
    import time

    cheap = ["train.max_epochs=null", "train.valid_max_sentences=5"]
    started = time.perf_counter()
    run(tiny_dataset, tmp_path, "train.max_minutes=0.01", *cheap)
    wall = time.perf_counter() - started
    first = load_checkpoint(tmp_path / "checkpoint_last.pt").progress
    # the time trained (final validation included), never budget + elapsed as it once was
    assert 0.6 <= first.train_seconds <= wall
    budget = (first.train_seconds + 1.0) / 60  # one more second, however slow this machine is
    with caplog.at_level(logging.INFO):
        run(tiny_dataset, tmp_path, f"train.max_minutes={budget}", *cheap)
    second = load_checkpoint(tmp_path / "checkpoint_last.pt").progress
    assert second.updates > first.updates
    assert first.train_seconds + 1.0 <= second.train_seconds <= time.perf_counter() - started
    assert f"train.max_minutes={budget:g} reached" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.optimizer=sgd", "train.lr=1e38", "train.clip_norm=null"],
            "training diverged: 5 updates in a row",
        ),
        # PyTorch's fused Adam (the default) writes the overflow into the weights: the updates
        # after it are not finite; its single-tensor loop (fused off, or PyTorch < 2.4 on the
        # CPU) raises on it instead
        (["train.lr=1e38"], "training diverged: 5 updates in a row"),
        (["train.lr=1e38", "fused=off"], "the optimizer step failed"),
    ],
    ids=["sgd-nonfinite", "fused-adam-overflow", "adam-overflow"],
)
def test_divergence_stops_training_with_one_line_and_no_best_model(
    tiny_dataset, tmp_path, overrides, message, monkeypatch
):
    from s2s_cli.errors import TrainingDiverged
    from s2s_cli.training import schedule

    if "fused=off" in overrides:
        monkeypatch.setitem(schedule.FUSED_ADAM, "cpu", False)
        overrides = [o for o in overrides if o != "fused=off"]
    with pytest.raises(TrainingDiverged, match=message) as info:
        run(
            tiny_dataset,
            tmp_path,
            *overrides,
            "train.max_nonfinite_updates=5",
            "train.max_updates=100",
            "train.validate_every=2",
        )
    assert "\n" not in str(info.value)
    best = tmp_path / "checkpoint_best.pt"
    if best.exists():  # a best model is a finite one
        checkpoint = load_checkpoint(best)
        assert np.isfinite(checkpoint.best.value)
        assert all(
            torch.isfinite(v).all() for v in checkpoint.model.values() if v.is_floating_point()
        )


def test_the_divergence_watch_counts_runs_and_warns_on_an_exploding_loss(caplog):
    from s2s_cli.errors import TrainingDiverged
    from s2s_cli.training.divergence import WARMUP, DivergenceWatch
    from s2s_cli.training.step import UpdateResult

    def result(loss, skipped=False):
        return UpdateResult(loss * 100, loss * 100, 100, 1.0, skipped, 0, 1)

    watch = DivergenceWatch(3, Path("nowhere.pt"))
    for update in range(1, WARMUP + 50):
        watch.observe(update, result(2.0))
    watch.observe(100, result(0.0, skipped=True))
    watch.observe(101, result(0.0, skipped=True))
    watch.observe(102, result(2.0))  # a finite update ends the run of non-finite ones
    with caplog.at_level(logging.WARNING):
        for update in range(103, 140):
            watch.observe(update, result(8.0))
    assert "training may be diverging" in caplog.text
    assert caplog.text.count("training may be diverging") == 1  # not once per update
    for update in range(140, 142):
        watch.observe(update, result(0.0, skipped=True))
    with pytest.raises(TrainingDiverged, match="3 updates in a row up to update 142"):
        watch.observe(142, result(0.0, skipped=True))


def test_a_dataset_made_by_an_older_s2s_still_trains(tiny_dataset, tmp_path):
    """Its manifest may record data settings this version does not have (the languages)."""
    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["config"]["data"]["src_lang"] = "src"
    (old / "manifest.json").write_text(json.dumps(manifest))
    best = run(old, tmp_path / "run", "train.max_updates=2")
    saved = load_checkpoint(best).config.data
    assert saved.vocab_size == manifest["config"]["data"]["vocab_size"] and saved.path is None
