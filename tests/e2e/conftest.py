"""A live `uvicorn` serving a real tiny bundle on 127.0.0.1 (random port), shared by the e2e tests."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import uvicorn

from service.app import create_app
from service.client import wait_until_ready
from service.settings import BatchingSettings, Settings


@pytest.fixture(scope="module")
def server_url(tiny_bundle, tmp_path_factory: pytest.TempPathFactory):
    bundle, _ = tiny_bundle
    repo = tmp_path_factory.mktemp("live") / "models"
    shutil.copytree(bundle, repo / "tiny" / "1")
    settings = Settings(
        model_repo=repo,
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=64),
        intra_op_threads=1,
        decode_threads=2,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the live server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=60)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)
