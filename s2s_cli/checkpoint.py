"""Checkpoints: self-contained plain data (``torch.load(weights_only=True)``), written atomically.

A checkpoint carries everything needed to translate (config, SentencePiece models, weights) and
to resume training exactly (optimizer, schedule, scaler, RNG states, data position, counters).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from s2s_cli.config import ExperimentConfig, from_dict
from s2s_cli.errors import CheckpointError, ConfigError
from s2s_cli.io import atomic_path

FORMAT = "s2s-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; a one-line CheckpointError for anything wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # arbitrary bytes make torch.load fail in arbitrary ways
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable s2s checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an s2s checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported by this s2s "
            f"(expects {FORMAT_VERSION})"
        )
    return payload


def checkpoint_config(payload: dict[str, Any], path: str | Path) -> ExperimentConfig:
    try:
        return from_dict(payload["config"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{path}: checkpoint config is invalid ({err})") from None


def spm_to_tensor(model: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(model), dtype=torch.uint8)


def tensor_to_spm(tensor: torch.Tensor) -> bytes:
    return tensor.numpy().tobytes()


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes atomically (a hard link when possible)."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def model_from_checkpoint(
    payload: dict[str, Any], path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, ExperimentConfig]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from s2s_cli.models.build import build_model

    cfg = checkpoint_config(payload, path)
    vocab = payload.get("vocab", {})
    try:
        model = build_model(cfg.model, int(vocab["src_size"]), int(vocab["tgt_size"]))
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ConfigError) as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not match its config ({reason})") from None
    return model.to(device).eval(), cfg
