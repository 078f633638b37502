"""`imgcls serve` checks what it can before the server starts: one line `error: ...`, exit code 2.

Each case runs the installed console script in a subprocess with a short timeout: a check that let
the mistake through would start the server (and time out) or fail in the log instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

IMGCLS = Path(sys.executable).with_name("imgcls")


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``imgcls serve ARGS`` with ``env`` as its only IMGCLS_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
    return subprocess.run(
        [str(IMGCLS), "serve", *args], capture_output=True, text=True, timeout=60, env={**clean, **env}
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr, ``error: ...``, after exit code 2 and nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one bundle folder: enough for the checks, which only look for folders."""
    bundle = tmp_path / "models" / "tiny" / "1"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    return tmp_path / "models"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something is listening on, as another server would be."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_missing_repository(tmp_path: Path):
    line = error_line(serve("--model-repo", str(tmp_path / "nonexistent")))
    assert line == (
        f"error: {tmp_path / 'nonexistent'}: model repository not found; train and export a model first "
        "(make demo writes models/digits/1) or set --model-repo / IMGCLS_MODEL_REPO"
    )


def test_a_repository_without_bundles_says_how_to_make_one(tmp_path: Path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)  # a model folder with no version in it
    line = error_line(serve("--model-repo", str(tmp_path / "models")))
    assert f"{tmp_path / 'models'}: no model bundles in the model repository" in line
    assert "imgcls train --config configs/digits.yaml" in line
    assert f"imgcls export --run runs/<run> --out {tmp_path / 'models' / '<name>' / '1'}" in line


@pytest.mark.parametrize("given", ["tiny/1", "tiny"], ids=["a bundle", "a model folder"])
def test_a_bundle_or_model_folder_given_as_the_repository_names_the_repository(repo: Path, given: str):
    line = error_line(serve("--model-repo", str(repo / given)))
    assert line.endswith(f"--model-repo {repo}"), line


def test_a_port_in_use_is_named_with_the_fix(repo: Path, busy_port: int):
    line = error_line(serve("--model-repo", str(repo), "--port", str(busy_port)))
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line
    assert "choose a free port with --port / IMGCLS_PORT" in line


def test_a_metrics_port_in_use_names_its_variable(repo: Path, busy_port: int):
    line = error_line(serve("--model-repo", str(repo), "--port", "0", IMGCLS_METRICS_PORT=str(busy_port)))
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line
    assert line.endswith("choose a free port with IMGCLS_METRICS_PORT")


def test_an_invalid_environment_setting_names_the_variable(repo: Path):
    line = error_line(serve("--model-repo", str(repo), IMGCLS_BATCHING__MAX_BATCH_SIZE="0"))
    assert line == (
        "error: invalid service settings: IMGCLS_BATCHING__MAX_BATCH_SIZE: "
        "Input should be greater than or equal to 1 (got '0')"
    )


def test_an_invalid_flag_value_names_the_flag(repo: Path):
    line = error_line(serve("--model-repo", str(repo), "--port", "99999"))
    assert line.startswith(
        "error: invalid service settings: --port: Input should be less than or equal to 65535"
    )


def test_a_variable_that_is_not_json_is_named(repo: Path):
    line = error_line(serve("--model-repo", str(repo), IMGCLS_MODELS="{digits: 16}"))
    assert line.startswith("error: invalid service settings: IMGCLS_MODELS is not valid JSON")
    assert """IMGCLS_MODELS='{"digits": {"max_batch_size": 16}}'""" in line
