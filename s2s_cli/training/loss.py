"""Label-smoothed cross-entropy over the target vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Summed loss and summed NLL for ``N x V`` logits of non-padding positions.

    ``loss = (1 - eps) * nll + eps * mean_v(-log p_v)``: the cross-entropy against a target
    distribution putting ``1 - eps`` on the reference and ``eps`` spread evenly over the
    vocabulary (PyTorch's ``label_smoothing`` definition). Computed in float32.
    """
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(1, target.unsqueeze(1)).squeeze(1)
    if epsilon == 0.0:
        total = nll.sum()
        return total, total.detach()
    smooth = -lprobs.mean(dim=-1)
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return loss.sum(), nll.sum().detach()
