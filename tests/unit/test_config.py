from pathlib import Path

import pytest
import yaml

from s2s_cli.config import (
    PRESET_DIR,
    PRESETS,
    ExperimentConfig,
    config_reference,
    dump_yaml,
    from_dict,
    load_config,
    load_preset,
    parse_override,
    to_dict,
)
from s2s_cli.errors import ConfigError


def test_defaults_build_and_validate():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.cell == "lstm" and cfg.train.lr == pytest.approx(1e-3)


def test_unknown_key_names_dotted_key_and_suggests(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hiden_size: 8\n")
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml: unknown key 'model\.hiden_size' \(did you mean 'model\.hidden_size'\?\)",
    ):
        load_config(path)


def test_unknown_section_is_rejected_with_hint():
    with pytest.raises(ConfigError, match="unknown section 'trian' \\(did you mean 'train'\\?\\)"):
        load_config(overrides=["trian.lr=0.1"])


def test_invalid_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match="model.cell: 'lsmt' is not one of: lstm, gru, rnn"):
        load_config(overrides=["model.cell=lsmt"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.max_tokens: expected an integer"):
        load_config(overrides=["train.max_tokens=lots"])
    with pytest.raises(ConfigError, match="model.bidirectional: expected true or false"):
        load_config(overrides=["model.bidirectional=1"])
    with pytest.raises(ConfigError, match="train.max_tokens: expected an integer"):
        load_config(overrides=["train.max_tokens=1.5"])


def test_yaml_scientific_notation_string_becomes_float(tmp_path: Path):
    # PyYAML reads 1e-3 (no dot) as a string; float fields must accept it.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-3"
    assert load_config(path).train.lr == pytest.approx(0.001)


def test_overrides_beat_file_and_flags_beat_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  seed: 5\n")
    cfg = load_config(path, ["train.lr=0.2"], flags={"train": {"seed": 9}})
    assert cfg.train.lr == pytest.approx(0.2) and cfg.train.seed == 9


def test_null_only_where_allowed():
    assert load_config(overrides=["train.patience=null"]).train.patience is None
    with pytest.raises(ConfigError, match="train.lr: null is not allowed"):
        load_config(overrides=["train.lr=null"])


def test_range_rules_name_the_key():
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(overrides=["model.dropout=1.5"])
    with pytest.raises(ConfigError, match="decode.nbest"):
        load_config(overrides=["decode.beam=2", "decode.nbest=3"])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="model.attention: 'dot' needs encoder output size"):
        load_config(overrides=["model.attention=dot", "model.encoder_hidden_size=256"])
    with pytest.raises(ConfigError, match="model.bridge: 'last'"):
        load_config(overrides=["model.bridge=last", "model.encoder_layers=2"])
    with pytest.raises(ConfigError, match="share_embeddings needs a joint vocabulary"):
        load_config(overrides=["model.share_embeddings=true", "data.joint=false"])


def test_preset_supplies_defaults_and_keys_override_it():
    cfg = load_config(overrides=["model.preset=bahdanau", "model.cell=lstm"])
    preset = load_preset("bahdanau")
    assert cfg.model.attention == preset["attention"] == "additive"
    assert cfg.model.attention_placement == "bahdanau"
    assert cfg.model.cell == "lstm"  # explicit key wins over the preset's gru
    with pytest.raises(ConfigError, match="model.preset: 'nope' is not one of"):
        load_config(overrides=["model.preset=nope"])


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_valid_config(name: str):
    cfg = load_config(overrides=[f"model.preset={name}"])
    assert cfg.model.preset == name
    from s2s_cli.models.build import build_model

    expected_fused = name in ("fast", "cho", "sutskever")
    assert build_model(cfg.model, 30, 30).decoder.fused is expected_fused


def test_round_trip_through_dict_and_yaml():
    cfg = load_config(overrides=["model.preset=luong", "train.lr=0.01", "decode.topk=5"])
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="must be SECTION.KEY"):
        parse_override("lr=0.1")


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


def test_reference_lists_every_key_with_a_comment():
    rows = config_reference()
    keys = [r[0] for r in rows]
    assert "model.hidden_size" in keys and "train.label_smoothing" in keys
    assert len(keys) == len(set(keys))
    assert [r[0] for r in rows if not r[3]] == []


CONFIG_FILES = sorted(Path(__file__).resolve().parents[2].glob("recipes/**/*.yaml"))
PRESET_FILES = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def test_preset_names_are_exactly_the_preset_files():
    assert sorted(PRESETS) == PRESET_FILES and len(CONFIG_FILES) >= 5


def test_every_resumable_key_is_a_config_key():
    from s2s_cli.training.trainer import RESUMABLE, _flatten

    keys = set(_flatten(to_dict(ExperimentConfig())))
    assert RESUMABLE and keys >= RESUMABLE, sorted(RESUMABLE - keys)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_config_loads_and_builds_its_model(path, tiny_dataset):
    """What `s2s train CONFIG --dry-run` checks, for every committed recipe config."""
    from s2s_cli import Dataset
    from s2s_cli.models.build import build_model

    cfg = load_config(path)
    src_vocab, tgt_vocab = Dataset(tiny_dataset).vocab_sizes
    model = build_model(cfg.model, src_vocab, tgt_vocab)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_configs_from_earlier_versions_with_data_languages_still_load():
    raw = to_dict(load_config())
    raw["data"].update(src_lang="de", tgt_lang="en")  # written by s2s before they were dropped
    assert from_dict(raw) == load_config()
