"""Start a server process for a benchmark, wait until it answers a real request, stop it after.

Used by `imgcls bench batching` and `imgcls bench compare`, which start imgcls and the peer servers
one after another on a free local port. Readiness is a real prediction (the same request the load
will send), so a server is never measured while still loading or compiling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from benchmarks.load import Payload

__all__ = [
    "ServerSpec",
    "ServerStartError",
    "free_port",
    "imgcls_running",
    "imgcls_server",
    "peer_server",
    "running",
]


class ServerStartError(RuntimeError):
    """The server exited or never answered; the message carries the tail of its log."""


@dataclass(frozen=True)
class ServerSpec:
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _local_server(program: list[str], model_repo: Path, port: int, *options: str) -> list[str]:
    """``python -m <program>`` serving ``model_repo`` on 127.0.0.1:``port`` (options every server takes)."""
    return [sys.executable, "-m", *program, "--model-repo", str(model_repo), "--host", "127.0.0.1",
            "--port", str(port), *options]  # fmt: skip


def imgcls_server(model_repo: Path, port: int, *, env: dict[str, str] | None = None) -> ServerSpec:
    """`imgcls serve` over ``model_repo`` with text logs at warning level (the load is not logged)."""
    command = _local_server(
        ["imgcls", "serve"], model_repo, port, "--log-level", "warning", "--log-format", "text"
    )
    return ServerSpec(label="imgcls", command=command, env=env or {})


def peer_server(
    module: str, model_repo: Path, model: str, port: int, *, label: str, options: list[str]
) -> ServerSpec:
    """A peer from ``benchmarks.peers`` (see its modules for the command-line contract)."""
    return ServerSpec(
        label=label,
        command=_local_server([f"benchmarks.peers.{module}"], model_repo, port, "--model", model, *options),
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _without_imgcls_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment less its IMGCLS_* settings: a measured server runs with the
    benchmark's settings only, not a pinned runtime, API keys or a metrics port left in the shell."""
    return {key: value for key, value in environ.items() if not key.startswith("IMGCLS_")}


@contextlib.contextmanager
def running(
    spec: ServerSpec,
    url: str,
    probe_path: str,
    probe_body: bytes,
    probe_headers: dict[str, str],
    *,
    timeout_s: float = 300,
) -> Iterator[subprocess.Popen]:
    """Run ``spec`` until the ``with`` block ends; ready once the probe request gets a 200."""
    log = Path(tempfile.mkstemp(prefix=f"imgcls-bench-{spec.label}-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            spec.command,
            env={**_without_imgcls_settings(os.environ), **spec.env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C stays ours; the server gets a clean SIGTERM
        )
    try:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                if process.poll() is not None:
                    raise ServerStartError(f"{spec.label} exited with {process.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{spec.label} did not answer within {timeout_s:.0f} s:\n{_tail(log)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.post(probe_path, content=probe_body, headers=probe_headers).status_code == 200:
                        break
                time.sleep(0.5)
        yield process
    finally:
        _stop(process)
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def imgcls_running(model_repo: Path, env: dict[str, str], probe: Payload) -> Iterator[str]:
    """`imgcls serve` over ``model_repo`` with ``env`` on a free local port, ready once ``probe``
    gets a 200; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(imgcls_server(model_repo, port, env=env), url, probe.path, probe.content, probe.headers):
        yield url


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server alone first (Ray shuts its own helpers down in order; signalled all at
    once they take far longer), then whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
        time.sleep(1)
        os.killpg(process.pid, signal.SIGKILL)
