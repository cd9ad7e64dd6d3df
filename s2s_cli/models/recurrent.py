"""Calling an ``nn.LSTM``/``GRU``/``RNN`` in the precision the run asked for, on every device.

On CUDA, PyTorch's autocast runs cuDNN RNNs in **float16 whatever autocast dtype was asked for**
(its ``_cudnn_rnn`` wrapper casts to half), so a ``bf16`` run would silently train its recurrent
layers in fp16 without a gradient scaler. :func:`run_rnn` never lets ``bf16`` mean fp16 there: the
RNN runs outside autocast in bf16 (on bf16 copies of its weights, where cuDNN supports bf16 RNNs,
9.13+) or in float32, as ``BF16_RNN_ON_CUDA`` says. The same rule lets inference models whose
weights were cast to bf16 run on a cuDNN without bf16 RNNs. ``fp16`` keeps autocast's fp16 path
(training pairs it with a gradient scaler). On the CPU the call is unchanged: oneDNN runs bf16
RNNs under autocast.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from s2s_cli.config import CELLS

RnnState = Tensor | tuple[Tensor, Tensor] | None

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
if set(RNN_CLASSES) != set(CELLS):  # pragma: no cover - caught by every test run
    raise ImportError(f"RNN_CLASSES {sorted(RNN_CLASSES)} != config CellName {sorted(CELLS)}")


def has_cell_state(cell: str) -> bool:
    """Whether the recurrent state has a memory cell besides the hidden state (LSTM)."""
    return issubclass(RNN_CLASSES[cell], nn.LSTM)


# The functional forms nn.RNNBase.forward calls, by ``rnn.mode`` (LSTM's, torch.lstm, returns
# its two states apart and is called by name).
_LAYER_FUNCTIONS = {
    "GRU": torch.gru,
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
}


def run_layer(
    rnn: nn.RNNBase, layer: int, reverse: bool, x: Tensor, state: RnnState = None
) -> tuple[Tensor, RnnState]:
    """One layer and direction of a (multi-layer, bidirectional) RNN module, run as a one-layer
    unidirectional batch-first RNN over ``x``: ``(outputs B x T x H, state 1 x B x H)``.

    The same computation ``nn.RNNBase.forward`` makes for a module holding only those weights
    (the CPU encoder runs a stack this way, segment by segment). No precision rules: CPU only.
    """
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
    params = [getattr(rnn, name + suffix) for name in names]
    if state is None:
        zeros = x.new_zeros(1, x.size(0), rnn.hidden_size)
        state = (zeros, zeros) if rnn.mode == "LSTM" else zeros
    args = (rnn.bias, 1, 0.0, rnn.training, False, True)
    if rnn.mode == "LSTM":
        out, h, c = torch.lstm(x, state, params, *args)
        return out, (h, c)
    return _LAYER_FUNCTIONS[rnn.mode](x, state, params, *args)


# What a bf16 run computes its recurrent layers in on CUDA (measured by benchmarks/gpu.py):
#   "bf16": bf16 copies of the weights per call (cuDNN 9.13+; else float32)
#   "fp32": float32 weights as they are (cuDNN may use TF32, torch.backends.cudnn.allow_tf32)
#   "autocast": PyTorch's autocast, which runs cuDNN RNNs in fp16
# fp32 was the fastest on an H100 in one run (bench-lstm 219k target tok/s vs 178k autocast;
# GNMT-shaped 80k vs 63k autocast and 67k bf16): casting the weights per call costs more than the
# recurrence gains at these sizes. docs/benchmarks.md, "GPU".
BF16_RNN_ON_CUDA = "fp32"


def cast_for_inference(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Cast ``model`` (in place) to ``dtype`` for decoding on ``device``; returns it.

    bf16 on CUDA keeps the recurrent layers' weights in float32, as training does
    (``BF16_RNN_ON_CUDA == "fp32"``): cuDNN cannot keep bf16 RNN weights in one flat buffer
    (``torch.backends.cudnn.is_acceptable`` excludes bf16, so ``flatten_parameters`` does nothing),
    and a call with scattered weights copies them into a fresh buffer first: a copy per layer at
    every decoding step. :func:`run_rnn` casts the inputs to float32 and the outputs back.
    """
    model.to(dtype)
    if dtype == torch.bfloat16 and device.type == "cuda" and BF16_RNN_ON_CUDA == "fp32":
        for module in model.modules():
            if isinstance(module, nn.RNNBase):
                module.float()  # (re)flattens its weights
    return model


