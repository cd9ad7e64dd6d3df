"""``s2s average``: the mean of several checkpoints' parameters, as a new translation checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch

from s2s_cli.checkpoint import load_checkpoint, save_checkpoint
from s2s_cli.errors import CheckpointError, ConfigError
from s2s_cli.io import remove_stale_temporaries

log = logging.getLogger(__name__)


def last_checkpoints(save_dir: Path, count: int) -> list[Path]:
    """The ``count`` most recent periodic checkpoints (``checkpoint_u*.pt``) in ``save_dir``."""
    periodic = sorted(save_dir.glob("checkpoint_u*.pt"), key=lambda p: int(p.stem.split("_u")[1]))
    if not periodic:
        raise CheckpointError(
            f"{save_dir}: no periodic checkpoints (checkpoint_u*.pt); train with train.save_every=N"
        )
    if len(periodic) < count:
        log.warning(
            "%s: %d periodic checkpoint%s, not the %d asked for; averaging %d (keep more with "
            "train.keep_last)",
            save_dir,
            len(periodic),
            "" if len(periodic) == 1 else "s",
            count,
            len(periodic),
        )
    return periodic[-count:]


def average_checkpoints(paths: list[Path], output: Path) -> Path:
    """Average model parameters; config, vocabulary and SentencePiece come from the last input.

    The result has no optimizer state: it is for translating (and further averaging), not resuming.
    """
    if not paths:
        raise ConfigError("no checkpoints to average")
    total: dict[str, torch.Tensor] | None = None
    reference = None
    for path in paths:
        checkpoint = load_checkpoint(path)
        if checkpoint.int8_scales is not None:
            raise CheckpointError(
                f"{path}: an int8 export (s2s export); average the checkpoints it was made from"
            )
        state = checkpoint.model
        if reference is None:
            reference = checkpoint
            total = {
                k: v.double().clone() if v.is_floating_point() else v.clone()
                for k, v in state.items()
            }
            continue
        assert total is not None
        if state.keys() != total.keys() or checkpoint.config.model != reference.config.model:
            raise CheckpointError(
                f"{path}: a different architecture from {paths[0]}; cannot average"
            )
        if checkpoint.spm["tgt"] != reference.spm["tgt"]:
            raise CheckpointError(f"{path}: a different vocabulary from {paths[0]}; cannot average")
        for key, value in state.items():
            if value.is_floating_point():
                total[key] += value.double()
    assert total is not None and reference is not None
    last = load_checkpoint(paths[-1]) if len(paths) > 1 else reference
    averaged = {
        k: (v / len(paths)).to(last.model[k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    result = dataclasses.replace(
        last, model=averaged, training=None, data_dir=None, averaged_from=[str(p) for p in paths]
    )
    remove_stale_temporaries(output.parent, re.escape(output.name))  # a killed earlier run's
    save_checkpoint(result, output)
    return output
