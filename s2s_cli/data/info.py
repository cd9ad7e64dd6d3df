"""``s2s info`` for dataset directories: counts, length percentiles, vocabulary, unknown rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from s2s_cli.data.dataset import Dataset
from s2s_cli.data.spm import UNK

PERCENTILES = (50, 90, 99)


def dataset_info(data_dir: str | Path) -> dict[str, Any]:
    """Per split and side: sentences, tokens, length percentiles and the unknown-piece rate."""
    dataset = Dataset(data_dir)
    src_vocab, tgt_vocab = dataset.vocab_sizes
    info: dict[str, Any] = {
        "path": str(dataset.dir),
        "languages": f"{dataset.src_lang}-{dataset.tgt_lang}",
        "vocab_size": {"src": src_vocab, "tgt": tgt_vocab},
        "joint": dataset.joint,
        "splits": {},
    }
    for name in dataset.splits:
        split = dataset.split(name)
        entry = {"sentences": len(split)}
        for side, data in (("src", split.src), ("tgt", split.tgt)):
            entry[side] = _side_stats(data.sizes, data.tokens)
        if "filter" in dataset.manifest["splits"][name]:
            entry["filter"] = dataset.manifest["splits"][name]["filter"]
        info["splits"][name] = entry
    return info


def _side_stats(sizes: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    if sizes.size == 0:
        return {"tokens": 0, "length": {}, "unk_rate": 0.0}
    lengths = {f"p{p}": float(np.percentile(sizes, p)) for p in PERCENTILES}
    lengths["max"] = int(sizes.max())
    lengths["mean"] = round(float(sizes.mean()), 2)
    # Count unknowns in slices so a large split is never copied into memory at once.
    unk = sum(
        int(np.count_nonzero(tokens[i : i + (1 << 22)] == UNK))
        for i in range(0, tokens.size, 1 << 22)
    )
    return {
        "tokens": int(tokens.size),
        "length": lengths,
        "unk_rate": round(unk / max(tokens.size, 1), 6),
    }
