"""int8 decoding on the CPU: PyTorch's dynamic quantization of the decoder and output layer,
and int8 checkpoints to ship.

``--precision int8`` keeps the encoder (run once per sentence) in float32 and gives every matrix
multiplied at each decoding step 8-bit integer weights: the decoder LSTM/GRU and its linear
layers (attention, attentional layer, pre-output, bridge) through
``torch.ao.quantization.quantize_dynamic`` (one scale per output row; activations are quantized
per call), and the output layer through :class:`Int8Output` (one scale per vocabulary row, so a
shortlist's rows are exactly the full matrix's rows). Plain RNN cells have no quantized kernel
and stay float32. The arithmetic is fbgemm/oneDNN's, not ours.

:func:`int8_checkpoint` (``s2s export --format int8``) stores every weight matrix as int8 rows
with one float scale per row, about a quarter of the float checkpoint, and sets
``decode.precision: int8``. Loading it multiplies the rows back; quantizing those values again
per row gives back the same integers, so translating the export computes what ``--precision
int8`` computes on the original, with the encoder and embeddings now rounded to 8 bits as well.

PyTorch marks this eager-mode API deprecated in favour of torchao; where a PyTorch no longer has
it, ``int8`` fails with one line saying so.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from s2s_cli.checkpoint import Checkpoint
from s2s_cli.errors import CheckpointError, ConfigError
from s2s_cli.models.seq2seq import Seq2Seq

# Module types quantize_dynamic swaps for int8 versions (nn.RNN has none).
QUANTIZED_TYPES = {nn.Linear, nn.LSTM, nn.GRU}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """PyTorch warns on every call of its deprecated quantization API; say it once, in docs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _api() -> tuple[object, type[nn.Module]]:
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import quantize_dynamic
    except ImportError as err:  # pragma: no cover - a PyTorch without eager quantization
        raise ConfigError(
            f"decode.precision int8: this PyTorch ({torch.__version__}) has no dynamic "
            f"quantization ({err}); use fp32 or bf16"
        ) from None
    if "fbgemm" not in torch.backends.quantized.supported_engines and (
        "x86" not in torch.backends.quantized.supported_engines
    ):  # pragma: no cover - e.g. some ARM builds (qnnpack only)
        raise ConfigError(
            "decode.precision int8: this PyTorch build has no x86 int8 kernels "
            f"(engines: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    return quantize_dynamic, DynamicLinear


def quantize_int8(model: Seq2Seq) -> tuple[Seq2Seq, Int8Output]:
    """An int8 copy of ``model`` for CPU decoding, and its int8 output layer (``model`` is left
    as it is)."""
    quantize_dynamic, _ = _api()
    from torch.ao.quantization import per_channel_dynamic_qconfig

    quantized = copy.deepcopy(model).float().eval()
    per_row = dict.fromkeys(QUANTIZED_TYPES, per_channel_dynamic_qconfig)
    with _quiet():
        for part in (quantized.decoder, quantized.bridge):
            quantize_dynamic(part, per_row, dtype=torch.qint8, inplace=True)
    weight, bias = quantized.decoder.output_matrix()
    return quantized, Int8Output(quantized.decoder.pre_output, weight.detach(), bias.detach())


def row_scales(weight: Tensor) -> Tensor:
    """Symmetric per-row scales: each row's largest magnitude maps to 127."""
    return (weight.abs().amax(dim=1).double() / 127.0).clamp(min=1e-12)


class Int8Output:
    """``logits = pre(features) @ int8(weight).T + bias`` with one scale per vocabulary row.

    ``restrict(ids)`` quantizes only those rows, with the scales they have in the full matrix,
    so a shortlist's logits are the full int8 layer's logits of those pieces.
    """

    def __init__(
        self, pre: nn.Module | None, weight: Tensor, bias: Tensor, scales: Tensor | None = None
    ) -> None:
        _, dynamic_linear = _api()
        self.pre = pre
        self.weight = weight.float()  # kept to quantize row subsets with the same scales
        self.bias = bias.float()
        self.scales = row_scales(self.weight) if scales is None else scales
        zero_points = torch.zeros(self.weight.size(0), dtype=torch.long)
        with _quiet():
            qweight = torch.quantize_per_channel(
                self.weight, self.scales, zero_points, 0, torch.qint8
            )
            self.linear = dynamic_linear(
                self.weight.size(1), self.weight.size(0), dtype=torch.qint8
            )
            self.linear.set_weight_bias(qweight, self.bias)

    def __call__(self, features: Tensor) -> Tensor:
        inputs = features if self.pre is None else self.pre(features)
        return self.linear(inputs.float())

    def restrict(self, ids: Tensor) -> Int8Output:
        return Int8Output(
            self.pre,
            self.weight.index_select(0, ids),
            self.bias.index_select(0, ids),
            self.scales.index_select(0, ids),
        )


def int8_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """An inference-only copy of ``checkpoint`` with int8 weight matrices (see above)."""
    if checkpoint.int8_scales is not None:
        raise CheckpointError(f"{checkpoint.path}: is already an int8 export")
    weights, scales = {}, {}
    done: dict[tuple, tuple[Tensor, Tensor]] = {}  # shared matrices (tied embeddings) stay shared
    for key, tensor in checkpoint.model.items():
        if tensor.is_floating_point() and tensor.dim() == 2:
            identity = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
            if identity not in done:
                scale = row_scales(tensor.float()).float()
                rows = (tensor.float() / scale.unsqueeze(1)).round().clamp(-127, 127)
                done[identity] = (rows.to(torch.int8), scale)
            weights[key], scales[key] = done[identity]
        else:
            weights[key] = tensor
    config = dataclasses.replace(
        checkpoint.config,
        decode=dataclasses.replace(checkpoint.config.decode, precision="int8"),
    )
    return dataclasses.replace(
        checkpoint, config=config, model=weights, int8_scales=scales, training=None
    )
