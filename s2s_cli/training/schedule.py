"""Optimizers and learning-rate schedules (constant, inverse-sqrt, cosine, reduce-on-plateau)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from s2s_cli.config import TrainConfig

# Adam/AdamW as PyTorch's fused kernel, per device type. On CUDA the default is the multi-tensor
# "foreach" form (several launches per parameter chunk, which shows in updates bound by launches;
# benchmarks/gpu.py measures both); on the CPU it is a loop of ~10 passes over every parameter,
# where the fused kernel makes one (bench-lstm's 11.6M parameters: 32 ms -> 8.5 ms per update on a
# 2-core Xeon). The same update up to rounding (tests/unit/test_objective.py).
FUSED_ADAM = {"cpu": True, "cuda": True}


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    options: dict[str, Any] = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    devices = {p.device.type for p in params}
    if len(devices) == 1 and FUSED_ADAM.get(devices.pop(), False):
        try:
            return cls(params, fused=True, **options)
        except RuntimeError:  # a PyTorch without the fused kernel for this device (CPU: < 2.4)
            pass
    return cls(params, **options)


class LearningRate:
    """The learning rate as a function of the update number, plus plateau state.

    Warm-up is linear from 0 over ``warmup_updates``; then ``constant`` keeps the peak,
    ``inverse_sqrt`` decays as ``peak * sqrt(warmup / update)``, ``cosine`` anneals to ``min_lr``
    at ``total_updates``, and ``plateau`` multiplies by ``plateau_factor`` whenever the validation
    metric has not improved for more than ``plateau_patience`` validations.
    """

    def __init__(self, cfg: TrainConfig, total_updates: int | None) -> None:
        self.kind = cfg.scheduler
        self.peak = cfg.lr
        self.warmup = cfg.warmup_updates
        self.min_lr = cfg.min_lr
        self.total = total_updates
        self.factor = cfg.plateau_factor
        self.patience = cfg.plateau_patience
        self.scale = 1.0
        self.best: float | None = None
        self.bad = 0

    def at(self, update: int) -> float:
        """Learning rate for update number ``update`` (1-based)."""
        if self.warmup and update <= self.warmup:
            return self.peak * update / self.warmup
        if self.kind == "inverse_sqrt":
            return self.peak * math.sqrt(max(self.warmup, 1) / update)
        if self.kind == "cosine":
            if not self.total or self.total <= self.warmup:
                return self.peak
            progress = min(1.0, (update - self.warmup) / (self.total - self.warmup))
            return self.min_lr + 0.5 * (self.peak - self.min_lr) * (
                1 + math.cos(math.pi * progress)
            )
        if self.kind == "plateau":
            return max(self.min_lr, self.peak * self.scale)
        return self.peak

    def observe(self, value: float, higher_is_better: bool) -> None:
        """Feed a validation result (only ``plateau`` reacts)."""
        if self.kind != "plateau":
            return
        improved = self.best is None or (
            value > self.best if higher_is_better else value < self.best
        )
        if improved:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.scale *= self.factor
            self.bad = 0

    def apply(self, optimizer: torch.optim.Optimizer, update: int) -> float:
        lr = self.at(update)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


def teacher_forcing_ratio(cfg: TrainConfig, updates: int) -> float:
    """Probability of feeding the gold previous token after ``updates`` updates: constant
    ``teacher_forcing``, or linear from it to ``teacher_forcing_final`` over
    ``teacher_forcing_updates`` updates (then constant)."""
    if cfg.teacher_forcing_final is None or cfg.teacher_forcing_updates is None:
        return cfg.teacher_forcing
    progress = min(1.0, updates / cfg.teacher_forcing_updates)
    return cfg.teacher_forcing + progress * (cfg.teacher_forcing_final - cfg.teacher_forcing)
