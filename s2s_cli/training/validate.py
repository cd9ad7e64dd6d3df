"""Validation: teacher-forced loss and perplexity, and BLEU/chrF of decoded translations."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from s2s_cli.config import ExperimentConfig
from s2s_cli.data.batching import make_batches
from s2s_cli.data.dataset import Dataset, ParallelSplit
from s2s_cli.data.loader import collate
from s2s_cli.decoding.scorer import Ensemble
from s2s_cli.decoding.search import search_all
from s2s_cli.device import autocast
from s2s_cli.io import read_lines
from s2s_cli.models.seq2seq import Seq2Seq
from s2s_cli.scoring import corpus_scores
from s2s_cli.training.step import LossModule

HIGHER_IS_BETTER = {"bleu": True, "chrf": True, "accuracy": True, "loss": False}


class Validator:
    """Scores a model on the dataset's ``valid`` split."""

    def __init__(
        self, dataset: Dataset, cfg: ExperimentConfig, tgt_spm: Any, device: torch.device
    ) -> None:
        self.split: ParallelSplit = dataset.split("valid")
        self.cfg = cfg
        self.tgt_spm = tgt_spm
        self.device = device
        limit = cfg.train.valid_max_sentences or len(self.split)
        self.count = min(limit, len(self.split))
        refs_path = dataset.raw_text_path("valid", "tgt")
        self.references = (
            list(read_lines(refs_path))[: self.count]
            if refs_path is not None
            else [tgt_spm.decode(self.split.tgt[i].tolist()) for i in range(self.count)]
        )

    @torch.no_grad()
    def loss(self, model: Seq2Seq) -> tuple[float, float]:
        """(label-smoothed loss, NLL) per target token, teacher-forced."""
        objective = LossModule(model, self.cfg.train.label_smoothing)
        sizes_src = self.split.src_sizes[: self.count] + 1
        sizes_tgt = self.split.tgt_sizes[: self.count] + 1
        batches = make_batches(
            sizes_src, sizes_tgt, self.cfg.train.max_tokens, None, 0, 0, shuffle=False
        )
        total = nll_total = tokens = 0.0
        for indices in batches:
            batch = collate(self.split, indices).to(self.device)
            with autocast(self.device, self.cfg.train.precision):
                loss, nll = objective(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
            total += float(loss)
            nll_total += float(nll)
            tokens += batch.target_tokens
        return total / max(tokens, 1), nll_total / max(tokens, 1)

    def translations(self, model: Seq2Seq) -> list[str]:
        decode = dataclasses.replace(
            self.cfg.decode,
            beam=self.cfg.train.valid_beam,
            nbest=1,
            sampling=False,
            precision=self.cfg.train.precision,
            batch_size=max(self.cfg.decode.batch_size, 128),
        )
        sources = [np.asarray(self.split.src[i]) for i in range(self.count)]
        hypotheses = search_all(Ensemble([model]), sources, decode, self.device)
        return [self.tgt_spm.decode(h[0].tokens) for h in hypotheses]

    def __call__(self, model: Seq2Seq) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            loss, nll = self.loss(model)
            hypotheses = self.translations(model)
        finally:
            model.train(was_training)
        scores = corpus_scores(hypotheses, [self.references], metrics=("bleu", "chrf"))
        exact = sum(h == r for h, r in zip(hypotheses, self.references, strict=True))
        return {
            "loss": loss,
            "nll": nll,
            "ppl": math.exp(min(nll, 100.0)),
            "bleu": scores["bleu"].score,
            "chrf": scores["chrf"].score,
            "accuracy": 100.0 * exact / max(self.count, 1),  # exact-match %
            "sentences": float(self.count),
        }
