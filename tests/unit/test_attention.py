import math

import pytest
import torch

from s2s_cli.models.attention import ATTENTION_KINDS, Attention


def _inputs(kind: str, batch=3, steps=4, src=6, hidden=8):
    torch.manual_seed(0)
    attention = Attention(kind, hidden, hidden)
    values = torch.randn(batch, src, hidden)
    pad_mask = torch.zeros(batch, src, dtype=torch.bool)
    pad_mask[1, 4:] = True
    pad_mask[2, 2:] = True
    query = torch.randn(batch, steps, hidden)
    return attention, query, values, pad_mask


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_padded_positions_get_exactly_zero_weight_and_rows_sum_to_one(kind):
    attention, query, values, pad_mask = _inputs(kind)
    context, weights = attention(query, attention.project_keys(values), values, pad_mask)
    assert context.shape == (3, 4, 8) and weights.shape == (3, 4, 6)
    assert torch.all(weights.masked_select(pad_mask.unsqueeze(1).expand_as(weights)) == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-6)
    assert torch.allclose(context, weights @ values, atol=1e-6)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_padding_values_do_not_change_the_context(kind):
    attention, query, values, pad_mask = _inputs(kind)
    changed = values.clone()
    changed[pad_mask] = 1e4
    a = attention(query, attention.project_keys(values), values, pad_mask)
    b = attention(query, attention.project_keys(changed), changed, pad_mask)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.equal(a[1], b[1])


def test_dot_scores_and_scaled_dot_scaling():
    attention, query, values, pad_mask = _inputs("dot")
    scaled = Attention("scaled_dot", 8, 8)
    no_pad = torch.zeros_like(pad_mask)
    _, w_dot = attention(query, values, values, no_pad)
    _, w_scaled = scaled(query, values, values, no_pad)
    expected_dot = torch.softmax(query @ values.transpose(1, 2), -1)
    expected_scaled = torch.softmax(query @ values.transpose(1, 2) / math.sqrt(8), -1)
    assert torch.allclose(w_dot, expected_dot, atol=1e-6)
    assert torch.allclose(w_scaled, expected_scaled, atol=1e-6)


def test_general_and_additive_match_their_formulas():
    general, query, values, pad_mask = _inputs("general")
    no_pad = torch.zeros_like(pad_mask)
    _, w = general(query, general.project_keys(values), values, no_pad)
    scores = query @ (values @ general.key_proj.weight.T).transpose(1, 2)
    assert torch.allclose(w, torch.softmax(scores, -1), atol=1e-6)

    additive = Attention("additive", 8, 8)
    _, w = additive(query, additive.project_keys(values), values, no_pad)
    keys = values @ additive.key_proj.weight.T
    q = query @ additive.query_proj.weight.T + additive.query_proj.bias
    energy = torch.tanh(keys.unsqueeze(1) + q.unsqueeze(2)) @ additive.energy.weight.T
    assert torch.allclose(w, torch.softmax(energy.squeeze(-1), -1), atol=1e-6)
