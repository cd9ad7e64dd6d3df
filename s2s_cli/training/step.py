"""One optimisation update: loss over micro-batches, (DDP) backward, clip, guarded step."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from s2s_cli.data.loader import Batch
from s2s_cli.data.spm import PAD
from s2s_cli.device import autocast
from s2s_cli.errors import TrainingDiverged
from s2s_cli.models.seq2seq import Seq2Seq
from s2s_cli.training.distributed import DistributedContext, all_reduce_sum, all_reduce_tensor
from s2s_cli.training.loss import ProjectedCrossEntropy, label_smoothed_nll

# Whether the fused projection + loss (training/loss.py) beats autograd's projection, log_softmax
# and gather, per device type: measured by benchmarks/model_step.py (CPU) and benchmarks/gpu.py.
# On an H100 the plain objective was about 1.2x faster than the fused one on bench-lstm in bf16
# (docs/benchmarks.md, "GPU"): the logits are cheap there and every extra kernel launch shows.
FUSED_LOSS = {"cpu": True, "cuda": False}

# Whether the unfused objective first gathers the non-padding positions (``features[mask]``), per
# device type. On the CPU that saves the output projection at padding; on CUDA boolean indexing
# waits for the device to learn how many rows come out (a host sync in every forward), so the
# projection runs at every position and padding is weighted out instead.
GATHER_POSITIONS = {"cpu": True, "cuda": False}


class LossModule(nn.Module):
    """Model plus objective in one module, so DDP wraps (and synchronises) the whole forward.

    The output projection and the loss run only on non-padding target positions, outside any
    loop over time. ``fused`` picks the fused projection + loss (None: by device, FUSED_LOSS).
    """

    def __init__(self, model: Seq2Seq, label_smoothing: float, fused: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.fused = fused
        self.criterion = ProjectedCrossEntropy(label_smoothing)

    def forward(
        self,
        src: Tensor,
        src_lengths: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        teacher_forcing: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        features, _ = self.model.features(src, src_lengths, tgt_in, teacher_forcing)
        mask = tgt_out != PAD
        fused = self.fused if self.fused is not None else FUSED_LOSS.get(src.device.type, True)
        if not fused:
            if GATHER_POSITIONS.get(src.device.type, True):
                logits = self.model.decoder.project(features[mask])
                return label_smoothed_nll(logits, tgt_out[mask], self.label_smoothing)
            logits = self.model.decoder.project(features).flatten(0, 1)
            return label_smoothed_nll(
                logits, tgt_out.flatten(), self.label_smoothing, weight=mask.flatten()
            )
        inputs, weight, bias = self.model.decoder.output_layer(features[mask])
        return self.criterion(inputs, weight, bias, tgt_out[mask])


@dataclass
class UpdateResult:
    loss: float  # summed over all ranks' target tokens
    nll: float
    tokens: int  # target tokens in the update, all ranks
    grad_norm: float
    skipped: bool  # gradients were not finite: nothing applied
    padded: int
    positions: int


@dataclass
class Updater:
    """Applies updates: holds the (possibly DDP-wrapped) loss module, optimizer and scaler."""

    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    precision: str
    clip_norm: float | None
    context: DistributedContext

    def update(self, batches: list[Batch], teacher_forcing: float) -> UpdateResult:
        tokens = all_reduce_sum(
            float(sum(b.target_tokens for b in batches)), self.context, self.device
        )
        # Normalise by the update's global token count; DDP averages over ranks, hence * world.
        scale = self.context.world_size / max(tokens, 1.0)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            with self._sync(last=i == len(batches) - 1), autocast(self.device, self.precision):
                loss, nll = self.loss_module(
                    batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, teacher_forcing
                )
            scaled = loss * scale
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            sums += torch.stack([loss.detach().double(), nll.double()])
        norm = self._clip()
        sums = all_reduce_tensor(sums, self.context)
        # One device-to-host copy per update (it decides whether the step is applied).
        grad_norm, loss_sum, nll_sum = torch.cat([norm.reshape(1).double(), sums]).tolist()
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            try:
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                else:
                    self.optimizer.step()
            except RuntimeError as err:  # e.g. Adam's lr / bias correction beyond float range
                reason = str(err).strip().splitlines()[0][:120]
                raise TrainingDiverged(
                    f"the optimizer step failed ({reason}); train.lr is probably far too large"
                ) from None
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        padded = sum(b.padding()[0] for b in batches)
        positions = sum(b.padding()[1] for b in batches)
        return UpdateResult(loss_sum, nll_sum, int(tokens), grad_norm, skipped, padded, positions)

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of an update."""
        if not last and hasattr(self.loss_module, "no_sync"):
            return self.loss_module.no_sync()
        return contextlib.nullcontext()

    def _clip(self) -> Tensor:
        """Clip (when configured) and return the gradient norm before clipping, on the device."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.clip_norm if self.clip_norm is not None else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
