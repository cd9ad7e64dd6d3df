"""Sharded training data: `s2s preprocess --shard-size`, `--data A:B:C`, one shard per epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s_cli import Dataset, load_config, train
from s2s_cli.checkpoint import load_checkpoint
from s2s_cli.data.shards import TrainingShards, dataset_dirs
from s2s_cli.errors import DataError

from ..conftest import TINY_MODEL, preprocess_reverse, write_reverse_corpus

SHARD_SIZE = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reverse_corpus(tmp_path_factory.mktemp("raw"), train=1100, seed=3)


def _preprocess(corpus: Path, dest: Path, *overrides: str, spm_models=()) -> Path:
    return preprocess_reverse(corpus, dest, "data.vocab_size=48", *overrides, spm_models=spm_models)


@pytest.fixture(scope="module")
def whole(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _preprocess(corpus, tmp_path_factory.mktemp("whole") / "data")


@pytest.fixture(scope="module")
def sharded(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("sharded") / "data"
    return _preprocess(corpus, dest, f"data.shard_size={SHARD_SIZE}")


def _pairs(dataset: Dataset, split: str = "train") -> list[tuple[list[int], list[int]]]:
    part = dataset.split(split)
    return [(part[i][0].tolist(), part[i][1].tolist()) for i in range(len(part))]


def test_shards_hold_the_whole_datasets_pairs_in_order(whole, sharded):
    shards = [Dataset(d) for d in dataset_dirs(sharded)]
    assert [d.name for d in dataset_dirs(sharded)] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [len(s.split("train")) for s in shards] == [
        SHARD_SIZE,
        SHARD_SIZE,
        1100 - 2 * SHARD_SIZE,
    ]
    joined = [pair for shard in shards for pair in _pairs(shard)]
    assert joined == _pairs(Dataset(whole))
    # evaluation splits (and their raw text) in the first shard only; the same models in every one
    assert shards[0].splits == ["train", "valid", "test"]
    assert _pairs(shards[0], "valid") == _pairs(Dataset(whole), "valid")
    assert shards[0].raw_text_path("valid", "tgt") is not None
    assert all(s.splits == ["train"] for s in shards[1:])
    assert {s.spm_bytes("src") for s in shards} == {Dataset(whole).spm_bytes("src")}
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["splits"]["train"]["sentences"] == 1100
    assert manifest["shards"] == [d.name for d in dataset_dirs(sharded)]


def test_a_sharded_directory_is_not_one_dataset(sharded):
    with pytest.raises(DataError, match="sharded dataset.*shard-00000"):
        Dataset(sharded)


def test_data_names_shards_by_colons_or_by_a_sharded_directory(sharded, whole):
    first, second, third = dataset_dirs(sharded)
    assert dataset_dirs(f"{third}:{first}") == [third, first]
    assert dataset_dirs(f"{whole}:{sharded}") == [whole, first, second, third]
    assert dataset_dirs(whole) == [whole]
    with pytest.raises(DataError, match="empty name"):
        dataset_dirs(f"{first}::{second}")
    shards = TrainingShards(sharded)
    assert [shards.index(epoch) for epoch in range(1, 8)] == [0, 1, 2, 0, 1, 2, 0]
    assert len(shards.train_split(3)) == 1100 - 2 * SHARD_SIZE


def test_shards_with_other_sentencepiece_models_are_refused(sharded, corpus, tmp_path):
    other = _preprocess(corpus, tmp_path / "other", "data.vocab_size=40")
    with pytest.raises(DataError, match=r"other: .*differ from the first shard"):
        TrainingShards(f"{dataset_dirs(sharded)[0]}:{other}")
    # made with the first shard's model, a separate corpus is a valid shard
    model = dataset_dirs(sharded)[0] / "spm.model"
    same = _preprocess(corpus, tmp_path / "same", spm_models=[model])
    assert len(TrainingShards(f"{sharded}:{same}")) == 4


def _run(data: str | Path, save_dir: Path, *overrides: str, resume: bool = False) -> Path:
    cfg = load_config(overrides=[*TINY_MODEL, "train.log_every=1", "model.dropout=0.3", *overrides])
    return train(cfg, data, save_dir, device="cpu", resume=resume)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model


def _train_ids(save_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_each_epoch_trains_on_its_shard_and_resume_crosses_shard_boundaries(sharded, tmp_path):
    """max_epochs=3 over three shards is one pass over each; a run stopped inside the second
    shard and resumed ends exactly where the uninterrupted run does."""
    shards = TrainingShards(sharded)
    common = ["train.max_tokens=600", "train.validate_every=null", "train.save_every=null"]
    straight = tmp_path / "straight"
    _run(sharded, straight, *common, "train.max_epochs=3")
    progress = load_checkpoint(straight / "checkpoint_last.pt").progress
    # updates per epoch follow the shards' sizes: the last shard (300 pairs) gives fewer
    from s2s_cli.data.batching import make_batches

    expected = [
        len(make_batches(s.src_sizes + 1, s.tgt_sizes + 1, 600, None, 1, epoch))
        for epoch, s in ((e, shards.train_split(e)) for e in (1, 2, 3))
    ]
    assert expected[2] < expected[0]
    assert progress.updates == sum(expected)
    epochs = [r["epoch"] for r in _train_ids(straight)]
    assert [epochs.count(e) for e in (1, 2, 3)] == expected

    resumed = tmp_path / "resumed"
    stop = expected[0] + 2  # inside the second shard
    _run(sharded, resumed, *common, "train.max_epochs=3", f"train.max_updates={stop}")
    stopped = load_checkpoint(resumed / "checkpoint_last.pt").progress
    assert (stopped.epoch, stopped.position) == (2, 2)
    _run(sharded, resumed, *common, "train.max_epochs=3", resume=True)
    a, b = _params(straight / "checkpoint_last.pt"), _params(resumed / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight_losses = [r["loss"] for r in _train_ids(straight)]
    assert straight_losses == [r["loss"] for r in _train_ids(resumed)]


def test_a_single_shard_trains_as_its_dataset_does(whole, tmp_path):
    """`--data A` with one directory is the ordinary run (the shards code changes nothing)."""
    common = ["train.max_updates=6", "train.validate_every=null"]
    _run(whole, tmp_path / "a", *common)
    _run(f"{whole}", tmp_path / "b", *common)
    a, b = (
        _params(tmp_path / "a" / "checkpoint_last.pt"),
        _params(tmp_path / "b" / "checkpoint_last.pt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_preprocess_shards_pipe_into_train(corpus, tmp_path):
    s2s = [sys.executable, "-m", "s2s_cli"]
    made = subprocess.run(
        [*s2s, "preprocess", "--src-lang", "src", "--tgt-lang", "tgt", "--train",
         str(corpus / "train"), "--valid", str(corpus / "valid"), "--vocab-size", "48",
         "--shard-size", "500", "--dest", str(tmp_path / "data"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(tmp_path / "data")
    trained = subprocess.run(
        [*s2s, "train", "--save-dir", str(tmp_path / "run"), "--device", "cpu", *TINY_MODEL,
         "train.max_epochs=3", "train.validate_every=null", "train.log_every=1"],
        input=made.stdout, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "3 training shards" in trained.stderr
    assert "epoch 3: shard 3 of 3" in trained.stderr
    epochs = {r["epoch"] for r in _train_ids(tmp_path / "run")}
    assert epochs == {1, 2, 3}
    info = subprocess.run(
        [*s2s, "info", str(tmp_path / "data")], capture_output=True, text=True, timeout=60
    )
    assert info.returncode != 0 and "sharded dataset" in info.stderr
    assert len(info.stderr.strip().splitlines()) == 1
    assert np.isfinite(_train_ids(tmp_path / "run")[-1]["loss"])
