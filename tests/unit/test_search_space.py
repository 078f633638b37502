"""The search space file of ``imgcls tune``: what it accepts, what it refuses and why, and what it samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.errors import ConfigError
from trainer.search_space import Param, load_search_space


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_search_space(path)


def test_a_space_reads_ranges_choices_and_its_settings(tmp_path):
    space = _space(
        tmp_path,
        """
metric: loss
pruner: hyperband
params:
  optim.lr: {float: [1.0e-4, 1.0e-1], log: true}
  train.batch_size: {choice: [32, 64]}
  train.epochs: {int: [2, 8], step: 2}
""",
    )
    assert space.metric == "loss" and space.pruner == "hyperband"
    assert space.params["optim.lr"].float_range == (1e-4, 0.1) and space.params["optim.lr"].log
    assert space.params["train.batch_size"].choice == [32, 64]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {optim.lr: {float: [0.1, 0.01]}}", "low \\(0.1\\) is above its high"),
        ("params: {optim.lr: {float: [0, 0.1], log: true}}", "log range must start above 0"),
        ("params: {optim.lr: {float: [0.1, 1], int: [1, 2]}}", "exactly one of"),
        ("params: {augment.preset: {choice: []}}", "at least one value"),
        ("params: {augment.preset: {choice: [a], log: true}}", "not to choice"),
        ("params: {}", "params"),
        ("pruner: sometimes\nparams: {optim.lr: {float: [0.1, 1]}}", "pruner"),
        ("colour: blue\nparams: {optim.lr: {float: [0.1, 1]}}", "colour: unknown field"),
        ("- a list", "expected a mapping"),
    ],
)
def test_a_bad_space_is_refused_with_the_field_and_the_reason(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _space(tmp_path, text)


def test_a_missing_space_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the search space"):
        load_search_space(tmp_path / "nope.yaml")


def test_every_value_the_space_can_produce_is_checked_against_the_config(tmp_path):
    with pytest.raises(
        ConfigError, match=r"optim.lerning_rate=0.1 is not a valid config value.*unknown field"
    ):
        _space(tmp_path, "params: {optim.lerning_rate: {float: [0.1, 1]}}").check_against(None, [], {})
    with pytest.raises(ConfigError, match=r"augment.preset='wild' is not a valid config value"):
        _space(tmp_path, "params: {augment.preset: {choice: [light, wild]}}").check_against(None, [], {})
    with pytest.raises(ConfigError, match=r"optim.lr=0.0 is not a valid config value"):
        _space(tmp_path, "params: {optim.lr: {float: [0.0, 1]}}").check_against(None, [], {})
    _space(tmp_path, "params: {optim.lr: {float: [0.001, 1]}}").check_against(None, [], {})


def test_the_metric_and_its_direction_follow_the_space_or_the_config(tmp_path, tiny_config):
    config = tiny_config(tmp_path, "train.early_stopping_metric=f1_macro")
    space = _space(tmp_path, "params: {optim.lr: {float: [0.001, 1]}}")
    assert space.objective_metric(config) == "f1_macro" and space.direction(config) == "maximize"
    space = _space(tmp_path, "metric: loss\nparams: {optim.lr: {float: [0.001, 1]}}")
    assert space.objective_metric(config) == "loss" and space.direction(config) == "minimize"


def test_sampled_values_stay_in_their_ranges_on_their_grid_and_in_their_choices():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = {
        "lr": Param.model_validate({"float": [1e-4, 1e-1], "log": True}),
        "drop": Param.model_validate({"float": [0.0, 0.5], "step": 0.1}),
        "epochs": Param.model_validate({"int": [2, 8], "step": 2}),
        "preset": Param.model_validate({"choice": ["light", "strong"]}),
    }
    for _ in range(30):
        trial = study.ask()
        values = {name: param.suggest(trial, name) for name, param in params.items()}
        assert 1e-4 <= values["lr"] <= 1e-1
        assert round(values["drop"] * 10) == pytest.approx(values["drop"] * 10) and 0 <= values["drop"] <= 0.5
        assert values["epochs"] in (2, 4, 6, 8)
        assert values["preset"] in ("light", "strong")
        study.tell(trial, 0.0)


def test_a_storage_password_never_reaches_a_message():
    from trainer.tune import _masked, _storage_url

    assert _masked("postgresql://tuner:s3cret@db:5432/studies") == "postgresql://tuner:***@db:5432/studies"
    url, options = _storage_url("postgresql://tuner:s3cret@db:5432/studies")
    assert url == "postgresql+psycopg://tuner:s3cret@db:5432/studies" and options["pool_pre_ping"]
    assert _storage_url("sqlite:////tmp/x.db")[1] == {"connect_args": {"timeout": 60}}


def test_the_shipped_digits_space_fits_the_digits_config():
    root = Path(__file__).parents[2]
    space = load_search_space(root / "configs" / "digits_space.yaml")
    space.check_against(root / "configs" / "digits.yaml", [], {})
    assert {"optim.lr", "optim.weight_decay", "train.batch_size", "augment.preset"} <= set(space.params)
