"""Shared fixtures: tiny datasets built on the fly, and markers that skip with a reason."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True, scope="session")
def _feedback_store_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every server a test starts keeps its SQLite feedback store in a temporary folder, never in
    ./feedback of the checkout (tests that test the store pass their own)."""
    previous = os.environ.get("IMGCLS_FEEDBACK_DIR")
    os.environ["IMGCLS_FEEDBACK_DIR"] = str(tmp_path_factory.mktemp("feedback-store"))
    yield
    if previous is None:
        os.environ.pop("IMGCLS_FEEDBACK_DIR", None)
    else:
        os.environ["IMGCLS_FEEDBACK_DIR"] = previous


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    try:
        import torch_tensorrt  # noqa: F401

        tensorrt_reason = None if torch.cuda.is_available() else "needs a CUDA GPU for TensorRT"
    except ImportError:
        tensorrt_reason = "torch_tensorrt is not installed (TensorRT cannot be installed from PyPI here)"
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "tensorrt" in item.keywords and tensorrt_reason:
            item.add_marker(pytest.mark.skip(reason=tensorrt_reason))


def make_image(path: Path, label: int, index: int, size: int = 20, mode: str = "RGB") -> None:
    """A learnable picture: class k is a bright bar at row band k, plus seeded noise."""
    rng = np.random.default_rng(label * 1000 + index)
    array = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    band = size // 4
    array[label * band : (label + 1) * band, :, label % 3] = 230
    image = Image.fromarray(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)


@pytest.fixture
def make_imagefolder(tmp_path: Path):
    """Factory: ``make_imagefolder(classes=3, per_class=12)`` -> an ImageFolder path."""

    def build(classes: int = 3, per_class: int = 12, name: str = "tiny", size: int = 20) -> Path:
        root = tmp_path / name
        for label in range(classes):
            for index in range(per_class):
                make_image(root / f"class_{label}" / f"{index:03d}.png", label, index, size)
        return root

    return build


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Factory for a RunConfig that trains simple_cnn for a couple of epochs in seconds."""
    from trainer.config import load_config

    def build(data: Path, *overrides: str):
        return load_config(
            None,
            [
                f"data.path={data}",
                f"runs_dir={tmp_path / 'runs'}",
                f"export.out_dir={tmp_path / 'models'}",
                "run_name=tiny",
                "preprocess.image_size=16",
                "preprocess.resize=16",
                "augment.preset=light",
                "train.epochs=2",
                "train.batch_size=8",
                "data.val_fraction=0.2",
                "data.test_fraction=0.2",
                "export.parity_samples=8",
                *overrides,
            ],
        )

    return build


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """One real 2-epoch run on generated images, shared by the session: (TrainResult, its root folder)."""
    from trainer.config import load_config
    from trainer.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "tiny"
    for label in range(3):
        for index in range(12):
            make_image(data / f"class_{label}" / f"{index:03d}.png", label, index)
    config = load_config(
        None,
        [
            f"data.path={data}",
            f"runs_dir={root / 'runs'}",
            f"export.out_dir={root / 'models'}",
            "run_name=tiny",
            "preprocess.image_size=16",
            "preprocess.resize=18",
            "train.epochs=2",
            "train.batch_size=8",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            "export.parity_samples=8",
        ],
    )
    return train(config, config_name="tiny"), root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run):
    """A real bundle (TorchScript + ONNX) exported from ``tiny_run``: (bundle_dir, run_dir)."""
    from trainer.export import export_bundle

    result, root = tiny_run
    exported = export_bundle(result.run_dir, out_dir=root / "bundles", name="tiny")
    return exported.bundle_dir, result.run_dir


def require_tool(name: str, install: str) -> str:
    """A system tool's path. Missing: skip with the reason, or fail under CI (``CI`` set, as
    ``.ci/run`` does), where every tool the tests use is installed."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; {install} (.ci/run requires it)")
        pytest.skip(f"{name} is not installed ({install}; .ci/run requires it in CI)")
    return path


def require_module(name: str, install: str):
    """An optional Python package, imported. Missing: skip with the reason, or fail under CI (``CI`` set,
    as ``.ci/run`` does), where it is installed. A package that is there but fails to import fails anyway."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(f"{exc.name}.")):
            raise  # the package is there, but something it needs is not: a broken install, not a skip
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; {install} (.ci/run installs it)")
        pytest.skip(f"{name} is not installed ({install}; .ci/run installs it in CI)")


@contextlib.contextmanager
def serve_in_thread(settings) -> Iterator[str]:
    """The real app under uvicorn in a background thread on ``settings.host`` (any free port), ready:
    yields its base URL ``http://HOST:PORT`` and stops the server on exit."""
    import uvicorn

    from service.app import create_app
    from service.client import wait_until_ready

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=settings.host, port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the live server did not start")
            time.sleep(0.05)
        url = f"http://{settings.host}:{server.servers[0].sockets[0].getsockname()[1]}"
        wait_until_ready(url, timeout_s=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def skip_if_torch_tensorrt_installed() -> None:
    """For tests of the message a user gets without torch_tensorrt, which cannot be shown where it is."""
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return
    pytest.skip("torch_tensorrt is installed here; the missing-package message cannot be shown")
