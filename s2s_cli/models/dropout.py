"""Dropout whose mask is drawn with ``torch.rand`` on the CPU.

PyTorch's dropout on the CPU draws its mask with ``bernoulli_``, which costs 2-2.5x a
``torch.rand`` of the same size there (4,096 x 512: 14-15 ms against 5.5-7 ms on an Intel Xeon,
one thread or two): the bench-lstm fused path in bf16 spent ~7% of an update drawing masks.
``u < keep`` for ``u`` uniform in [0, 1) is the same Bernoulli draw (to rand's 2^-24 steps), and
the kept values are scaled by ``1 / keep`` as PyTorch scales them (a ``div_`` in the input's
dtype), so the layer computes what ``nn.Dropout`` computes from a different stream of random
numbers. Other devices keep PyTorch's own (fused) dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` (its checks, attributes and repr) with the mask of :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``nn.functional.dropout(x, p, training)``, its mask drawn by ``torch.rand`` on the CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    keep = 1.0 - p
    # float32 uniforms whatever x's dtype (a bf16 uniform would move the probability), then the
    # 0/1 mask in x's dtype divided by keep there, as PyTorch's CPU dropout scales its mask
    noise = torch.rand(x.shape, device=x.device).lt_(keep).to(x.dtype).div_(keep)
    return x * noise
