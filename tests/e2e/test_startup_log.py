"""A start-up that fails under real uvicorn is one log line: without a traceback when imgcls raised the
error on purpose (its message says what to fix), with one when something unexpected broke."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import uvicorn

import service.app
from imgcls.errors import ImgclsError
from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings


def start(settings: Settings) -> int:
    """Run uvicorn on the app until it gives up; its exit code."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None, lifespan="on")
    with pytest.raises(SystemExit) as exited:
        uvicorn.Server(config).run()
    return exited.value.code


def startup_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "imgcls.app" and r.getMessage().startswith("startup failed")
    ]


def test_a_missing_repository_is_one_line_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    assert start(Settings(model_repo=tmp_path / "nonexistent")) == 3
    [record] = startup_failures(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"startup failed: {tmp_path / 'nonexistent'}: model repository not found; train and export a model "
        "first (make demo writes models/digits/1) or set --model-repo / IMGCLS_MODEL_REPO"
    )
    assert record.exc_info is None
    assert "exception" not in JsonFormatter().format(record)
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert "Application startup failed. Exiting." in caplog.messages


def test_an_unexpected_error_keeps_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def broken_registry(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the registry broke")

    monkeypatch.setattr(service.app, "ModelRegistry", broken_registry)
    assert start(Settings(model_repo=tmp_path)) == 3
    [record] = startup_failures(caplog)
    assert record.getMessage() == "startup failed: RuntimeError: the registry broke"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "broken_registry" in JsonFormatter().format(
        record
    )  # the traceback, in the JSON line's "exception"
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]  # once, not again as a message


def test_serve_turns_uvicorns_exit_into_an_error_for_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`imgcls serve` checks first; if start-up fails anyway, the command exits 1 (a failure while running)."""
    import service.logs
    from service.server import serve

    monkeypatch.setattr(service.logs, "configure_logging", lambda level, fmt: None)  # keep pytest's handlers
    with pytest.raises(ImgclsError, match="the service did not start; the log lines above say why") as raised:
        serve(Settings(model_repo=tmp_path / "nonexistent", port=0))
    assert raised.value.exit_code == 1
