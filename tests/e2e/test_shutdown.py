"""SIGTERM in the middle of a load: readiness drops at once, no accepted request is lost, exit code 0.
A second signal while a request is still in flight stops the server at once (docs/operations.md, Shutdown)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from service.client import wait_until_ready
from tests.api.conftest import class_image

pytestmark = pytest.mark.slow  # real servers, signals and grace periods

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_accepted_requests_and_exits_cleanly(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "IMGCLS_BATCHING__MAX_BATCH_SIZE": "8", "IMGCLS_INTRA_OP_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "imgcls", "serve", "--model-repo", str(tmp_path / "models"), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until_ready(url, timeout_s=60)
        body = {
            "instances": [{"b64": base64.b64encode(class_image(i % 3, 1200 + i)).decode()} for i in range(4)]
        }
        outcomes: list[str] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(2000):  # bounded; ends on the first 503 or refused connection
                    try:
                        status = http.post("/v1/models/tiny:predict", json=body).status_code
                    except httpx.ConnectError:
                        outcome = "refused"  # never accepted: the port was already closed
                    except httpx.HTTPError as exc:
                        outcome = f"lost: {type(exc).__name__}"
                    else:
                        outcome = str(status)
                    with lock:
                        outcomes.append(outcome)
                    if outcome != "200":
                        return

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.send_signal(signal.SIGTERM)
        readiness = httpx.get(f"{url}/readyz", timeout=5).status_code
        for thread in threads:
            thread.join(timeout=60)
        output = server.communicate(timeout=60)[0]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert readiness == 503
    assert server.returncode == 0, output
    assert outcomes.count("200") > 0
    assert set(outcomes) <= {"200", "503", "refused"}, sorted(set(outcomes))


def _start(models, port: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgcls", "serve", "--model-repo", str(models), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "IMGCLS_INTRA_OP_THREADS": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _hold_a_request_in_flight(url: str, port: int) -> socket.socket:
    """A prediction request in flight for as long as the test likes: its body never arrives whole."""
    upload = socket.create_connection(("127.0.0.1", port), timeout=10)
    upload.sendall(
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: test\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"instances": ['
    )
    deadline = time.monotonic() + 10
    while "imgcls_inflight_requests 1.0" not in httpx.get(f"{url}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the slow upload never became an in-flight request"
        time.sleep(0.05)
    return upload


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once_with_a_request_in_flight(tiny_bundle, tmp_path, second: int):
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    grace_s, prompt_s = 30, 3.0
    server = _start(tmp_path / "models", port, IMGCLS_SHUTDOWN_GRACE_S=str(grace_s))
    try:
        wait_until_ready(url, timeout_s=60)
        with _hold_a_request_in_flight(url, port):
            server.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # past the minimum drain: only the request in flight keeps the server up
            assert server.poll() is None, server.communicate()[0]
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
            signalled = time.monotonic()
            server.send_signal(second)
            try:
                server.wait(timeout=prompt_s)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {prompt_s} s after the second signal (grace period {grace_s} s)")
            stopped_after = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    assert stopped_after < prompt_s


def test_the_grace_period_bounds_the_whole_wait_for_a_stuck_request(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    grace_s = 4
    server = _start(tmp_path / "models", port, IMGCLS_SHUTDOWN_GRACE_S=str(grace_s))
    try:
        wait_until_ready(url, timeout_s=60)
        with _hold_a_request_in_flight(url, port):
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=grace_s + 3)  # before: the grace period twice over
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {grace_s + 3} s after SIGTERM with a {grace_s} s grace period")
            stopped_after = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
        log = server.communicate()[0]
    assert grace_s - 0.5 <= stopped_after < grace_s + 3  # it did wait for the request, then stopped
    assert code == 0, log
    assert "grace period of 4 s passed" in log
