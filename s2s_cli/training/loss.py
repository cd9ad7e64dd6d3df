"""Label-smoothed cross-entropy over the target vocabulary.

``label_smoothed_nll`` is the plain definition (autograd does the rest). Training uses
``ProjectedCrossEntropy``, which fuses the output projection with the loss: the logits of a
4,096-token batch over an 8,000-piece vocabulary are 32M numbers, and autograd's generic route
(projection, log_softmax, gather, mean, each with its own output and gradient buffer) allocates and
walks that matrix about ten times per update. Here one reusable buffer holds the product
``x W^T``; the bias is added and the loss statistics computed in float32 row chunks of it (one
reused chunk buffer), and the backward overwrites the same buffer with the closed-form gradient
``softmax(z) - (1 - eps) * onehot(y) - eps / V``, summing the bias gradient chunk by chunk.
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
    """Grow-only buffers reused by every batch: the logits, and one float32 row chunk of them;
    and a guard against misuse."""

    def __init__(self) -> None:
        self.buffer: Tensor | None = None
        self.chunk: Tensor | None = None
        self.generation = 0

    def biased_chunk(self, block: Tensor, bias: Tensor) -> Tensor:
        """``block + bias`` in ``bias``'s dtype (float32 for bf16 and fp32 logits), in the reused
        chunk buffer: the buffer's rows stay as they are."""
        chunk = self.chunk
        if (
            chunk is None
            or chunk.numel() < block.numel()
            or chunk.dtype != bias.dtype
            or chunk.device != block.device
        ):
            self.chunk = chunk = block.new_empty(block.numel(), dtype=bias.dtype)
        chunk = chunk[: block.numel()].view(block.shape)
        if block.dtype == bias.dtype:
            return torch.add(block, bias, out=chunk)
        return chunk.copy_(block).add_(bias)

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
            # the product alone: the bias is added per row chunk in float32 below (addmm would
            # first fill the whole buffer with copies of the bias, one more pass over 32M values)
            torch.mm(inputs, weight.to(dtype).t(), out=logits)
        # statistics in float32 even for bf16 logits (a bf16 logsumexp loses ~2 digits); lse is
        # all the backward needs besides the buffer, so softmax is never stored
        stats = torch.float64 if dtype == torch.float64 else torch.float32
        bias_stats = bias.detach().to(stats)
        # per row: log-sum-exp, the reference's logit and the mean logit; sums after the loop
        lse, picked, mean = logits.new_empty((3, logits.size(0)), dtype=stats).unbind(0)
        chunk = rows_per_chunk(logits)
        for start in range(0, logits.size(0), chunk):
            z = workspace.biased_chunk(logits[start : start + chunk], bias_stats)
            end = start + z.size(0)
            torch.gather(z, 1, target[start:end, None], out=picked[start:end, None])
            torch.mean(z, dim=-1, out=mean[start:end])
            # log-sum-exp in place in the chunk (torch.logsumexp allocates a chunk-sized temporary
            # for z - max, which cost more than the rest of the loop on a 2-core Xeon)
            peak = z.amax(dim=-1, keepdim=True)
            torch.sum(z.sub_(peak).exp_(), dim=-1, out=lse[start:end])
            lse[start:end].log_().add_(peak.squeeze(1))
        nll_rows = lse - picked
        nll = nll_rows.sum(dtype=torch.float64)
        # smoothing term: -mean_v log p_v = lse - mean_v z_v, no log-softmax matrix needed
        loss = (1.0 - epsilon) * nll + epsilon * (lse - mean).sum(dtype=torch.float64)
        ctx.save_for_backward(inputs, weight, bias_stats, target, lse)
        ctx.epsilon, ctx.workspace, ctx.generation = epsilon, workspace, workspace.generation
        ctx.bias_dtype = bias.dtype
        nll = nll.to(stats)
        ctx.mark_non_differentiable(nll)  # the tensor returned, so it does not require grad
        return loss.to(stats), nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):  # type: ignore[override]
        inputs, weight, bias, target, lse = ctx.saved_tensors
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
        smoothing, reference = g * epsilon / vocab, g * (1.0 - epsilon)
        grad_bias = torch.zeros_like(bias)
        chunk = rows_per_chunk(logits)
        index = torch.arange(min(chunk, logits.size(0)), device=logits.device)
        for start in range(0, logits.size(0), chunk):
            block = logits[start : start + chunk]
            rows = block.size(0)
            # d loss / d z = softmax(z) - (1 - eps) onehot(y) - eps / V, scaled by the upstream g
            grad = workspace.biased_chunk(block, bias)
            grad.sub_(lse[start : start + rows, None]).exp_().mul_(g)
            if epsilon > 0.0:
                grad.sub_(smoothing)
            grad[index[:rows], target[start : start + rows]] -= reference
            # the bias gradient from the float32 chunk, while it is in cache (summing the whole
            # bf16 buffer afterwards first converts all of it to float32)
            grad_bias += grad.sum(0)
            block.copy_(grad)
        # the buffer now holds d loss / d logits: two matrix products give the input and weight
        # gradients, as autograd would from a materialised logits tensor
        grad_inputs = logits @ weight.to(logits.dtype)
        grad_weight = (logits.t() @ inputs).to(weight.dtype)
        return grad_inputs, grad_weight, grad_bias.to(ctx.bias_dtype), None, None, None


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
