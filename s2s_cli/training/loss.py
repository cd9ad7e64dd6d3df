"""Label-smoothed cross-entropy over the target vocabulary.

``label_smoothed_nll`` is the plain definition (autograd does the rest). Training uses
``ProjectedCrossEntropy``, which fuses the output projection with the loss: the logits of a
4,096-token batch over an 8,000-piece vocabulary are 32M numbers, and autograd's generic route
(projection, log_softmax, gather, mean, each with its own output and gradient buffer) allocates and
walks that matrix about ten times per update. Here one reusable buffer holds the logits, the loss
statistics are computed from it in row chunks in float32, and the backward overwrites the same
buffer with the closed-form gradient ``softmax(z) - (1 - eps) * onehot(y) - eps / V``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ROWS_PER_CHUNK = 256  # CPU: float32 row chunks of the logits stay small (~8 MB at 8k pieces)
CUDA_CHUNK_ELEMENTS = 2**26  # CUDA: fewer, larger chunks (256 MB in float32); launches cost more


def rows_per_chunk(logits: Tensor) -> int:
    """Rows of the logits processed at once: cache-sized on the CPU, launch-sized on CUDA."""
    if logits.device.type == "cuda":
        return max(ROWS_PER_CHUNK, CUDA_CHUNK_ELEMENTS // max(logits.size(1), 1))
    return ROWS_PER_CHUNK


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Summed loss and summed NLL for ``N x V`` logits of non-padding positions (or of all
    positions, with ``weight`` N: True/1 where a position counts, False/0 at padding).

    ``loss = (1 - eps) * nll + eps * mean_v(-log p_v)``: the cross-entropy against a target
    distribution putting ``1 - eps`` on the reference and ``eps`` spread evenly over the
    vocabulary (PyTorch's ``label_smoothing`` definition). Computed in float32 (float64 stays).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    lprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    nll = -lprobs.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = (1.0 - epsilon) * nll + epsilon * -lprobs.mean(dim=-1) if epsilon > 0 else nll
    if weight is not None:
        # where(), not a product: a padding row's loss must not leak NaN or inf into the sum
        counts = weight.bool()
        loss = torch.where(counts, loss, 0.0)
        nll = torch.where(counts, nll, 0.0)
    return loss.sum(), nll.sum().detach()


class _Workspace:
    """A grow-only logits buffer reused by every batch (and a guard against misuse)."""

    def __init__(self) -> None:
        self.buffer: Tensor | None = None
        self.generation = 0

    def logits(self, rows: int, vocab: int, like: Tensor) -> Tensor:
        buffer = self.buffer
        if (
            buffer is None
            or buffer.size(0) < rows
            or buffer.size(1) != vocab
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            capacity = (rows + 511) // 512 * 512  # headroom: batch sizes vary a little
            self.buffer = buffer = like.new_empty(capacity, vocab)
        self.generation += 1
        return buffer[:rows]


class _ProjectedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        inputs: Tensor,
        weight: Tensor,
        bias: Tensor,
        target: Tensor,
        epsilon: float,
        workspace: _Workspace,
    ) -> tuple[Tensor, Tensor]:
        dtype = inputs.dtype  # under autocast the features arrive in the autocast dtype
        # one reused N x V buffer: allocating 32M floats per batch costs page faults every update
        logits = workspace.logits(inputs.size(0), weight.size(0), inputs)
        with torch.autocast(inputs.device.type, enabled=False):
            torch.addmm(bias.to(dtype), inputs, weight.to(dtype).t(), out=logits)
        # statistics in float32 even for bf16 logits (a bf16 logsumexp loses ~2 digits); lse is
        # all the backward needs besides the buffer, so softmax is never stored
        stats = torch.float64 if dtype == torch.float64 else torch.float32
        lse = torch.empty(inputs.size(0), dtype=stats, device=inputs.device)
        loss = inputs.new_zeros((), dtype=torch.float64)
        nll = inputs.new_zeros((), dtype=torch.float64)
        chunk = rows_per_chunk(logits)
        for start in range(0, logits.size(0), chunk):
            z = logits[start : start + chunk].to(stats)
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[start : start + z.size(0)] = chunk_lse
            chunk_nll = chunk_lse - z.gather(1, target[start : start + z.size(0), None]).squeeze(1)
            nll += chunk_nll.sum()
            # smoothing term: -mean_v log p_v = lse - mean_v z_v, no log-softmax matrix needed
            loss += (1.0 - epsilon) * chunk_nll.sum() + epsilon * (chunk_lse - z.mean(-1)).sum()
        ctx.save_for_backward(inputs, weight, target, lse)
        ctx.epsilon, ctx.workspace, ctx.generation = epsilon, workspace, workspace.generation
        ctx.bias_dtype = bias.dtype
        ctx.mark_non_differentiable(nll)
        return loss.to(stats), nll.to(stats)

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):  # type: ignore[override]
        inputs, weight, target, lse = ctx.saved_tensors
        workspace = ctx.workspace
        if workspace.generation != ctx.generation:
            raise RuntimeError(
                "ProjectedCrossEntropy: another forward ran before this backward, or this backward "
                "already ran (the logits buffer is reused)"
            )
        workspace.generation += 1  # the buffer is about to hold gradients: no second backward
        epsilon, vocab = ctx.epsilon, weight.size(0)
        logits = workspace.buffer[: inputs.size(0)]
        g = grad_loss.to(lse.dtype)
        chunk = rows_per_chunk(logits)
        for start in range(0, logits.size(0), chunk):
            block = logits[start : start + chunk]
            rows = block.size(0)
            # d loss / d z = softmax(z) - (1 - eps) onehot(y) - eps / V, scaled by the upstream g
            grad = block.to(lse.dtype).sub_(lse[start : start + rows, None]).exp_().mul_(g)
            if epsilon > 0.0:
                grad.sub_(g * epsilon / vocab)
            index = torch.arange(rows, device=grad.device)
            grad[index, target[start : start + rows]] -= g * (1.0 - epsilon)
            block.copy_(grad)  # the logits buffer now holds d loss / d logits
        # the buffer now holds d loss / d logits: two matrix products give the input and weight
        # gradients, as autograd would from a materialised logits tensor
        grad_inputs = logits @ weight.to(logits.dtype)
        grad_weight = (logits.t() @ inputs).to(weight.dtype)
        grad_bias = logits.sum(0, dtype=lse.dtype).to(ctx.bias_dtype)
        return grad_inputs, grad_weight, grad_bias, None, None, None


class ProjectedCrossEntropy(nn.Module):
    """Output projection + label-smoothed cross-entropy, with a reused logits workspace.

    One forward must be followed by its backward before the next forward (as in any training
    step); anything else raises instead of returning a wrong gradient.
    """

    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon
        self._workspace = _Workspace()

    def forward(
        self, inputs: Tensor, weight: Tensor, bias: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Summed loss and NLL of ``inputs @ weight.T + bias`` (``N x V``) against ``target``."""
        return _ProjectedCrossEntropy.apply(
            inputs, weight, bias, target, self.epsilon, self._workspace
        )
