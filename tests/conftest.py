"""Shared fixtures: tiny corpora made on the fly, a tiny dataset and a tiny trained model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


def worker_threads() -> int | None:
    """Threads each pytest-xdist worker may use (its share of the cores), or None when the suite
    runs in one process. ``make test`` runs one worker per core; OpenMP threads that outnumber the
    cores wait on each other and slow every worker several-fold."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers == 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def pytest_configure(config: pytest.Config) -> None:
    threads = worker_threads()
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the commands the tests start
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With several workers, the minute-long end-to-end tests go first and then the other slow
    ones, so that they spread over the workers (``make test`` deals one test at a time) instead of
    ending the run on one of them."""
    if worker_threads() is None:
        return

    def cost(item: pytest.Item) -> int:
        if item.path.parent.name == "e2e":
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=cost)  # stable: the order within each group stays


WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]


def write_reverse_corpus(
    directory: Path, train: int = 600, seed: int = 7, held_out: int = 60
) -> Path:
    """Number words -> the same words reversed and upper-cased: {train,valid,test}.{src,tgt}."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("valid", held_out), ("test", held_out)):
        src, tgt = [], []
        for _ in range(count):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
            src.append(" ".join(words))
            tgt.append(" ".join(reversed(words)).upper())
        (directory / f"{split}.src").write_text("\n".join(src) + "\n", encoding="utf-8")
        (directory / f"{split}.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return directory


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_reverse_corpus(tmp_path / "raw")


def preprocess_reverse(raw: Path, dest: Path, *overrides: str, spm_models=()) -> Path:
    """``s2s preprocess`` (Python API) of a corpus from :func:`write_reverse_corpus` into ``dest``,
    with ``data.*`` overrides."""
    from s2s_cli import load_config, preprocess

    return preprocess(
        src_lang="src",
        tgt_lang="tgt",
        train=raw / "train",
        valid=raw / "valid",
        tests=[raw / "test"],
        dest=dest,
        config=load_config(overrides=list(overrides)),
        spm_models=spm_models,
    )


def reverse_dataset(root: Path, vocab_size: int, train: int, seed: int = 7) -> Path:
    """A reverse-task corpus written under ``root`` and preprocessed (joint BPE) into root/data."""
    raw = write_reverse_corpus(root / "raw", train=train, seed=seed)
    return preprocess_reverse(raw, root / "data", f"data.vocab_size={vocab_size}")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preprocessed reverse-task dataset (joint BPE, 48 pieces), shared by the session."""
    return reverse_dataset(tmp_path_factory.mktemp("tiny"), vocab_size=48, train=1500)


TINY_MODEL = [
    "model.preset=fast",
    "model.embed_dim=32",
    "model.hidden_size=64",
    "model.dropout=0.0",
    "train.max_tokens=1024",
    "train.lr=0.005",
    "train.log_every=1000",
    "train.seed=1",
]


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fast-preset model trained on the reverse task until it is good (about 10 s)."""
    from s2s_cli import load_config, train

    cfg = load_config(overrides=[*TINY_MODEL, "train.max_updates=400", "train.validate_every=400"])
    save_dir = tmp_path_factory.mktemp("trained")
    return train(cfg, tiny_dataset, save_dir, device="cpu")