def run_rnn(rnn: nn.RNNBase, inputs: Any, state: RnnState = None) -> tuple[Any, RnnState]:
    """``rnn(inputs, state)``, with bf16 on CUDA never silently computed in fp16.

    ``inputs`` is a batch-first tensor or a ``PackedSequence``. Outputs and the new state come
    back in the dtype the inputs had, so the surrounding (autocast or pre-cast) code is unaffected.
    """
    data = inputs.data if isinstance(inputs, PackedSequence) else inputs
    if not _precision_rules_apply(data):
        return rnn(inputs, state)
    dtype = _compute_dtype(rnn.weight_ih_l0.dtype, data)
    if dtype is None:
        return rnn(inputs, state)
    return _call_in(rnn, inputs, state, dtype, data.dtype)


def plain_call_on(data: Tensor) -> bool:
    """Whether an RNN call on ``data`` is the plain call, with none of :func:`run_rnn`'s rules
    (the CPU): code that computes a recurrent layer itself may do so only then."""
    return not _precision_rules_apply(data)


def _precision_rules_apply(data: Tensor) -> bool:
    """CUDA only: on the CPU the plain call is right (a test routes CPU tensors through here)."""
    return data.device.type == "cuda"


def _compute_dtype(weight_dtype: torch.dtype, data: Tensor) -> torch.dtype | None:
    """The dtype a CUDA RNN call must run in, or None where the plain call already does right:
    autocast's fp16 (the fp16 run has a gradient scaler), ``BF16_RNN_ON_CUDA == "autocast"``, or
    inputs and weights already in a dtype cuDNN runs."""
    autocasting, autocast_dtype = _cuda_autocast()
    if autocasting:
        if autocast_dtype == torch.float16 or (
            autocast_dtype == torch.bfloat16 and BF16_RNN_ON_CUDA == "autocast"
        ):
            return None
        wanted = autocast_dtype
        if wanted == torch.bfloat16 and BF16_RNN_ON_CUDA == "fp32":
            wanted = torch.float32
    else:
        wanted = weight_dtype
    if wanted == torch.bfloat16 and not cudnn_rnn_supports(torch.bfloat16, data.device):
        wanted = torch.float32
    return None if not autocasting and wanted == weight_dtype == data.dtype else wanted


def _cuda_autocast() -> tuple[bool, torch.dtype]:
    """Whether CUDA autocast is on, and its dtype (torch < 2.4 spells both differently)."""
    try:
        return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    except TypeError:  # pragma: no cover - torch 2.2/2.3
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _call_in(
    rnn: nn.RNNBase, inputs: Any, state: RnnState, dtype: torch.dtype, out_dtype: torch.dtype
) -> tuple[Any, RnnState]:
    """Run ``rnn`` with weights, inputs and state cast to ``dtype`` (casts are differentiable)."""
    args = (_cast(inputs, dtype), _cast_state(state, dtype))
    with torch.autocast("cuda", enabled=False):
        if rnn.weight_ih_l0.dtype == dtype:
            output, new_state = rnn(*args)
        else:
            with warnings.catch_warnings():
                # cuDNN copies the cast weights into one flat buffer per call, as autocast does
                warnings.filterwarnings("ignore", message="RNN module weights are not part")
                params = {name: p.to(dtype) for name, p in rnn.named_parameters()}
                output, new_state = functional_call(rnn, params, args)
    # the state too comes back in the inputs' dtype: inference without autocast (bf16 weights
    # around float32 RNNs, cast_for_inference) must not meet a float32 state in a bf16 layer
    return _cast(output, out_dtype), _cast_state(new_state, out_dtype)


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.to(dtype))
    return x.to(dtype)


def _cast_state(state: RnnState, dtype: torch.dtype) -> RnnState:
    if state is None:
        return None
    if isinstance(state, tuple):
        return state[0].to(dtype), state[1].to(dtype)
    return state.to(dtype)


@functools.cache
def _probe(dtype: torch.dtype, device: str) -> bool:
    try:
        with torch.enable_grad(), torch.autocast("cuda", enabled=False), warnings.catch_warnings():
            # cuDNN cannot keep bf16 weights in one flat buffer: not news for a probe
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            rnn = nn.LSTM(8, 8, batch_first=True).to(device=device, dtype=dtype)
            x = torch.randn(2, 3, 8, device=device, dtype=dtype, requires_grad=True)
            rnn(x)[0].float().sum().backward()
        torch.cuda.synchronize(device)
        return True
    except RuntimeError:
        return False


def cudnn_rnn_supports(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this CUDA device's cuDNN runs (and differentiates) RNNs in ``dtype``; probed once."""
    return _probe(dtype, str(device))
