"""s2s: an RNN sequence-to-sequence toolkit (library and ``s2s`` command).

The names below are the stable Python API; lower layers (``s2s_cli.models``,
``s2s_cli.decoding.beam``, ...) are importable but not promised stable.
"""

from __future__ import annotations

import os
from typing import Any

# oneDNN (PyTorch's CPU kernels for bf16 products and RNNs) builds a kernel per operand shape and
# keeps 1,024; a bf16 beam search over many batches meets more, and rebuilt ones cost ~1 ms each
# (0.5 s of a 5 s translation of Multi30k test2016). Read when oneDNN first builds one; a value
# the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")

from s2s_cli.config import ExperimentConfig, load_config
from s2s_cli.data.dataset import Dataset
from s2s_cli.data.preprocess import preprocess
from s2s_cli.version import __version__

__all__ = [
    "Dataset",
    "ExperimentConfig",
    "Seq2Seq",
    "Translator",
    "__version__",
    "average_checkpoints",
    "build_model",
    "corpus_scores",
    "load_config",
    "preprocess",
    "train",
]


def __getattr__(name: str) -> Any:
    # Torch-backed names load lazily so `s2s preprocess` and `s2s --help` never import torch.
    lazy = {
        "Seq2Seq": ("s2s_cli.models.seq2seq", "Seq2Seq"),
        "build_model": ("s2s_cli.models.build", "build_model"),
        "train": ("s2s_cli.training.trainer", "train"),
        "Translator": ("s2s_cli.decoding.translator", "Translator"),
        "corpus_scores": ("s2s_cli.scoring", "corpus_scores"),
        "average_checkpoints": ("s2s_cli.training.average", "average_checkpoints"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 's2s_cli' has no attribute '{name}'")
