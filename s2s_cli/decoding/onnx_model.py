"""ONNX export (``s2s export --format onnx``) and the scorer that runs an export on onnxruntime.

An export is a directory: ``encoder.onnx`` (source ids and lengths in; encoder outputs, padding
mask, attention keys, the encoder summary and the decoder's initial state out), ``step.onnx``
(one decoder step: previous pieces, state and encoder outputs in; logits, the new state and the
attention weights out), both with dynamic batch and source-length axes, the two SentencePiece
models and ``model.json`` (config, vocabulary, the graphs' input and output names and the
SHA-256 of every file). ``s2s translate -c DIR`` runs the same searches over
:class:`OnnxScorer`, so beam, greedy and sampling are s2s's own code; only the model arithmetic
is onnxruntime's.

The encoder is traced through its packed-sequence implementation with PyTorch's TorchScript-based
exporter: packed RNNs become ONNX RNN nodes with per-sentence lengths, which keeps the time axis
dynamic (the dynamo exporter fixes it to the traced length). A test compares the export with the
PyTorch model at several batch sizes and lengths.

Needs the ``onnx`` extra (``pip install 's2s-cli[onnx]'``: onnx and onnxruntime).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from s2s_cli.checkpoint import Checkpoint, model_from_checkpoint
from s2s_cli.config import ExperimentConfig, from_dict, to_dict
from s2s_cli.errors import CheckpointError, ConfigError, StorageError
from s2s_cli.models.decoder import DecoderState
from s2s_cli.models.encoder import EncoderOut
from s2s_cli.models.seq2seq import Seq2Seq
from s2s_cli.version import __version__

FORMAT = "s2s-onnx"
FORMAT_VERSION = 1
MANIFEST = "model.json"
OPSET = 17


@dataclasses.dataclass(frozen=True)
class Signature:
    """Which optional tensors a model's graphs carry (they depend on the architecture)."""

    cell: bool  # LSTM: a cell state beside the hidden state
    feed: bool  # input feeding: the previous attentional vector
    attention: bool  # keys in, attention weights out

    @classmethod
    def of(cls, model: Seq2Seq) -> Signature:
        return cls(
            cell=model.bridge.has_cell,
            feed=model.decoder.input_feeding,
            attention=model.decoder.attention is not None,
        )

    def encoder_outputs(self) -> list[str]:
        return [
            "outputs",
            "pad_mask",
            *(["keys"] if self.attention else []),
            "summary",
            "hidden",
        ] + (["cell"] if self.cell else [])

    def state_names(self) -> list[str]:
        return ["hidden", *(["cell"] if self.cell else []), *(["feed"] if self.feed else [])]

    def encoder_inputs_of_step(self) -> list[str]:
        """What each step reads of the encoder's outputs (not the initial state)."""
        return ["outputs", "pad_mask", *(["keys"] if self.attention else []), "summary"]

    def step_inputs(self) -> list[str]:
        return ["prev", *self.state_names(), *self.encoder_inputs_of_step()]

    def step_outputs(self) -> list[str]:
        new_state = [f"new_{name}" for name in self.state_names()]
        return ["logits", *new_state, *(["attention"] if self.attention else [])]


class _EncoderGraph(nn.Module):
    def __init__(self, model: Seq2Seq, signature: Signature) -> None:
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        enc = self.model.encode(src, lengths)
        state = self.model.init_state(enc)
        out = [enc.outputs, enc.pad_mask]
        if self.signature.attention:
            out.append(enc.keys)
        out += [enc.summary, state.hidden]
        if self.signature.cell:
            out.append(state.cell)
        return tuple(out)


class _StepGraph(nn.Module):
    def __init__(self, model: Seq2Seq, signature: Signature) -> None:
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, prev: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(self.signature.step_inputs()[1:], tensors, strict=True))
        enc = EncoderOut(
            named["outputs"],
            named["pad_mask"],
            named["summary"].unsqueeze(0),  # the decoder reads only the summary (peeky)
            None,
            named.get("keys"),
        )
        state = DecoderState(named["hidden"], named.get("cell"), named.get("feed"))
        logits, new, attention = self.model.step(prev, state, enc)
        out = [logits, new.hidden]
        if self.signature.cell:
            out.append(new.cell)
        if self.signature.feed:
            out.append(new.feed)
        if self.signature.attention:
            out.append(attention)
        return tuple(out)


