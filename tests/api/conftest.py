from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import BatchingSettings, Settings
from tests.conftest import make_image


@pytest.fixture
def model_repo(tiny_bundle, tmp_path: Path) -> Path:
    bundle, _ = tiny_bundle
    root = tmp_path / "models"
    shutil.copytree(bundle, root / "tiny" / "1")
    return root


@pytest.fixture
def settings(model_repo: Path) -> Settings:
    return Settings(
        model_repo=model_repo,
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=64),
        decode_threads=2,
        intra_op_threads=1,
    )


def wait_ready(test_client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while test_client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"not ready after {timeout_s} s: {test_client.get('/readyz').json()}")
        time.sleep(0.02)


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def class_image(label: int, index: int = 100, fmt: str = "PNG") -> bytes:
    """An image of the tiny bundle's class ``label`` (same generator the bundle was trained on)."""
    path = Path("/tmp") / f"imgcls-api-{label}-{index}.{fmt.lower()}"
    make_image(path, label, index)
    data = path.read_bytes()
    path.unlink()
    return data


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
