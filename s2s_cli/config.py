"""Typed configuration: four dataclass sections loaded from YAML plus ``KEY=VALUE`` overrides.

Every default lives here and only here. Values are validated once, at the edge, and every error
names the dotted key (``model.hidden_size``) and, for unknown keys, suggests the closest real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from s2s_cli.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
# The one definition of each family of names; modules and tests take them from here.
PresetName = Literal["sutskever", "cho", "bahdanau", "luong", "fast"]  # one per presets/*.yaml
CellName = Literal["lstm", "gru", "rnn"]
AttentionName = Literal["none", "dot", "scaled_dot", "general", "additive"]
PRESETS: tuple[str, ...] = typing.get_args(PresetName)
CELLS: tuple[str, ...] = typing.get_args(CellName)
ATTENTIONS: tuple[str, ...] = typing.get_args(AttentionName)


@dataclass
class DataConfig:
    """How raw text becomes a binarized dataset (``s2s preprocess``), and where it is."""

    path: str | None = None  # dataset directory s2s train reads (--data and stdin win)
    vocab_size: int = 8000  # SentencePiece vocabulary size (per model)
    spm_type: Literal["bpe", "unigram", "char", "word"] = "bpe"  # SentencePiece model type
    joint: bool = True  # one SentencePiece model shared by source and target
    character_coverage: float = 1.0  # share of characters SentencePiece must cover
    spm_sample_size: int = 2_000_000  # at most this many sentences train SentencePiece
    max_length: int = 250  # drop training pairs with a side longer than this (pieces)
    max_length_ratio: float | None = 9.0  # drop training pairs whose length ratio exceeds this
    workers: int = 1  # encoding threads
    chunk_lines: int = 20_000  # at most this many lines encoded per chunk (bounds memory)
    chunk_chars: int = 2_000_000  # a chunk ends early past this many characters (long lines)
    shard_size: int | None = None  # training pairs per shard (a sharded dataset); null: one
    seed: int = 1  # seed for SentencePiece's sentence sampling

    def __post_init__(self) -> None:
        _positive(
            self,
            "data",
            "vocab_size",
            "max_length",
            "workers",
            "chunk_lines",
            "chunk_chars",
            "spm_sample_size",
        )
        if self.shard_size is not None and self.shard_size <= 0:
            raise ConfigError(f"data.shard_size: {self.shard_size} must be > 0 or null")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(
                f"data.character_coverage: {self.character_coverage} is not in (0, 1]"
            )
        if self.max_length_ratio is not None and self.max_length_ratio < 1.0:
            raise ConfigError(
                f"data.max_length_ratio: {self.max_length_ratio} must be >= 1 or null"
            )


@dataclass
class ModelConfig:
    """The encoder-decoder architecture; ``preset`` is a starting point other keys override."""

    preset: PresetName | None = None  # named architecture (presets/*.yaml); other keys override it
    cell: CellName = "lstm"  # recurrent cell of encoder and decoder
    embed_dim: int = 256  # embedding size (source and target)
    hidden_size: int = 512  # decoder hidden size
    encoder_hidden_size: int | None = None  # encoder output (both directions); null: hidden_size
    encoder_layers: int = 1  # stacked encoder RNN layers
    decoder_layers: int = 1  # stacked decoder RNN layers
    bidirectional: bool = True  # bidirectional encoder (each direction gets half the size)
    bidirectional_layers: int | None = None  # bottom encoder layers read both ways (null: all)
    attention: AttentionName = "general"  # how decoder states score encoder outputs
    attention_placement: Literal["luong", "bahdanau"] = "luong"  # after (luong) or before the RNN
    input_feeding: bool = False  # feed the previous attentional vector into the next step
    peeky: bool = False  # feed the encoder summary to every decoder step and the output layer
    bridge: Literal["zero", "last", "last_hidden", "bridge"] = "last"  # decoder initial state
    reverse_source: bool = False  # read the source backwards (Sutskever et al. 2014)
    tie_embeddings: bool = False  # share target input embeddings with the output layer
    share_embeddings: bool = False  # share source and target embeddings (joint vocabulary)
    dropout: float = 0.2  # dropout on embeddings, between layers and before the output layer
    word_dropout: float = 0.0  # training: share of input words (source, target) replaced by <unk>
    embed_init_std: float | None = None  # embedding init N(0, std); null: 1/sqrt(embed_dim)
    weight_init: Literal["pytorch", "lecun_normal", "uniform"] = "pytorch"  # see docs/models.md
    init_range: float = 0.1  # weight_init uniform: every parameter U(-init_range, init_range)

    def __post_init__(self) -> None:
        _positive(self, "model", "embed_dim", "hidden_size", "encoder_layers", "decoder_layers")
        if self.bidirectional_layers is not None and not (
            0 <= self.bidirectional_layers <= self.encoder_layers
        ):
            raise ConfigError(
                f"model.bidirectional_layers: {self.bidirectional_layers} is not in "
                f"[0, model.encoder_layers={self.encoder_layers}] (null: all layers)"
            )
        if self.encoder_hidden_size is not None and self.encoder_hidden_size <= 0:
            raise ConfigError(f"model.encoder_hidden_size: {self.encoder_hidden_size} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: {self.dropout} is not in [0, 1)")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ConfigError(f"model.word_dropout: {self.word_dropout} is not in [0, 1)")
        if self.embed_init_std is not None and self.embed_init_std <= 0:
            raise ConfigError(f"model.embed_init_std: {self.embed_init_std} must be > 0 or null")
        if self.init_range <= 0:
            raise ConfigError(f"model.init_range: {self.init_range} must be > 0")
        enc = self.encoder_output_size
        if self.bidirectional and enc % 2:
            raise ConfigError(
                f"model.encoder_hidden_size: a bidirectional encoder needs an even size, got {enc}"
            )
        if self.attention in ("dot", "scaled_dot") and enc != self.hidden_size:
            raise ConfigError(
                f"model.attention: '{self.attention}' needs encoder output size ({enc}) == "
                f"model.hidden_size ({self.hidden_size}); use 'general' or 'additive'"
            )
        if self.bridge in ("last", "last_hidden") and (
            enc != self.hidden_size or self.encoder_layers != self.decoder_layers
        ):
            raise ConfigError(
                f"model.bridge: '{self.bridge}' needs equal encoder and decoder sizes and layer "
                f"counts (got {enc}x{self.encoder_layers} vs {self.hidden_size}x"
                f"{self.decoder_layers}); "
                "use 'bridge' or 'zero'"
            )

    @property
    def encoder_output_size(self) -> int:
        return self.encoder_hidden_size or self.hidden_size


@dataclass
class TrainConfig:
    """Optimisation, batching, precision, validation and checkpointing (``s2s train``)."""

    max_updates: int | None = None  # stop after this many updates (null: no limit)
    max_epochs: int | None = 20  # stop after this many epochs (null: no limit)
    max_minutes: float | None = None  # stop after this much training time (null: no limit)
    max_tokens: int = 4096  # batch budget: sentences x longest side (padded tokens)
    max_sentences: int | None = None  # optional cap on sentences per batch
    lr: float = 1e-3  # peak learning rate
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # optimizer
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW betas
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) weight decay
    momentum: float = 0.0  # SGD momentum
    scheduler: Literal["constant", "inverse_sqrt", "plateau", "cosine"] = "constant"  # lr schedule
    warmup_updates: int = 0  # linear warm-up from 0 (all schedulers)
    min_lr: float = 0.0  # floor for cosine and plateau
    plateau_factor: float = 0.5  # lr multiplier when the validation metric stalls
    plateau_patience: int = 0  # validations without improvement before the lr drops
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype
    seed: int = 1  # seeds initialisation, data order and dropout
    update_freq: int = 1  # accumulate gradients over this many batches per update
    clip_norm: float | None = 5.0  # clip the global gradient norm (null: off)
    max_nonfinite_updates: int | None = 25  # non-finite updates in a row that stop training
    label_smoothing: float = 0.1  # share of target probability spread over the vocabulary
    teacher_forcing: float = 1.0  # probability of feeding the gold previous token
    teacher_forcing_final: float | None = None  # ratio reached linearly at teacher_forcing_updates
    teacher_forcing_updates: int | None = None  # length of the teacher-forcing schedule
    validate_every: int | None = None  # validate every N updates (null: at each epoch's end)
    validate_metric: Literal["bleu", "chrf", "accuracy", "loss"] = "bleu"  # picks the best
    valid_beam: int = 1  # beam size for validation translations (1 = greedy)
    valid_max_sentences: int | None = None  # translate at most this many validation sentences
    patience: int | None = None  # stop after N validations without improvement (null: never)
    save_dir: str | None = None  # where s2s train writes (--save-dir wins; default checkpoints)
    save_every: int | None = None  # periodic checkpoint every N updates (null: off)
    best_with_state: bool = False  # checkpoint_best.pt keeps optimizer/RNG state (to resume)
    keep_last: int = 5  # periodic checkpoints kept (s2s average --last takes 5)
    log_every: int = 50  # updates between log lines
    tensorboard: bool = False  # write TensorBoard scalars (needs the tensorboard package)
    threads: int | None = None  # torch intra-op threads (null: torch's default)
    dist_timeout_minutes: float = 30.0  # multi-process: silence from a peer that ends the run

    def __post_init__(self) -> None:
        _positive(
            self, "train", "max_tokens", "update_freq", "log_every", "keep_last", "valid_beam"
        )
        for name in (
            "max_updates",
            "max_epochs",
            "max_sentences",
            "validate_every",
            "save_every",
            "patience",
            "threads",
            "teacher_forcing_updates",
            "valid_max_sentences",
            "max_nonfinite_updates",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{name}: {value} must be > 0 or null")
        if self.max_updates is None and self.max_epochs is None and self.max_minutes is None:
            raise ConfigError(
                "train.max_updates, train.max_epochs and train.max_minutes are all null: set one"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes: {self.max_minutes} must be > 0 or null")
        if self.dist_timeout_minutes <= 0:
            value = self.dist_timeout_minutes
            raise ConfigError(f"train.dist_timeout_minutes: {value} must be > 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: {self.lr} must be > 0")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas: expected two numbers, got {self.betas}")
        for name in ("label_smoothing", "teacher_forcing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name}: {getattr(self, name)} is not in [0, 1]")
        if self.label_smoothing >= 1.0:
            raise ConfigError("train.label_smoothing: must be < 1")
        if (self.teacher_forcing_final is None) != (self.teacher_forcing_updates is None):
            raise ConfigError(
                "train.teacher_forcing_final and train.teacher_forcing_updates go together"
            )
        if self.teacher_forcing_final is not None and not 0 <= self.teacher_forcing_final <= 1:
            raise ConfigError(
                f"train.teacher_forcing_final: {self.teacher_forcing_final} not in [0, 1]"
            )


@dataclass
class DecodeConfig:
    """Search settings shared by ``s2s translate`` and validation."""

    beam: int = 5  # beam size (1 = greedy)
    nbest: int = 1  # hypotheses returned per sentence
    lenpen: float = 1.0  # length penalty exponent (0: raw log-probability)
    lenpen_style: Literal["average", "gnmt"] = "average"  # len^a, or GNMT ((5+len)/6)^a
    coverage_penalty: float = 0.0  # GNMT coverage penalty weight
    max_len_a: float = 2.0  # output at most a * source length + b pieces
    max_len_b: int = 20  # see max_len_a
    min_len: int = 1  # no EOS before this many pieces
    no_repeat_ngram: int = 0  # forbid repeating n-grams of this size (0: off)
    batch_size: int = 64  # sentences per batch
    max_tokens: int | None = None  # or a budget of source pieces per batch
    buffer_size: int = 1000  # input lines read, sorted and translated together
    max_source_len: int = 250  # longer inputs are truncated (with a warning)
    sampling: bool = False  # sample instead of searching
    temperature: float = 1.0  # sampling temperature
    topk: int | None = None  # sample from the k most likely pieces (null: all)
    replace_unk: bool = False  # copy the most-attended source piece for <unk>
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"  # autocast dtype; int8: CPU int8
    shortlist: str | None = None  # lexical shortlist file (s2s shortlist): score only its pieces
    cuda_graphs: bool = True  # CUDA: replay each beam-search step as one recorded CUDA graph
    seed: int = 1  # sampling seed

    def __post_init__(self) -> None:
        _positive(self, "decode", "beam", "nbest", "batch_size", "buffer_size", "max_source_len")
        if self.nbest > self.beam and not self.sampling:
            raise ConfigError(f"decode.nbest: {self.nbest} exceeds decode.beam ({self.beam})")
        if self.temperature <= 0:
            raise ConfigError(f"decode.temperature: {self.temperature} must be > 0")
        for name in ("max_tokens", "topk"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"decode.{name}: {value} must be > 0 or null")
        if self.min_len < 0 or self.no_repeat_ngram < 0 or self.max_len_b < 0:
            raise ConfigError(
                "decode.min_len, decode.no_repeat_ngram, decode.max_len_b must be >= 0"
            )


@dataclass
class ExperimentConfig:
    """The whole configuration: one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if self.model.share_embeddings and not self.data.joint:
            raise ConfigError("model.share_embeddings needs a joint vocabulary (data.joint: true)")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
}