# Dynamic axes: B sentences (or hypotheses), S source positions.
_AXES = {
    "src": {0: "B", 1: "S"},
    "lengths": {0: "B"},
    "prev": {0: "B"},
    "outputs": {0: "B", 1: "S"},
    "pad_mask": {0: "B", 1: "S"},
    "keys": {0: "B", 1: "S"},
    "summary": {0: "B"},
    "hidden": {1: "B"},
    "cell": {1: "B"},
    "feed": {0: "B"},
    "logits": {0: "B"},
    "new_hidden": {1: "B"},
    "new_cell": {1: "B"},
    "new_feed": {0: "B"},
    "attention": {0: "B", 1: "S"},
}


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The TorchScript exporter warns from C++ (straight to file descriptor 2) about packed
    sequences it handles correctly (the tests check the graphs): keep that off the user's
    terminal, and show it only if the export fails."""
    with warnings.catch_warnings(), tempfile.TemporaryFile() as captured:
        warnings.simplefilter("ignore")
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read()[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def export_onnx(checkpoint: Checkpoint, directory: Path) -> Path:
    """Write ``checkpoint``'s model as an ONNX export directory (see above); returns it."""
    _require_runtime()
    model = model_from_checkpoint(checkpoint).float().eval()
    model.encoder.impl = "packed"  # traced as ONNX RNNs with sequence lengths
    signature = Signature.of(model)
    # two sentences of unequal length (EOS 3 last, PAD 0 after), any piece ids the vocabulary has
    piece = model.encoder.embedding.num_embeddings - 1
    example_src = torch.tensor([[piece, piece, piece, 3], [piece, piece, 3, 0]])
    example_lengths = torch.tensor([4, 3])
    with torch.no_grad():
        encoded = _EncoderGraph(model, signature)(example_src, example_lengths)
    enc_named = dict(zip(signature.encoder_outputs(), encoded, strict=True))
    state = [enc_named["hidden"]]
    if signature.cell:
        state.append(enc_named["cell"])
    if signature.feed:
        state.append(torch.zeros(2, model.decoder.hidden_size))
    step_args = (
        torch.tensor([2, 2]),
        *state,
        enc_named["outputs"],
        enc_named["pad_mask"],
        *([enc_named["keys"]] if signature.attention else []),
        enc_named["summary"],
    )
    if directory.exists() and not (directory / MANIFEST).exists():
        raise StorageError(f"{directory}: exists and is not an s2s ONNX export; not replacing it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        with _quiet_export(), torch.no_grad():
            _export(
                _EncoderGraph(model, signature),
                (example_src, example_lengths),
                tmp / "encoder.onnx",
                ["src", "lengths"],
                signature.encoder_outputs(),
            )
            _export(
                _StepGraph(model, signature),
                step_args,
                tmp / "step.onnx",
                signature.step_inputs(),
                signature.step_outputs(),
            )
        (tmp / "src.spm").write_bytes(checkpoint.spm["src"])
        (tmp / "tgt.spm").write_bytes(checkpoint.spm["tgt"])
        files = ["encoder.onnx", "step.onnx", "src.spm", "tgt.spm"]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "s2s_version": __version__,
            "opset": OPSET,
            "config": to_dict(checkpoint.config),
            "vocab": dataclasses.asdict(checkpoint.vocab),
            "signature": dataclasses.asdict(signature),
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except OSError as err:
        raise StorageError(f"{directory}: cannot write ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]
) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,  # keeps the time axis dynamic (see the module docstring)
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={name: _AXES[name] for name in inputs + outputs},
        opset_version=OPSET,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "ONNX needs onnxruntime (and onnx to export): pip install 's2s-cli[onnx]'"
        ) from None
    return onnxruntime


def is_onnx_export(path: Path | str) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).exists()


