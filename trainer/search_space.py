"""The search space of ``imgcls tune``: which config fields a trial varies, how, and how trials are judged.

A YAML file names config fields by their dotted path, as ``--set`` does, each with a distribution::

    metric: accuracy             # optional: the validation metric to optimise (train.early_stopping_metric)
    pruner: median               # median (default), hyperband or none: stop poor trials between epochs
    params:
      optim.lr: {float: [1.0e-4, 1.0e-1], log: true}
      optim.weight_decay: {float: [1.0e-5, 1.0e-1], log: true}
      train.batch_size: {choice: [32, 64, 128]}
      augment.preset: {choice: [light, standard, strong]}
      model.name: {choice: [simple_cnn, resnet18]}
      model.drop_rate: {float: [0.0, 0.5], step: 0.1}
      train.epochs: {int: [5, 20]}

Every field and every value the space can produce is checked against the config before a trial runs,
so a typo fails at once, not in trial 17.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgcls.errors import ConfigError, describe_validation_errors
from trainer.config import RunConfig, load_config

__all__ = ["Param", "SearchSpace", "load_search_space"]

# what the tuned metric's best value means: higher is better, except for the loss
MINIMISED_METRICS = ("loss",)


class Param(BaseModel):
    """One field's distribution: a float or int range (``log``, ``step``) or a list of choices."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    float_range: tuple[float, float] | None = Field(default=None, alias="float")
    int_range: tuple[int, int] | None = Field(default=None, alias="int")
    choice: list[Any] | None = None
    log: bool = False  # sample the range on a log scale (learning rates, weight decay)
    step: float | None = Field(default=None, gt=0)  # a grid over the range

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        kinds = [k for k in (self.float_range, self.int_range, self.choice) if k is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [low, high], int: [low, high] or choice: [...]")
        if self.choice is not None:
            if not self.choice:
                raise ValueError("choice needs at least one value")
            if self.log or self.step is not None:
                raise ValueError("log and step apply to float and int ranges, not to choice")
            return self
        low, high = self.float_range or self.int_range  # type: ignore[misc]
        if low > high:
            raise ValueError(f"the range's low ({low}) is above its high ({high})")
        if self.log and low <= 0:
            raise ValueError(f"a log range must start above 0, not at {low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound what this distribution can produce (checked against the config)."""
        if self.choice is not None:
            return list(self.choice)
        return list(self.float_range or self.int_range)  # type: ignore[arg-type]

    def suggest(self, trial: Any, name: str) -> Any:
        """This field's value for an Optuna ``trial``."""
        if self.choice is not None:
            return trial.suggest_categorical(name, self.choice)
        if self.int_range is not None:
            low, high = self.int_range
            return trial.suggest_int(name, low, high, step=int(self.step or 1), log=self.log)
        low, high = self.float_range  # type: ignore[misc]
        return trial.suggest_float(name, low, high, step=self.step, log=self.log)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["accuracy", "loss", "f1_macro", "balanced_accuracy", "map"] | None = None
    pruner: Literal["median", "hyperband", "none"] = "median"
    # trials that run in full before the median pruner starts comparing (TPE samples at random for 10)
    startup_trials: int = Field(default=5, ge=0)
    params: dict[str, Param] = Field(min_length=1)

    def objective_metric(self, config: RunConfig) -> str:
        return self.metric or config.train.early_stopping_metric

    def direction(self, config: RunConfig) -> Literal["minimize", "maximize"]:
        return "minimize" if self.objective_metric(config) in MINIMISED_METRICS else "maximize"

    def check_against(self, config_path: Path | None, overrides: list[str], values: dict) -> None:
        """Refuse a field the config does not have, or a value it does not accept, naming both."""
        for name, param in self.params.items():
            for value in param.extremes():
                try:
                    load_config(config_path, overrides, {**values, name: value})
                except ConfigError as exc:
                    raise ConfigError(
                        f"search space: {name}={value!r} is not a valid config value: {exc}"
                    ) from None


def load_search_space(path: Path) -> SearchSpace:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the search space ({exc.strerror}); pass a YAML file"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: expected a mapping with params: (see docs/training.md, Hyperparameter search)"
        )
    try:
        return SearchSpace.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: invalid search space: {describe_validation_errors(exc.errors())}"
        ) from None