def _positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name}: {value} must be > 0")


# ---------------------------------------------------------------------------------------------
# loading


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Build a validated config: defaults < ``base`` < YAML file < ``KEY=VALUE`` < ``flags``.

    ``flags`` are values from dedicated command-line options (``--vocab-size``), nested by section.
    A ``model.preset`` (from any layer) supplies model defaults that explicit model keys override.
    """
    raw: dict[str, Any] = {}
    if base:
        _merge(raw, base)
    if path is not None:
        _merge(raw, read_yaml(Path(path)))
    for item in overrides or []:
        _merge(raw, parse_override(item))
    if flags:
        _merge(raw, flags)
    origin = str(path) if path is not None else None
    try:
        return from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}" if origin else str(err)) from None


# Keys earlier versions wrote and nothing ever read (the languages are `s2s preprocess` flags and
# live in the dataset manifest): accepted on load, dropped.
LEGACY_DATA_KEYS = ("src_lang", "tgt_lang")


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict (from YAML or a checkpoint) into an ExperimentConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    _check_names(raw, list(SECTIONS), "", what="section")
    if isinstance(raw.get("data"), dict):
        for key in LEGACY_DATA_KEYS:  # written by earlier versions into datasets and checkpoints
            raw["data"].pop(key, None)
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset") is not None:
        preset = _build_value(model["preset"], PresetName | None, "model.preset")
        raw["model"] = {**load_preset(preset), **model}
    sections = {}
    for name, cls in SECTIONS.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {value!r}")
        sections[name] = _build(cls, value, f"{name}.")
    return ExperimentConfig(**sections)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (YAML- and ``weights_only``-safe)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: ExperimentConfig) -> str:
    # A path reads as written: non-ASCII as is (every writer writes UTF-8), and on one line
    # however long (PyYAML folds long scalars at spaces from 80 columns).
    return yaml.safe_dump(
        to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 30
    )


def write_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config atomically, so a run can be reproduced from it."""
    from s2s_cli.io import atomic_write_text

    atomic_write_text(path, dump_yaml(cfg))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The model keys of a named preset (``s2s_cli/presets/NAME.yaml``)."""
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    return dict(data.get("model", {}))


def parse_override(item: str) -> dict[str, Any]:
    """``train.lr=3e-4`` -> ``{"train": {"lr": "3e-4" parsed by YAML}}``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. train.lr=0.001)")
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must be SECTION.KEY (e.g. model.cell)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return {parts[0]: {parts[1]: value}}


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = dict(value) if isinstance(value, dict) else value


