"""A command whose extra is not installed says exactly what to install (exit 2), read from the installed
distribution's own metadata, so pyproject.toml stays the one list."""

from __future__ import annotations

from importlib import metadata

import pytest

from imgcls import extras
from imgcls.cli import main
from imgcls.errors import MissingExtraError


def test_the_train_extra_is_read_from_the_installed_metadata():
    names = extras.extra_requirements("train")
    assert {"timm", "scikit-learn", "matplotlib", "tensorboard"} <= set(names)
    assert "fastapi" not in names  # serving's own dependencies are not in the extra


def test_an_extra_of_an_uninstalled_distribution_is_empty():
    assert extras.extra_requirements("train", distribution="no-such-distribution-here") == []


@pytest.fixture
def without_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.distribution

    def distribution(name: str):
        if name == "timm":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(extras.metadata, "distribution", distribution)


@pytest.mark.usefixtures("without_timm")
def test_a_missing_library_names_the_extra_and_the_install_command():
    assert extras.missing_requirements("train") == ["timm"]
    with pytest.raises(
        MissingExtraError,
        match=r'imgcls train needs the train extra.*\(missing: timm\); .*pip install "imgcls\[train\]"',
    ):
        extras.require_extra("train", "imgcls train")


@pytest.mark.usefixtures("without_timm")
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "configs/digits.yaml"],
        ["export", "--run", "runs/x"],
        ["data", "digits", "--out", "nowhere"],
        ["models"],
        ["evaluate", "--bundle", "models/x/1"],
    ],
)
def test_training_commands_without_the_train_extra_exit_2_saying_what_to_install(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'pip install "imgcls[train]"' in err and "Traceback" not in err


@pytest.mark.usefixtures("without_timm")
def test_a_command_that_reaches_a_missing_library_further_in_gets_the_same_advice(monkeypatch, capsys):
    from trainer import cli as trainer_cli

    def reaches_timm(name: str, command: str) -> None:
        raise ModuleNotFoundError("No module named 'timm'", name="timm")

    monkeypatch.setattr(trainer_cli, "require_extra", reaches_timm)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert "'timm'" in err and 'pip install "imgcls[train]"' in err and "Traceback" not in err


@pytest.mark.usefixtures("without_timm")
def test_a_missing_module_outside_the_extra_is_a_bug_and_keeps_its_traceback(monkeypatch):
    from trainer import cli as trainer_cli

    def reaches_a_typo(name: str, command: str) -> None:
        raise ModuleNotFoundError("No module named 'servcie'", name="servcie")

    monkeypatch.setattr(trainer_cli, "require_extra", reaches_a_typo)
    assert extras.extra_providing("timm.models") == "train"
    assert extras.extra_providing("servcie") is None and extras.extra_providing(None) is None
    with pytest.raises(ModuleNotFoundError, match="servcie"):
        main(["models"])
