"""A client that hangs up while its images are queued: they leave the queue and are never computed."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time

import pytest
import uvicorn

import service.worker as worker_module
from service.app import create_app
from service.client import wait_until_ready
from service.settings import BatchingSettings, Settings
from tests.api.conftest import class_image
from tests.api.test_overload import GatedRuntime


def _send_predict(port: int, labels: list[int]) -> socket.socket:
    body = json.dumps(
        {
            "instances": [
                {"b64": base64.b64encode(class_image(label, 1100 + label)).decode()} for label in labels
            ]
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


def test_hanging_up_removes_queued_images_before_they_are_computed(tiny_bundle, tmp_path, monkeypatch):
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    made: list[GatedRuntime] = []
    real = worker_module.choose_runtime

    def choose(*args, **kwargs):
        runtime = GatedRuntime(real(*args, **kwargs))
        runtime.gate.set()  # warm-up passes
        made.append(runtime)
        return runtime

    monkeypatch.setattr(worker_module, "choose_runtime", choose)
    settings = Settings(
        model_repo=tmp_path / "models",
        batching=BatchingSettings(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8),
        intra_op_threads=1,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _until(lambda: server.started, 60)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        runtime = made[0]
        warmup_batches = len(runtime.batches)
        runtime.gate.clear()
        runtime.started.clear()
        first = _send_predict(port, [0])
        _until(runtime.started.is_set)
        leaving = _send_predict(port, [1, 2])
        batcher = app.state.registry.get("tiny").batcher
        _until(lambda: batcher.queue_depth == 2)
        leaving.close()
        _until(lambda: batcher.queue_depth == 0)
        runtime.gate.set()
        answer = first.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(0.2)
        assert runtime.batches[warmup_batches:] == [1]  # only the first request's image was computed
    finally:
        server.should_exit = True
        thread.join(timeout=15)
