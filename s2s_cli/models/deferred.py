"""Weight gradients of a step loop computed once per batch instead of once per step.

A teacher-forced decoder with input feeding multiplies the same weights at every target step.
Autograd computes each such weight's gradient step by step: T matrix products whose inner
dimension is only the batch (a few hundred rows), and T accumulations of a full-size gradient.
:class:`DeferredLinear` stashes each step's input and output gradient instead and computes the
weight's gradient as one matrix product over all steps, when the backward pass reaches the
weight (after every step's). Same gradient up to summation order; used in training only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function


class _Stash:
    """The (input, output gradient) pairs of every step, in the order backward meets them."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []
        self.grads: list[Tensor] = []


class _CollectGradient(Function):
    """Passes the weight through; its backward runs after every step's and sums their parts."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, stash: _Stash, dtype: torch.dtype) -> Tensor:
        ctx.stash = stash
        ctx.set_materialize_grads(False)  # the steps send no gradient here: no zeros made
        if dtype != weight.dtype:  # cast once for all steps (autocast would cast at each)
            return weight.detach().to(dtype)
        return weight.detach().view_as(weight)

    @staticmethod
    def backward(ctx: Any, _unused: Tensor | None) -> tuple[Tensor | None, None, None]:
        stash = ctx.stash
        if not stash.grads:
            return None, None, None
        grads, inputs = torch.cat(stash.grads), torch.cat(stash.inputs)
        stash.grads.clear()
        stash.inputs.clear()
        # one (out x rows) @ (rows x in) product, rows = every step's rows together
        # (autograd casts it to the weight's dtype)
        return grads.t() @ inputs, None, None


class _StepMatmul(Function):
    """``x @ weight.T`` for one step; backward returns the input's gradient and stashes the
    rest for :class:`_CollectGradient`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stash: _Stash) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stash = stash
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        ctx.stash.inputs.append(x)
        ctx.stash.grads.append(grad)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, None


class DeferredLinear:
    """``x @ weight.T`` at every step of one forward pass, ``weight``'s gradient computed once.

    Make one per forward pass (it holds that pass's stash). Under CPU autocast the products run
    in the autocast dtype as ``nn.functional.linear`` would.
    """

    def __init__(self, weight: Tensor) -> None:
        self._stash = _Stash()
        autocast = torch.is_autocast_enabled("cpu") and weight.dtype == torch.float32
        self.dtype = torch.get_autocast_dtype("cpu") if autocast else weight.dtype
        with torch.autocast("cpu", enabled=False):
            self._weight = _CollectGradient.apply(weight, self._stash, self.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            return _StepMatmul.apply(x.to(self.dtype), self._weight, self._stash)
