r"""Global attention over encoder outputs (Luong et al. 2015; Bahdanau et al. 2015).

For a decoder query :math:`q` (size ``Hd``) and encoder outputs :math:`\bar h_s` (size ``He``):

* ``dot``:        :math:`score = q^\top \bar h_s`                 (needs ``Hd == He``)
* ``scaled_dot``: :math:`score = q^\top \bar h_s / \sqrt{Hd}`
* ``general``:    :math:`score = q^\top W_a \bar h_s`             (``W_a \bar h_s`` computed once)
* ``additive``:   :math:`score = v^\top \tanh(W_k \bar h_s + W_q q)` (keys computed once)

Weights are a softmax over source positions, computed in float32, with padded positions set to
exactly zero; the context is the weighted sum of the encoder outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from s2s_cli.config import ATTENTIONS

ATTENTION_KINDS = tuple(kind for kind in ATTENTIONS if kind != "none")  # "none": no module


class Attention(nn.Module):
    """Scores queries against precomputed keys; returns the context and the weights."""

    def __init__(self, kind: str, query_size: int, value_size: int) -> None:
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention '{kind}'")
        self.kind = kind
        self.scale = 1.0 / math.sqrt(query_size) if kind == "scaled_dot" else 1.0
        self.key_proj: nn.Linear | None = None
        self.query_proj: nn.Linear | None = None
        self.energy: nn.Linear | None = None
        if kind == "general":
            self.key_proj = nn.Linear(value_size, query_size, bias=False)
        elif kind == "additive":
            self.key_proj = nn.Linear(value_size, query_size, bias=False)
            self.query_proj = nn.Linear(query_size, query_size, bias=True)
            self.energy = nn.Linear(query_size, 1, bias=False)

    def project_keys(self, values: Tensor) -> Tensor:
        """Keys from encoder outputs ``B x S x He``: done once per sentence, not per step."""
        return values if self.key_proj is None else self.key_proj(values)

    def float32_keys(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values for decoding a reduced-precision model on the CPU: in float32 where
        the scores are batched products (not ``additive``), converted once per batch.

        In bf16, oneDNN builds a kernel for every shape of the two batched products per step
        (sentences x source length, and sentences leave a batch every few steps): ~370 kernels
        translating Multi30k test2016, ~0.15 s of a 3.9 s command on an Intel Xeon. MKL's
        float32 batched products build none, and the scores are more exact. The context comes
        back in the query's dtype.
        """
        if self.kind == "additive" or keys.dtype == torch.float32:
            return keys, values
        return keys.float(), values.float()

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor, pad_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Attend for ``Tq`` queries at once.

        Args:
            query: ``B x Tq x Hd`` decoder states.
            keys: ``B x S x K`` from :meth:`project_keys`.
            values: ``B x S x He`` encoder outputs.
            pad_mask: ``B x S``, True at padded source positions.

        Returns:
            context ``B x Tq x He`` and weights ``B x Tq x S`` (float32, rows sum to 1).
        """
        dtype = query.dtype
        if keys.dtype != dtype and self.kind != "additive":  # see float32_keys
            query = query.to(keys.dtype)
        scores = self._scores(query, keys).float()
        scores = scores.masked_fill(pad_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.to(values.dtype), values)
        return context.to(dtype), weights

    def _scores(self, query: Tensor, keys: Tensor) -> Tensor:
        if self.kind == "additive":
            assert self.query_proj is not None and self.energy is not None
            hidden = torch.tanh(keys.unsqueeze(1) + self.query_proj(query).unsqueeze(2))
            return self.energy(hidden).squeeze(-1)
        scores = torch.bmm(query, keys.transpose(1, 2))
        return scores * self.scale if self.scale != 1.0 else scores
