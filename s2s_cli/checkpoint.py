"""Checkpoints: self-contained plain data (``torch.load(weights_only=True)``), written atomically.

A checkpoint carries everything needed to translate (config, SentencePiece models, weights) and
to resume training exactly (optimizer, schedule, scaler, RNG states, data position, counters),
and a SHA-256 digest of all of it that every load verifies: bit rot is an error, not silently
different weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from s2s_cli.config import ExperimentConfig, from_dict, to_dict
from s2s_cli.errors import CheckpointError, ConfigError
from s2s_cli.io import atomic_path
from s2s_cli.version import __version__

FORMAT = "s2s-checkpoint"
FORMAT_VERSION = 1
DIGEST_KEY = "digest"  # "sha256:<hex>" over every other entry; older checkpoints lack it

log = logging.getLogger(__name__)
_warned_undigested = False


@dataclass
class Progress:
    """Where a training run stands: what an exact resume continues from."""

    epoch: int = 1
    position: int = 0  # batches of the epoch already consumed
    updates: int = 0
    skipped: int = 0  # updates skipped for non-finite gradients
    train_seconds: float = 0.0
    bad_validations: int = 0  # scheduled validations in a row without a new best (patience)
    last_validated: int = -1  # update of the last validation (-1: none yet)


@dataclass
class Best:
    """The best validation score so far and the update that reached it."""

    metric: str
    value: float | None = None
    update: int = 0


@dataclass
class Vocabulary:
    src_size: int
    tgt_size: int
    joint: bool
    src_lang: str | None = None
    tgt_lang: str | None = None


@dataclass
class TrainingState:
    """What only resuming reads: optimizer, schedule, gradient scaler, RNG streams per rank."""

    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, list[torch.Tensor]]


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, typed; the one reader and writer of the on-disk payload.

    ``training`` is None for checkpoints made to translate (``s2s average``, ``s2s export``).
    ``int8_scales`` is set by ``s2s export --format int8``: the named weight matrices in
    ``model`` are int8, one float scale per row (``weight = int8 * scale[:, None]``).
    """

    config: ExperimentConfig
    vocab: Vocabulary
    spm: dict[str, bytes]  # "src" / "tgt" SentencePiece model files
    model: dict[str, torch.Tensor]
    progress: Progress = field(default_factory=Progress)
    best: Best | None = None
    training: TrainingState | None = None
    s2s_version: str = __version__
    data_dir: str | None = None
    averaged_from: list[str] | None = None
    int8_scales: dict[str, torch.Tensor] | None = None
    path: Path | None = field(default=None, compare=False)  # where it was loaded from
    digest: str | None = field(default=None, compare=False)  # verified on load; None: had none

    def payload(self) -> dict[str, Any]:
        """Plain data for ``torch.save`` (loadable with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "s2s_version": self.s2s_version,
            "config": to_dict(self.config),
            "vocab": asdict(self.vocab),
            "spm": {side: spm_to_tensor(data) for side, data in self.spm.items()},
            "model": self.model,
            "progress": asdict(self.progress),
            "best": None if self.best is None else asdict(self.best),
            "data_dir": self.data_dir,
        }
        if self.training is not None:  # (asdict would deep-copy every optimizer tensor)
            t = self.training
            out.update(optimizer=t.optimizer, schedule=t.schedule, scaler=t.scaler, rng=t.rng)
        if self.averaged_from is not None:
            out["averaged_from"] = list(self.averaged_from)
        if self.int8_scales is not None:
            out["int8_scales"] = self.int8_scales
        out[DIGEST_KEY] = payload_digest(out)
        return out

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path) -> Checkpoint:
        """Check and type a loaded payload; anything missing or malformed is a CheckpointError."""
        try:
            training = None
            if "optimizer" in payload:
                training = TrainingState(
                    payload["optimizer"], payload["schedule"], payload.get("scaler"), payload["rng"]
                )
            best = payload.get("best")
            return cls(
                config=checkpoint_config(payload, path),
                vocab=Vocabulary(**payload["vocab"]),
                spm={side: tensor_to_spm(t) for side, t in payload["spm"].items()},
                model=payload["model"],
                progress=Progress(**(payload.get("progress") or {})),
                best=None if not best else Best(**best),
                training=training,
                s2s_version=payload.get("s2s_version", "unknown"),
                data_dir=payload.get("data_dir"),
                averaged_from=payload.get("averaged_from"),
                int8_scales=payload.get("int8_scales"),
                path=path,
                digest=payload.get(DIGEST_KEY),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: malformed s2s checkpoint ({err!r})") from None


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file and a rename (a StorageError
    naming ``path`` if the disk is full or unwritable; the previous file stays)."""
    payload = checkpoint.payload()
    with atomic_path(path) as tmp:
        try:
            # Through a Python file, so a failed write keeps its OSError (errno and all); given a
            # path, torch reports "enforce fail at inline_container.cc" and nothing else.
            with open(tmp, "wb") as f:
                torch.save(payload, f)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and check a checkpoint; a one-line CheckpointError for anything wrong with it."""
    path = Path(path)
    return Checkpoint.from_payload(_load_payload(path, map_location), path)


@contextlib.contextmanager
def checkpoint_to_build_from(path: str | Path) -> Iterator[Checkpoint]:
    """A checkpoint whose tensors the block copies out (a model to build, on the CPU): the file
    is mapped rather than read, and its digest is verified on a thread while the block runs.

    A damaged file raises its CheckpointError when the block ends, in place of whatever the
    block raised (damage explains a mismatch), so nothing built from it is returned. Mapping
    and overlapping save ~0.2 s of a translation's start-up on a 150 MB checkpoint (0.23 s to
    read and verify it, 0.15 s to build the model). The mapping ends with the last tensor that
    views it: copy what you keep.
    """
    path = Path(path)
    payload = _load_payload(path, "cpu", mmap=True, verify=False)
    failures: list[CheckpointError] = []

    def verify() -> None:
        try:
            _verify_digest(payload, path)
        except CheckpointError as err:
            failures.append(err)

    # hashlib releases the GIL while it hashes, so the digest runs beside the model build
    verifier = threading.Thread(target=verify, name="s2s-checkpoint-digest", daemon=True)
    verifier.start()
    try:
        yield Checkpoint.from_payload(payload, path)
    finally:
        verifier.join()
        if failures:
            raise failures[0]  # in place of the block's own error, on purpose (see above)


def _load_payload(
    path: Path, map_location: str | torch.device, mmap: bool = False, verify: bool = True
) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not for users
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # arbitrary bytes make torch.load fail in arbitrary ways
        raise CheckpointError(
            f"{path}: not a readable s2s checkpoint ({_what_file_is(path, err)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an s2s checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported by this s2s "
            f"(expects {FORMAT_VERSION})"
        )
    if verify:
        _verify_digest(payload, path)
    return payload


def _what_file_is(path: Path, err: Exception) -> str:
    """What a file that torch.load refused looks like (torch's own message is a paragraph)."""
    import pickle
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as read_error:
        return f"cannot read it: {read_error.strerror or read_error}"
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path):
        if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower():
            return (
                "a PyTorch file holding Python objects, not plain data: a checkpoint of another "
                "toolkit, or not made by s2s"
            )
        return "a damaged or truncated PyTorch file"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file, not a checkpoint"
    if head[:1] == b"\x80":
        return "a pickle in an older torch.save format, not an s2s checkpoint"
    if _looks_like_text(head):
        return "a text file, not a checkpoint"
    if head[:4] == b"PK\x03\x04":
        return "a damaged or truncated PyTorch file"
    return "unrecognised bytes: not a checkpoint, or a damaged one"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # more than a character cut off at the end of the head
            return False
        text = head[: err.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\n\r\t" for ch in text)


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over every entry but the digest itself: tensors by dtype, shape and bytes, plain
    values by type and repr, dict entries in sorted key order (so it is independent of how the
    payload was built or loaded)."""
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in payload.items() if key != DIGEST_KEY})
    return f"sha256:{hasher.hexdigest()}"


def _feed(hasher: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        hasher.update(b"D%d" % len(value))
        for key in sorted(value, key=repr):  # keys are str, or int (optimizer state)
            _feed(hasher, key)
            _feed(hasher, value[key])
    elif isinstance(value, list | tuple):  # torch.load gives back what was saved; be lenient
        hasher.update(b"L%d" % len(value))
        for item in value:
            _feed(hasher, item)
    else:
        text = f"{type(value).__name__}:{value!r}"
        hasher.update(b"V%d:" % len(text) + text.encode("utf-8", "surrogatepass"))


def _verify_digest(payload: dict[str, Any], path: Path) -> None:
    global _warned_undigested
    stored = payload.get(DIGEST_KEY)
    if stored is None:
        if not _warned_undigested:
            _warned_undigested = True
            log.warning(
                "%s: written by s2s %s without an integrity digest; loaded unverified "
                "(checkpoints saved by this version carry one)",
                path,
                payload.get("s2s_version", "unknown"),
            )
        return
    if payload_digest(payload) != stored:
        raise CheckpointError(
            f"{path}: damaged: its contents do not match the SHA-256 digest saved with them "
            "(bit rot or a partial copy); use another checkpoint or copy it again"
        )


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

            shutil.copyfile(source, tmp)  # its errors name tmp: atomic_path reports them


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def model_from_checkpoint(
    checkpoint: Checkpoint, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from s2s_cli.models.build import build_model

    vocab = checkpoint.vocab
    try:
        # every weight comes from the checkpoint (a strict load): no random ones drawn first
        model = build_model(
            checkpoint.config.model, vocab.src_size, vocab.tgt_size, initialise=False
        )
        model.load_state_dict(float_weights(checkpoint))
    except (RuntimeError, ConfigError) as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"{checkpoint.path}: weights do not match its config ({reason})"
        ) from None
    return model.to(device).eval()


def float_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The model's weights as floating-point tensors (an int8 export's rows times their scales)."""
    scales = checkpoint.int8_scales
    if not scales:
        return checkpoint.model
    try:
        return {
            key: value.float() * scales[key].float().unsqueeze(1) if key in scales else value
            for key, value in checkpoint.model.items()
        }
    except (RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{checkpoint.path}: malformed int8 weights ({err})") from None
