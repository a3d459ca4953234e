"""ssr.config: validation errors name the key; overrides are typed; defaults equal the YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssr.config import Config, dump_config, flatten, load_config, parse_override
from ssr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "configs" / "training_config.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_yaml_equals_embedded_defaults() -> None:
    assert load_config(YAML) == Config()


def test_unknown_key_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  windw_size: 128\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.windw_size: unknown key"):
        load_config(path)


def test_unknown_section_named() -> None:
    with pytest.raises(ConfigError, match=r"modle: unknown key"):
        load_config(None, ["modle.hidden_size=3"])


def test_wrong_type_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*integer"):
        load_config(path)


def test_hop_longer_than_window() -> None:
    with pytest.raises(ConfigError, match=r"hop_length \(300\) must not exceed window_size"):
        load_config(None, ["data.hop_length=300"])


def test_zero_channels_named() -> None:
    with pytest.raises(ConfigError, match=r"model\.num_channels: .*greater than or equal to 1"):
        load_config(None, ["model.num_channels=0"])


@pytest.mark.parametrize(
    ("seed", "problem"),
    [
        ("99999999999999999999999", "less than 9223372036854775808"),
        (str(2**63), "less than 9223372036854775808"),
        ("-1", "greater than or equal to 0"),
    ],
)
def test_seed_out_of_range_named(seed: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"training\.seed: .*{problem}"):
        load_config(None, [f"training.seed={seed}"])
    assert load_config(None, [f"training.seed={2**63 - 1}"]).training.seed == 2**63 - 1


def test_input_size_must_divide_half_window() -> None:
    with pytest.raises(ConfigError, match=r"model\.input_size \(48\) must divide"):
        load_config(None, ["model.input_size=48"])


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        YAML, ["training.batch_size=16", "tracking.run_name=null", "training.compile=true",
               "data.powerline_freq=50"]
    )  # fmt: skip
    assert cfg.training.batch_size == 16
    assert cfg.tracking.run_name is None
    assert cfg.training.compile is True
    assert cfg.data.powerline_freq == 50.0
    assert load_config(YAML).training.batch_size == 32


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("batch_size=3")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.hidden_size=64", "model.num_heads=4"])
    path = _write(tmp_path, dump_config(cfg))
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["model"]["hidden_size"] == 64


def test_small_preset_is_complete_and_only_resizes() -> None:
    small_path = REPO / "configs" / "small.yaml"
    raw_small, raw_seed = yaml.safe_load(small_path.read_text()), yaml.safe_load(YAML.read_text())
    # a complete file: the same sections and keys as the seed config, nothing left implicit
    assert flatten(raw_small).keys() == flatten(raw_seed).keys()
    small, seed = load_config(small_path).flat(), load_config(YAML).flat()
    changed = {k for k in seed if small[k] != seed[k]}
    assert changed == {
        "model.dropout",
        "model.hidden_size",
        "model.num_heads",
        "model.num_layers",
        "training.num_epochs",
        "training.num_workers",
    }


def test_augment_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="training.augment.shift"):
        load_config(None, ["training.augment.shift=1.5"])
    with pytest.raises(ConfigError, match="training.augment.bogus: unknown key"):
        load_config(None, ["training.augment.bogus=1"])
    assert load_config(None, ["training.augment.enabled=false"]).training.augment.enabled is False


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"", "empty config file"),
        (b"# only a comment\n", "empty config file"),
        (b"training:\n  batch_size: 4\ntraining:\n  num_epochs: 2\n", "duplicate key 'training'"),
        (b"training:\n  batch_size: 4\n  batch_size: 8\n", "duplicate key 'batch_size'"),
        (b"training:\n  run_id: caf\xe9\n", "not UTF-8 text"),
        (
            b"training:\n  batch_size: true\n",
            "training.batch_size: Input should be a valid integer",
        ),
        (b"training:\n  batch_size: '8'\n", "training.batch_size: Input should be a valid integer"),
        (b"training:\n  learning_rate: .nan\n", "training.learning_rate: Input should be a finite"),
        (b"training:\n  compile: 1\n", "training.compile: Input should be a valid boolean"),
    ],
)
def test_config_file_problems_are_refused(tmp_path: Path, text: bytes, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_strict_types_keep_exact_numbers() -> None:
    cfg = load_config(None, ["training.learning_rate=1e-3", "training.weight_decay=0"])
    assert cfg.training.learning_rate == 0.001 and isinstance(cfg.training.learning_rate, float)
    with pytest.raises(ConfigError, match="training.batch_size"):
        load_config(None, ["training.batch_size=true"])