@dataclasses.dataclass
class OnnxExport:
    directory: Path
    config: ExperimentConfig
    signature: Signature
    spm: dict[str, bytes]


def load_onnx_export(directory: Path | str) -> OnnxExport:
    """Read and check an export directory (manifest, file digests); one-line errors."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory / MANIFEST}: unreadable ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: not an s2s ONNX export of format {FORMAT_VERSION}")
    for name, digest in manifest.get("sha256", {}).items():
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing from the export")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: damaged (its SHA-256 differs from {MANIFEST}'s)")
    try:
        config = from_dict(manifest["config"])
        signature = Signature(**manifest["signature"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / MANIFEST}: malformed ({err!r})") from None
    spm = {side: (directory / f"{side}.spm").read_bytes() for side in ("src", "tgt")}
    return OnnxExport(directory, config, signature, spm)


class OnnxScorer:
    """The scorer contract (:mod:`s2s_cli.decoding.scorer`) over an export on onnxruntime."""

    def __init__(self, export: OnnxExport, threads: int | None = None) -> None:
        ort = _require_runtime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(
            str(export.directory / "encoder.onnx"), options, providers=providers
        )
        self.stepper = ort.InferenceSession(
            str(export.directory / "step.onnx"), options, providers=providers
        )
        self.signature = export.signature
        # the exporter drops inputs a graph does not read (the summary without peeky)
        self.step_inputs = {i.name for i in self.stepper.get_inputs()}
        self._repeated: tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]] | None = None

    def encode(self, src: Tensor, lengths: Tensor) -> dict[str, np.ndarray]:
        values = self.encoder.run(
            None, {"src": src.cpu().numpy(), "lengths": lengths.cpu().numpy()}
        )
        return dict(zip(self.signature.encoder_outputs(), values, strict=True))

    def init_state(self, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = {"hidden": enc["hidden"]}
        if self.signature.cell:
            state["cell"] = enc["cell"]
        if self.signature.feed:
            state["feed"] = np.zeros((enc["hidden"].shape[1], enc["hidden"].shape[2]), np.float32)
        return state

    def step(
        self, prev_tokens: Tensor, state: dict[str, np.ndarray], enc: dict[str, np.ndarray]
    ) -> tuple[Tensor, dict[str, np.ndarray], Tensor | None]:
        feeds = {"prev": prev_tokens.cpu().numpy(), **state}
        feeds.update(self._encoder_feeds(enc, prev_tokens.size(0)))
        feeds = {name: value for name, value in feeds.items() if name in self.step_inputs}
        values = dict(
            zip(self.signature.step_outputs(), self.stepper.run(None, feeds), strict=True)
        )
        new_state = {name: values[f"new_{name}"] for name in self.signature.state_names()}
        lprobs = torch.log_softmax(torch.from_numpy(values["logits"]).float(), dim=-1)
        attention = torch.from_numpy(values["attention"]) if self.signature.attention else None
        return lprobs, new_state, attention

    def _encoder_feeds(self, enc: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """What a step reads of ``enc``, one row per decoder row: the step graph was exported
        for equal rows, so a beam search's one row per sentence is repeated for its beams (once
        per encoder output, not per step)."""
        names = self.signature.encoder_inputs_of_step()
        sentences = enc["outputs"].shape[0]
        if sentences == rows:
            return {name: enc[name] for name in names}
        cached = self._repeated
        if cached is None or cached[0] is not enc or cached[1] != rows:
            repeated = {name: enc[name].repeat(rows // sentences, axis=0) for name in names}
            cached = self._repeated = (enc, rows, repeated)
        return cached[2]

    def select_encoder(self, enc: dict[str, np.ndarray], index: Tensor) -> dict[str, np.ndarray]:
        rows = index.cpu().numpy()
        return {
            name: value.take(rows, axis=1 if name in ("hidden", "cell") else 0)
            for name, value in enc.items()
        }

    def select_state(self, state: dict[str, np.ndarray], index: Tensor) -> dict[str, np.ndarray]:
        rows = index.cpu().numpy()
        return {
            name: value.take(rows, axis=0 if name == "feed" else 1) for name, value in state.items()
        }
