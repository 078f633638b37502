from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.errors import ConfigError
from trainer.config import RunConfig, config_digest, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_validate_and_run_on_the_digits_folder():
    config = load_config(None)
    assert config.data.path == Path("data/digits")
    assert config.model.name == "simple_cnn"


@pytest.mark.parametrize(
    "path",
    # search spaces (*_space.yaml) are imgcls tune's, checked in tests/unit/test_search_space.py
    sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.stem.endswith("_space")),
    ids=lambda p: p.name,
)
def test_shipped_configs_are_valid(path: Path):
    assert isinstance(load_config(path), RunConfig)


def test_yaml_is_overridden_by_set_values_with_yaml_typing(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    config = load_config(path, ["optim.lr=1e-2", "export.formats=[onnx]", "train.ema_decay=null"])
    assert config.optim.lr == 0.01
    assert config.train.epochs == 3
    assert config.export.formats == ("onnx",)
    assert config.train.ema_decay is None


def test_unknown_field_is_named(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: invalid config: optim.learning_rate: unknown field"):
        load_config(path)


def test_bad_value_names_the_field_and_the_value():
    with pytest.raises(
        ConfigError, match=r"optim.optimizer: Input should be 'adamw' or 'sgd' \(got 'adam'\)"
    ):
        load_config(None, ["optim.optimizer=adam"])


def test_malformed_override_shows_the_expected_form():
    with pytest.raises(ConfigError, match=r"not of the form section.field=value"):
        load_config(None, ["optim.lr"])


def test_missing_config_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_config(tmp_path / "none.yaml")


def test_fractions_that_leave_no_training_data_are_rejected():
    with pytest.raises(ConfigError, match=r"leaves under 10% for training"):
        load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.45"])


def test_digest_ignores_where_the_run_is_written_but_not_what_it_trains():
    base = load_config(None)
    assert config_digest(base) == config_digest(load_config(None, ["runs_dir=/elsewhere", "run_name=x"]))
    assert config_digest(base) != config_digest(load_config(None, ["optim.lr=0.5"]))
    assert config_digest(base) == config_digest(load_config(None, ["export.tensorrt_precisions=int8"]))


def test_a_run_config_written_before_the_rename_of_tensorrt_precision_still_loads(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("export:\n  tensorrt_precision: int8\n  formats: [torchscript, onnx]\n")
    assert load_config(path).export.tensorrt_precisions == ("int8",)
    path.write_text("export:\n  tensorrt_precision: int8\n  tensorrt_precisions: fp16\n")
    with pytest.raises(ConfigError, match="tensorrt_precisions only"):
        load_config(path)


def test_named_values_are_taken_as_they_are_not_parsed_as_yaml():
    config = load_config(None, ["run_name=7"], {"run_name": "2024-01-01", "data.path": Path("runs #2")})
    assert config.run_name == "2024-01-01"
    assert config.data.path == Path("runs #2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["preprocess.image_size=32", "preprocess.resize=16"],
            r"resize \(16\) must be at least image_size \(32\)",
        ),
        (
            ["preprocess.color_mode=L", "preprocess.mean=[0.1, 0.2, 0.3]"],
            r"mean needs 1 value\(s\) for color_mode L",
        ),
    ],
)
def test_inconsistent_preprocessing_is_a_config_error(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
