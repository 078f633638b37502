"""The peer servers (benchmarks/peers) keep the contract the load generator relies on.

The plain FastAPI peer runs in-process; LitServe's API steps are called directly (litserve is in the
``peers`` extra, not the project's dependencies: these tests are marked ``peers`` and skip without it,
except under CI, where they fail; ``make test-peers`` installs the extra and runs them). Ray Serve needs
a running Ray instance, so only its route is checked here; ``imgcls bench compare`` starts each peer for
real (tests/e2e/test_bench_commands.py).
"""

from __future__ import annotations

import base64
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from benchmarks.peers.common import PredictRequest, load_model, parse_args, resolve_bundle
from imgcls.errors import ImgclsError
from imgcls.manifest import MANIFEST_FILENAME, load_manifest
from tests.conftest import require_module

INSTALL_PEERS = "make test-peers, or pip install -e '.[peers]'"


def _image(label: int, index: int, tmp_path: Path) -> bytes:
    from tests.conftest import make_image

    path = tmp_path / f"{label}-{index}.png"
    make_image(path, label, index)
    return path.read_bytes()


def _body(images: list[bytes]) -> dict:
    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


@pytest.fixture
def repo(tiny_bundle, tmp_path: Path) -> Path:
    """models/tiny/{1,2,10}/: the highest *numeric* version is 10, not 2."""
    bundle, _ = tiny_bundle
    root = tmp_path / "models"
    for version in (1, 2, 10):
        target = root / "tiny" / str(version)
        shutil.copytree(bundle, target)
        manifest = load_manifest(bundle).model_copy(update={"version": version})
        (target / MANIFEST_FILENAME).write_text(manifest.to_json())
    return root


@pytest.fixture
def images(tmp_path: Path) -> list[bytes]:
    return [_image(label, 500 + i, tmp_path) for i, label in enumerate((0, 1, 2, 1, 0))]


def test_the_highest_numeric_version_is_served_and_a_bundle_path_is_taken_as_given(repo: Path):
    assert resolve_bundle(repo, "tiny", None) == repo / "tiny" / "10"
    assert resolve_bundle(None, None, repo / "tiny" / "2") == repo / "tiny" / "2"
    with pytest.raises(ImgclsError, match=r"no version folders"):
        resolve_bundle(repo, "nope", None)
    with pytest.raises(ImgclsError, match=r"give --model-repo DIR --model NAME, or --bundle"):
        resolve_bundle(repo, None, None)


def test_the_command_line_offers_batching_and_workers_only_where_asked(repo: Path):
    args, bundle = parse_args("x", ["--model-repo", str(repo), "--model", "tiny", "--port", "9"])
    assert (bundle, args.port, args.intra_op_threads) == (repo / "tiny" / "10", 9, None)
    assert not hasattr(args, "max_batch_size") and not hasattr(args, "workers")
    args, _ = parse_args("x", ["--bundle", str(repo / "tiny" / "1")], batching=True, workers=True)
    assert (args.max_batch_size, args.max_queue_delay_ms, args.workers) == (32, 5.0, 1)


def test_a_model_answers_what_imgcls_runtime_answers(repo: Path, images: list[bytes]):
    from service.preprocess import Preprocessor
    from service.runtimes import OnnxRuntime

    bundle = repo / "tiny" / "1"
    model = load_model(bundle, device="cpu", intra_op_threads=1, max_batch_size=4)
    assert model.runtime.name == "onnxruntime"  # what imgcls picks on the CPU
    preprocess = Preprocessor(load_manifest(bundle).preprocess)
    runtime = OnnxRuntime(bundle / "model.onnx")
    runtime.temperature = load_manifest(bundle).temperature or 1.0  # the peers serve calibrated scores too
    expected = runtime.infer(np.stack([preprocess(i) for i in images]))
    got = model.predictions(model.infer(model.preprocess_request(PredictRequest(**_body(images)))))
    assert [p["label"] for p in got] == [model.manifest.labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([p["score"] for p in got], expected.max(1), atol=1e-6)


def test_the_plain_fastapi_peer_keeps_the_contract(repo: Path, images: list[bytes]):
    from benchmarks.peers.fastapi_plain import create_app

    with TestClient(create_app(repo / "tiny" / "1", device="cpu", intra_op_threads=1)) as client:
        for count in (1, 3):
            response = client.post("/v1/models/tiny:predict", json=_body(images[:count]))
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            assert len(predictions) == count and set(predictions[0]) == {"label", "score"}
        bad = [
            b"{not json",
            b'{"instances": []}',
            b'{"instances": [{"b64": "@@@"}]}',
            b'{"instances": [{"b64": "aGVsbG8="}]}',  # "hello": not an image
        ]
        for content in bad:
            response = client.post(
                "/v1/models/tiny:predict", content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (content, response.text)
        assert client.post("/v1/models/other:predict", json=_body(images[:1])).status_code == 404


@pytest.mark.peers
def test_the_litserve_api_answers_each_request_whole_and_in_order(repo: Path, images: list[bytes]):
    require_module("litserve", INSTALL_PEERS)
    from benchmarks.peers.litserve_server import ImageClassifierAPI

    api = ImageClassifierAPI(
        repo / "tiny" / "1",
        device="cpu",
        intra_op_threads=1,
        max_batch_size=8,
        api_path="/v1/models/tiny:predict",
    )
    api.setup("cpu")
    requests = [PredictRequest(**_body(images[:1])), PredictRequest(**_body(images[1:4]))]
    outputs = api.unbatch(api.predict(api.batch([api.decode_request(r) for r in requests])))
    answers = [api.encode_response(o)["predictions"] for o in outputs]
    alone = [api.encode_response(api.predict(api.decode_request(r)))["predictions"] for r in requests]
    assert [len(a) for a in answers] == [1, 3]
    assert [[p["label"] for p in a] for a in answers] == [[p["label"] for p in a] for a in alone]


@pytest.mark.peers
def test_the_ray_serve_peer_routes_the_contract_path():
    from pydantic.warnings import PydanticDeprecatedSince20

    with warnings.catch_warnings():
        # ray 2.60's serve config passes extra keywords to pydantic's Field (deprecated since pydantic 2.0)
        warnings.filterwarnings("ignore", category=PydanticDeprecatedSince20, module=r"ray\.")
        require_module("ray.serve", INSTALL_PEERS)
        from benchmarks.peers.rayserve_server import app

    assert "/v1/models/{name}:predict" in app.openapi()["paths"]
