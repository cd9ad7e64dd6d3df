"""The CPU dropout of s2s_cli.models.dropout: PyTorch's dropout computed from torch.rand."""

import pytest
import torch
from torch import nn

from s2s_cli.config import load_config
from s2s_cli.models.build import build_model
from s2s_cli.models.dropout import Dropout, dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.2, 0.3, 0.5])
def test_dropout_zeroes_p_of_the_elements_and_scales_the_rest_as_pytorch_does(dtype, p):
    torch.manual_seed(0)
    x = (torch.rand(1000, 1000) + 0.5).to(dtype)  # no zeros of its own
    out = dropout(x, p, training=True)
    dropped = out == 0
    # 10^6 draws: the share's standard deviation is below 0.0005, so 0.004 is 8 of them
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.004)
    # the kept elements are x * (1 / keep) computed as PyTorch's CPU dropout computes them:
    # a mask of ones in x's dtype divided in place by 1 - p, times x
    scale = torch.ones((), dtype=dtype).div_(1 - p)
    assert torch.equal(out[~dropped], x[~dropped] * scale)
    assert out.dtype == dtype


def test_the_gradient_passes_through_the_kept_elements_scaled():
    torch.manual_seed(0)
    x = (torch.rand(300, 400) + 0.5).requires_grad_()
    out = dropout(x, 0.25, training=True)
    grad = torch.randn_like(out)
    out.backward(grad)
    kept = out != 0
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    assert torch.allclose(x.grad[kept], grad[kept] / 0.75)


def test_masks_follow_the_seed_and_move_on():
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first, second = dropout(x, 0.5, True), dropout(x, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5, True), first)
    assert not torch.equal(first, second)


def test_evaluation_zero_and_one_are_pytorchs():
    x = torch.randn(8, 16)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert "p=0.3" in repr(layer)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def test_models_drop_out_with_it_everywhere():
    """No layer of a built model uses PyTorch's CPU dropout (a bernoulli_ mask) by mistake."""
    cfg = load_config(
        overrides=["model.dropout=0.2", "model.encoder_layers=2", "model.decoder_layers=2"]
    ).model
    model = build_model(cfg, 20, 20)
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout | Dropout)]
    assert layers and all(type(m) is Dropout for m in layers)