def _check_names(raw: dict[str, Any], names: list[str], prefix: str, what: str = "key") -> None:
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown {what} '{prefix}{key}'{hint}")


def build_section(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Validate one section's keys and values (unknown keys, types, choices, ranges)."""
    return _build(cls, raw, prefix)


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    _check_names(raw, names, prefix)
    hints = typing.get_type_hints(cls)
    values = {k: _build_value(v, hints[k], prefix + k) for k, v in raw.items()}
    return cls(**values)


def _build_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if value is None:
            raise ConfigError(f"{key}: null is not allowed")
        return _build_value(value, inner[0] if len(inner) == 1 else Union[tuple(inner)], key)  # noqa: UP007
    if value is None:
        raise ConfigError(f"{key}: null is not allowed")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(f"{key}: '{value}' is not one of: {allowed}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_build_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        number = _number(value, key, "an integer")
        if number != int(number):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if hint is float:
        return float(_number(value, key, "a number"))
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


def _number(value: Any, key: str, what: str) -> float:
    # PyYAML reads 1e-3 as a string (YAML 1.1), so numeric strings are accepted.
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected {what}, got {value!r}")


def config_reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, comment) for every config key, read from this module's source."""
    import inspect

    rows = []
    for section, cls in SECTIONS.items():
        source = inspect.getsource(cls)
        comments = {}
        for line in source.splitlines():
            name, _, rest = line.strip().partition(":")
            if "#" in rest and name.isidentifier():
                comments[name] = rest.split("#", 1)[1].strip()
        hints = typing.get_type_hints(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            type_text = _type_text(hints[f.name])
            rows.append(
                (
                    f"{section}.{f.name}",
                    type_text,
                    repr(getattr(default, f.name)),
                    comments.get(f.name, ""),
                )
            )
    return rows


def _type_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    return getattr(hint, "__name__", str(hint))
