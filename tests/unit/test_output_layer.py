"""The output layer and products of a decoding step on the CPU: what they compute, the buffer
they reuse, the rows they round up for oneDNN."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from s2s_cli.decoding.output import LogitsBuffer, float_logits
from s2s_cli.decoding.scorer import _log_softmax
from s2s_cli.models import products


def operands(rows: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 48, generator=g).to(dtype)
    weight = torch.randn(320, 48, generator=g).to(dtype)
    bias = torch.randn(320, generator=g).to(dtype)
    return inputs, weight, bias


def test_float32_logits_are_linears_own():
    inputs, weight, bias = operands(37, torch.float32)
    assert torch.equal(
        float_logits(inputs, weight, bias), nn.functional.linear(inputs, weight, bias)
    )


def test_bf16_logits_are_the_bf16_product_plus_the_bias_in_float32():
    inputs, weight, bias = operands(37, torch.bfloat16)
    logits = float_logits(inputs, weight, bias)
    assert logits.dtype == torch.float32 and logits.shape == (37, 320)
    expected = nn.functional.linear(inputs, weight).float() + bias.float()
    assert torch.allclose(logits, expected, atol=1e-2, rtol=1e-2)
    # and close to the float32 arithmetic
    full = inputs.float() @ weight.float().T + bias.float()
    assert (logits - full).abs().max() < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_call_reuses_one_buffer(dtype):
    buffer = LogitsBuffer()
    first = float_logits(*operands(40, dtype), buffer)
    pointer = first.data_ptr()
    again = float_logits(*operands(24, dtype, seed=1), buffer)  # fewer rows: the same memory
    assert again.data_ptr() == pointer and again.shape == (24, 320)
    inputs, weight, bias = operands(24, dtype, seed=1)
    fresh = float_logits(inputs, weight, bias)  # a buffer of its own
    assert torch.equal(again, fresh)
    bigger = float_logits(*operands(90, dtype, seed=2), buffer)  # grows
    assert bigger.shape == (90, 320)


def test_log_softmax_in_place_gives_the_out_of_place_values():
    logits = torch.randn(33, 500, generator=torch.Generator().manual_seed(3)) * 5
    expected = torch.log_softmax(logits, dim=-1)
    pointer = logits.data_ptr()
    found = _log_softmax(logits)
    assert found.data_ptr() == pointer
    assert torch.equal(found, expected)


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 70])
def test_reduced_precision_products_round_their_rows_up(monkeypatch, rows):
    seen = []
    linear = nn.functional.linear
    monkeypatch.setattr(
        nn.functional, "linear", lambda x, *a: seen.append(x.size(0)) or linear(x, *a)
    )
    inputs, weight, bias = operands(rows, torch.bfloat16)
    result = products.step_linear(inputs, weight, bias)
    assert seen == [-(-rows // products.ROW_MULTIPLE) * products.ROW_MULTIPLE]
    assert result.shape == (rows, 320) and result.is_contiguous()
    assert torch.allclose(
        result.float(), linear(inputs, weight, bias).float(), atol=1e-2, rtol=1e-2
    )
    seen.clear()
    products.step_linear(*operands(rows, torch.float32))  # float32 (MKL): as it is
    assert seen == [rows]


def test_onednn_kernel_cache_is_raised_unless_the_user_set_it():
    script = "import os, s2s_cli; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    default = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    assert default.stdout.strip() == "4096"
    chosen = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "77"},
        capture_output=True,
        text=True,
    )
    assert chosen.stdout.strip() == "77"


needs_packing = pytest.mark.skipif(
    not products._onednn_packing(torch.bfloat16),
    reason="packed bf16 weights are off here by design (they need an AVX-512 CPU and PyTorch's oneDNN ops)",
)


@needs_packing
@pytest.mark.parametrize("rows", [1, 31, 33, 320])
def test_packed_bf16_products_are_the_linear_products(rows):
    """A decoding step's bf16 product by a packed weight (one, or two side by side as the LSTM
    step's [W_ih W_hh]) gives linear's values: the same bf16 product of the same operands."""
    inputs, weight, bias = operands(rows, torch.bfloat16)
    with torch.no_grad():
        assert products.packs(inputs, weight)
        result = products.step_linear(inputs, weight, bias)
        assert result.shape == (rows, 320) and result.dtype == torch.bfloat16
        assert result.is_contiguous()
        expected = nn.functional.linear(inputs, weight, bias)
        assert torch.allclose(result.float(), expected.float(), atol=0.05, rtol=0.01)
        exact = inputs.float() @ weight.float().T + bias.float()
        assert (result.float() - exact).abs().max() < 0.25  # bf16 rounding of values ~|10|
        left, right = weight[:, :20].contiguous(), weight[:, 20:].contiguous()
        joined = products.packed_linear(inputs, (left, right), bias)
        assert torch.equal(joined, result)


@needs_packing
def test_a_packed_weight_is_made_once_and_again_when_the_weight_changes():
    inputs, weight, bias = operands(40, torch.bfloat16)
    with torch.no_grad():
        first = products.packed_weight((weight,))
        assert products.packed_weight((weight,)) is first
        before = products.step_linear(inputs, weight, bias)
        weight.mul_(-1)  # in place: the version moves on, the pack must follow
        assert products.packed_weight((weight,)) is not first
        after = products.step_linear(inputs, weight, bias)
        negated = -(before.float() - bias.float())  # a stale pack would give `before` again
        assert torch.allclose(after.float() - bias.float(), negated, atol=0.2, rtol=0.02)
        other = weight.clone()  # another tensor: a pack of its own
        assert products.packed_weight((other,)) is not products.packed_weight((weight,))


@needs_packing
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags' own
def test_only_bf16_products_outside_autograd_and_autocast_are_packed():
    inputs, weight, _ = operands(8, torch.bfloat16)
    assert not products.packs(inputs, weight)  # autograd on
    with torch.no_grad():
        assert products.packs(inputs, weight)
        assert not products.packs(inputs.float(), weight.float())  # float32 stays with MKL
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not products.packs(inputs, weight)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not products.packs(inputs, weight)


def test_a_refused_packed_product_falls_back_to_linear_for_good(monkeypatch):
    inputs, weight, bias = operands(5, torch.bfloat16)
    monkeypatch.setattr(products, "_unpackable", set())
    monkeypatch.setattr(products, "packed_weight", lambda w: (_ for _ in ()).throw(RuntimeError))
    with torch.no_grad():
        result = products.packed_linear(inputs, (weight,), bias)
        assert torch.equal(result, nn.functional.linear(inputs, weight, bias))
        assert not products.packs(inputs, weight)


@needs_packing
def test_bf16_logits_by_a_packed_weight(monkeypatch):
    calls = []
    packed_linear = products.packed_linear
    monkeypatch.setattr(products, "packed_linear", lambda *a: calls.append(1) or packed_linear(*a))
    inputs, weight, bias = operands(37, torch.bfloat16)
    with torch.no_grad():
        logits = float_logits(inputs, weight, bias)
    assert calls == [1]
    assert logits.dtype == torch.float32 and logits.shape == (37, 320)
    expected = nn.functional.linear(inputs, weight).float() + bias.float()
    assert torch.allclose(logits, expected, atol=0.05, rtol=0.01)


def test_no_packing_where_this_cpu_runs_bf16_products_elsewhere(monkeypatch):
    """Without AVX-512 PyTorch keeps bf16 products off oneDNN (whose kernels may be slow there):
    so do decoding steps, and the logits are still right."""
    monkeypatch.setattr(products, "_onednn_packing", lambda dtype: False)
    inputs, weight, bias = operands(8, torch.bfloat16)
    with torch.no_grad():
        assert not products.packs(inputs, weight)
        logits = float_logits(inputs, weight, bias)
    expected = nn.functional.linear(inputs, weight).float() + bias.float()
    assert torch.allclose(logits, expected, atol=0.05, rtol=0.01)
