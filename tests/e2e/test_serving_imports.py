"""A serving process imports nothing of the trainer's stack: `imgcls serve` started as a user starts it,
a bundle loaded and a prediction answered, with every import the process made recorded by Python itself
(``-X importtime``). This is what lets ``pip install imgcls`` leave the training libraries out."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.client import wait_until_ready
from tests.api.conftest import class_image

pytestmark = pytest.mark.slow  # a real server under -X importtime

ROOT = Path(__file__).resolve().parents[2]
# The trainer's libraries (the train extra) and its config schema: none may load to serve a model.
TRAINING_ONLY = ("timm", "tensorboard", "matplotlib", "sklearn", "onnxscript", "yaml", "trainer.config")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _imported_modules(importtime_output: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_output.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_serving_a_bundle_imports_none_of_the_training_libraries(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
    stderr_path = tmp_path / "stderr.txt"  # a file, not a pipe: importtime writes more than a pipe holds
    with stderr_path.open("w") as stderr_file:
        server = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "imgcls", "serve", "--model-repo", str(tmp_path / "models"),
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file,
        )  # fmt: skip
    try:
        try:
            wait_until_ready(url, timeout_s=90)
        except Exception:
            server.kill()
            server.wait()
            raise AssertionError(f"not ready: {stderr_path.read_text()[-3000:]}") from None
        body = {"instances": [{"b64": base64.b64encode(class_image(1, 7)).decode()}]}
        answer = httpx.post(f"{url}/v1/models/tiny:predict", json=body, timeout=30)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert answer.status_code == 200, answer.text
    imported = _imported_modules(stderr_path.read_text())
    assert {"service.app", "service.runtimes", "imgcls.manifest"} <= imported, "importtime recorded nothing"
    loaded = sorted(
        name for name in imported if any(name == bad or name.startswith(f"{bad}.") for bad in TRAINING_ONLY)
    )
    assert loaded == [], f"serving imported training-only modules: {loaded}"
