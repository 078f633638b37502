"""A live `uvicorn` serving a real tiny bundle on 127.0.0.1 (random port), shared by the e2e tests."""

from __future__ import annotations

import shutil

import pytest

from service.settings import BatchingSettings, Settings
from tests.conftest import serve_in_thread


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
    with serve_in_thread(settings) as url:
        yield url.removeprefix("http://")
