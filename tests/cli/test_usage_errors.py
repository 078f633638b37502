"""A mistyped command line gets click's usage message and close matches, exit code 2, never a traceback.

Run through the installed console script (and ``python -m imgcls``) in a subprocess: the way a user
meets it, with the exception classes the installed typer really raises (newer typer vendors click).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from imgcls.cli import app, main

IMGCLS = Path(sys.executable).with_name("imgcls")  # the console script pip installed beside this Python


def imgcls(*args: str, module: bool = False) -> subprocess.CompletedProcess[str]:
    """``imgcls ARGS`` (or ``python -m imgcls ARGS``), with none of the caller's IMGCLS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
    command = [sys.executable, "-m", "imgcls"] if module else [str(IMGCLS)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env)


def assert_usage_error(result: subprocess.CompletedProcess[str], usage: str, error: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == usage, result.stderr
    assert lines[-1].startswith(error), result.stderr  # the error is the last thing the user reads


def test_the_console_script_is_installed():
    assert IMGCLS.is_file(), f"{IMGCLS} is missing; run `make venv` (pip install -e .)"


MISTYPED = [
    (["nosuch"], "Usage: imgcls [OPTIONS] COMMAND [ARGS]...", "Error: No such command 'nosuch'."),
    (
        ["trian"],
        "Usage: imgcls [OPTIONS] COMMAND [ARGS]...",
        "Error: No such command 'trian'. Did you mean 'train'?",
    ),
    (["train", "--nosuchflag"], "Usage: imgcls train [OPTIONS]", "Error: No such option: --nosuchflag"),
    (
        ["train", "--epoch", "3"],
        "Usage: imgcls train [OPTIONS]",
        "Error: No such option: --epoch (Possible options: --epochs",  # and whatever else is close
    ),
    (
        ["bench", "nosuch"],
        "Usage: imgcls bench [OPTIONS] COMMAND [ARGS]...",
        "Error: No such command 'nosuch'.",
    ),
    (
        ["bench", "lod"],
        "Usage: imgcls bench [OPTIONS] COMMAND [ARGS]...",
        "Error: No such command 'lod'. Did you mean 'load'?",
    ),
    (
        ["data", "digit"],
        "Usage: imgcls data [OPTIONS] COMMAND [ARGS]...",
        "Error: No such command 'digit'. Did you mean 'digits', 'digit-grid'?",
    ),
    (["evaluate"], "Usage: imgcls evaluate [OPTIONS]", "Error: Missing option '--bundle'."),
    (["serve", "--port", "http"], "Usage: imgcls serve [OPTIONS]", "Error: Invalid value for '--port': "),
]


@pytest.mark.parametrize(
    ("args", "usage", "error"), MISTYPED, ids=[" ".join(args) for args, _, _ in MISTYPED]
)
def test_a_mistyped_command_line_gets_the_usage_and_close_matches(args: list[str], usage: str, error: str):
    assert_usage_error(imgcls(*args), usage, error)


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        # trainer/cli.py's own click.UsageError (raised through imgcls.usage)
        (
            ["export"],
            "Usage: imgcls export [OPTIONS]",
            "Error: give --run RUN_DIR, or --random-init --model NAME for a speed bundle",
        ),
        # benchmarks/cli.py's click.BadParameter and click.UsageError
        (
            ["bench", "load", "--protocol", "nosuch"],
            "Usage: imgcls bench load [OPTIONS]",
            "Error: Invalid value for --protocol: 'nosuch'; valid: v1, v1-multipart, v2, v2-binary, v2-pixels",
        ),
        (
            ["bench", "load", "--images", "pictures", "--jpeg", "320x240"],
            "Usage: imgcls bench load [OPTIONS]",
            "Error: give --images or --jpeg, not both",
        ),
    ],
    ids=["export", "bench load --protocol", "bench load --images --jpeg"],
)
def test_the_commands_own_usage_errors_get_the_usage_too(args: list[str], usage: str, error: str):
    assert_usage_error(imgcls(*args), usage, error)


@pytest.mark.parametrize(
    ("args", "commands"),
    [
        (
            [],
            [
                "train",
                "cv",
                "tune",
                "lr-find",
                "export",
                "evaluate",
                "serve",
                "predict",
                "models",
                "data",
                "bench",
            ],
        ),
        (["bench"], ["load", "runtimes", "batching", "compare", "pipeline"]),
        (["data"], ["digits", "digit-grid"]),
    ],
    ids=["imgcls", "imgcls bench", "imgcls data"],
)
def test_a_bare_group_prints_its_help_and_exits_2(args: list[str], commands: list[str]):
    """As click's no_args_is_help does: the help, on stderr, and exit code 2 (a command is missing)."""
    result = imgcls(*args)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"Usage: {' '.join(['imgcls', *args])} [OPTIONS] COMMAND [ARGS]...")
    listed = result.stderr.split("Commands:", 1)[1].split()
    assert set(commands) <= set(listed), result.stderr


def test_help_asked_for_goes_to_stdout_with_exit_0():
    result = imgcls("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: imgcls [OPTIONS] COMMAND [ARGS]...")
    assert result.stderr == ""


def test_python_m_trainer_answers_the_same():
    result = imgcls("trian", module=True)
    assert_usage_error(
        result,
        "Usage: imgcls [OPTIONS] COMMAND [ARGS]...",
        "Error: No such command 'trian'. Did you mean 'train'?",
    )


@pytest.fixture
def extra_command(monkeypatch: pytest.MonkeyPatch):
    """Register a command on the real app for one test (typer builds the click group on every call)."""
    monkeypatch.setattr(app, "registered_commands", list(app.registered_commands))
    return app.command


def test_errors_of_the_click_package_are_caught_too(extra_command, capsys: pytest.CaptureFixture):
    """Code that raises the click package's classes (not typer's vendored ones) gets a message, not a traceback."""
    import click as click_package

    @extra_command("pick")
    def pick() -> None:
        raise click_package.UsageError("give --this or --that")

    assert main(["pick"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "Error: give --this or --that"


def test_an_exit_code_from_typer_exit_is_returned(extra_command):
    @extra_command("stop")
    def stop() -> None:
        raise typer.Exit(3)

    assert main(["stop"]) == 3


def test_ctrl_c_inside_a_command_exits_130_with_one_line(extra_command, capsys: pytest.CaptureFixture):
    @extra_command("wait")
    def wait() -> None:
        raise KeyboardInterrupt

    assert main(["wait"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
