"""``Translator``: raw text in, detokenized text (or scored hypotheses) out.

The checkpoint's own SentencePiece models encode and decode, so a checkpoint file is all a user
needs. Several checkpoints form an ensemble (their vocabularies must be identical).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from s2s_cli.checkpoint import checkpoint_to_build_from, model_from_checkpoint
from s2s_cli.config import DecodeConfig, ExperimentConfig
from s2s_cli.data.spm import SPECIAL_PIECES, load_processor
from s2s_cli.decoding.alignment import hard_alignment, replace_unknowns
from s2s_cli.decoding.forced import ReferenceScore, score_references
from s2s_cli.decoding.hypothesis import Hypothesis
from s2s_cli.decoding.int8 import quantize_int8
from s2s_cli.decoding.onnx_model import OnnxScorer, is_onnx_export, load_onnx_export
from s2s_cli.decoding.scorer import Ensemble, Scorer
from s2s_cli.decoding.search import search_all
from s2s_cli.decoding.shortlist import Shortlist
from s2s_cli.device import DTYPES, check_precision, resolve_device
from s2s_cli.errors import CheckpointError, ConfigError, DataError
from s2s_cli.models.recurrent import cast_for_inference


@dataclass
class TranslatedHypothesis:
    text: str
    pieces: list[str]
    tokens: list[int]
    score: float
    positional_scores: list[float]
    attention: Tensor | None = None  # (pieces + 1) x (source pieces + 1), EOS last on both
    alignment: list[tuple[int, int]] | None = None  # (source, target) piece indices


@dataclass
class Translation:
    source: str
    source_pieces: list[str]  # as translated (after truncation)
    truncated: bool
    hypotheses: list[TranslatedHypothesis]

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""


class Translator:
    """Translate raw sentences with one model or an ensemble."""

    def __init__(
        self,
        models: list[torch.nn.Module],
        config: ExperimentConfig,
        src_spm: Any,
        tgt_spm: Any,
        device: torch.device,
        spm_models: tuple[bytes, bytes] | None = None,
        origin: str = "the model",
        scorer: Scorer | None = None,
    ) -> None:
        """``scorer`` replaces the models' ensemble (an ONNX export: ``models`` is empty)."""
        self.models = models
        self.config = config
        self.src_spm = src_spm
        self.tgt_spm = tgt_spm
        self.device = device
        self.spm_models = spm_models  # the serialized SentencePiece models (shortlist checks)
        self.origin = origin
        self.scorer: Scorer = scorer if scorer is not None else Ensemble(models)
        self._cast_scorers: dict[str, Scorer] = {"fp32": self.scorer}
        self._shortlists: dict[str, Shortlist] = {}

    @classmethod
    def from_checkpoint(
        cls, paths: str | Path | Sequence[str | Path], device: str | torch.device = "auto"
    ) -> Translator:
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise ConfigError("no checkpoint given")
        device = resolve_device(device) if isinstance(device, str) else device
        if any(is_onnx_export(p) for p in paths):
            return cls._from_onnx(paths, device)
        models, spm_models, config = [], None, None
        for path in paths:
            with checkpoint_to_build_from(path) as checkpoint:  # digest checked meanwhile
                model, cfg = model_from_checkpoint(checkpoint, device), checkpoint.config
                spm = (checkpoint.spm["src"], checkpoint.spm["tgt"])
            if spm_models is not None and spm != spm_models:
                raise CheckpointError(
                    f"{path}: its vocabulary differs from {paths[0]}'s; "
                    "ensemble members must share "
                    "their SentencePiece models"
                )
            spm_models = spm_models or spm
            config = config or cfg
            models.append(model)
        assert spm_models is not None and config is not None
        src_spm, tgt_spm = _processors(spm_models, paths[0])
        return cls(models, config, src_spm, tgt_spm, device, spm_models, str(paths[0]))

    @classmethod
    def _from_onnx(cls, paths: list[str | Path], device: torch.device) -> Translator:
        if len(paths) > 1:
            raise ConfigError(f"{paths[0]}: an ONNX export translates alone, not in an ensemble")
        if device.type != "cpu":
            raise ConfigError(f"{paths[0]}: an ONNX export runs on the CPU (--device cpu)")
        export = load_onnx_export(paths[0])
        spm_models = (export.spm["src"], export.spm["tgt"])
        src_spm, tgt_spm = _processors(spm_models, paths[0])
        scorer = OnnxScorer(export)
        return cls([], export.config, src_spm, tgt_spm, device, spm_models, str(paths[0]), scorer)

    def decode_config(self, **overrides: Any) -> DecodeConfig:
        """The checkpoint's decode settings with ``overrides`` (e.g. ``beam=5``) applied."""
        known = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown decode option(s): {', '.join(unknown)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self.config.decode, **values)

    def translate(self, lines: Sequence[str], **overrides: Any) -> list[str]:
        """The best translation of each line (``beam=``, ``lenpen=``, ... override decoding)."""
        return [t.text for t in self.translate_hypotheses(lines, **overrides)]

    def translate_hypotheses(
        self,
        lines: Sequence[str],
        keep_attention: bool = False,
        generator: torch.Generator | None = None,
        **overrides: Any,
    ) -> list[Translation]:
        """N-best hypotheses with scores (and attention/alignments when ``keep_attention``)."""
        cfg = self.decode_config(**overrides)
        keep_attention = keep_attention or cfg.replace_unk
        pieces, truncated = self._encode(lines, cfg.max_source_len)
        todo = [i for i, p in enumerate(pieces) if p]
        hypotheses = search_all(
            self._scorer(cfg.precision),
            [pieces[i] for i in todo],
            cfg,
            self.device,
            keep_attention,
            generator,
            use_autocast=False,
            shortlist=self._shortlist(cfg.shortlist),
        )
        found = dict(zip(todo, hypotheses, strict=True))
        results = []
        for i, line in enumerate(lines):
            source_pieces = self.src_spm.id_to_piece(pieces[i]) if pieces[i] else []
            hyps = [self._finish(h, source_pieces, cfg, keep_attention) for h in found.get(i, [])]
            if not hyps:  # an empty line translates to an empty line
                hyps = [TranslatedHypothesis("", [], [], 0.0, [])]
            results.append(Translation(line, source_pieces, truncated[i], hyps))
        return results

    def score_references(
        self, lines: Sequence[str], references: Sequence[str], **overrides: Any
    ) -> list[ReferenceScore | None]:
        """Each reference's teacher-forced log-probability given its source line (natural log,
        EOS included); None for an empty source. Batching and precision come from the decode
        settings (``batch_size=``, ``precision=``, ... override them)."""
        if len(lines) != len(references):
            raise DataError(f"{len(lines)} source lines but {len(references)} references")
        cfg = self.decode_config(**overrides)
        pieces, _ = self._encode(lines, cfg.max_source_len)
        targets = self.tgt_spm.encode([line.strip() for line in references], out_type=int)
        return score_references(
            self._scorer(cfg.precision),
            pieces,
            targets,
            self.device,
            cfg.batch_size,
            cfg.max_tokens,
        )

    def _scorer(self, precision: str) -> Scorer:
        """The ensemble with weights in ``precision`` (cast or quantized once, then reused).

        Inference needs no float32 master weights, and pre-cast weights spare autocast from
        converting every RNN weight at every decoding step.
        """
        if precision not in self._cast_scorers:
            if not self.models:
                raise ConfigError(f"decode.precision {precision}: {self.origin} runs in fp32 only")
            check_precision(self.device, precision, "decode.precision")
            if precision == "int8":
                quantized = [quantize_int8(m) for m in self.models]
                scorer = Ensemble([m for m, _ in quantized], [out for _, out in quantized])
            else:
                dtype = DTYPES[precision]
                scorer = Ensemble(
                    [cast_for_inference(copy.deepcopy(m), dtype, self.device) for m in self.models]
                )
            self._cast_scorers[precision] = scorer
        return self._cast_scorers[precision]

    def _shortlist(self, path: str | None) -> Shortlist | None:
        """The shortlist file ``path`` (loaded and checked against the model once), or None."""
        if path is None:
            return None
        if path not in self._shortlists:
            if not self.models:
                raise ConfigError(f"decode.shortlist: not available for {self.origin} (ONNX)")
            shortlist = Shortlist.load(path)
            if self.spm_models is None:
                raise ConfigError("decode.shortlist: this translator has no SentencePiece models")
            shortlist.check_matches(*self.spm_models, path, self.origin)
            self._shortlists[path] = shortlist
        return self._shortlists[path]

    def _encode(self, lines: Sequence[str], limit: int) -> tuple[list[list[int]], list[bool]]:
        encoded = self.src_spm.encode([line.strip() for line in lines], out_type=int)
        truncated = [len(ids) > limit for ids in encoded]
        return [ids[:limit] for ids in encoded], truncated

    def _finish(
        self, hyp: Hypothesis, source_pieces: list[str], cfg: DecodeConfig, keep_attention: bool
    ) -> TranslatedHypothesis:
        pieces = self.tgt_spm.id_to_piece(hyp.tokens) if hyp.tokens else []
        alignment = None
        if hyp.attention is not None:
            alignment = hard_alignment(hyp.attention, len(source_pieces), len(pieces))
        if cfg.replace_unk and alignment is not None:
            pieces = replace_unknowns(pieces, source_pieces, alignment, SPECIAL_PIECES["unk"])
            text = self.tgt_spm.decode_pieces(pieces)
        else:
            text = self.tgt_spm.decode(hyp.tokens)
        return TranslatedHypothesis(
            text,
            pieces,
            hyp.tokens,
            hyp.score,
            hyp.positional_scores,
            hyp.attention if keep_attention else None,
            alignment if keep_attention else None,
        )


def _processors(spm_models: tuple[bytes, bytes], origin: str | Path) -> tuple[Any, Any]:
    """The source and target SentencePiece processors of serialized models from ``origin``."""
    return (
        load_processor(spm_models[0], f"{origin} (source SentencePiece model)"),
        load_processor(spm_models[1], f"{origin} (target SentencePiece model)"),
    )
