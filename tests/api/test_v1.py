"""KServe v1 routes through the real app (lifespan, batcher, runtime) with a real tiny bundle."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.api.conftest import class_image, wait_ready


def _instances(*images: bytes) -> dict:
    return {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": {"tiny/1": "ready"}}


def test_models_are_listed_and_described(client):
    assert client.get("/v1/models").json() == {"models": ["tiny"]}
    assert client.get("/v1/models/tiny").json() == {
        "name": "tiny",
        "ready": True,
        "versions": [
            {
                "version": "1",
                "ready": True,
                "labels": ["class_0", "class_1", "class_2"],
                "task": "multiclass",
                "explain": {"available": True, "methods": ["gradcam"], "state": "idle"},
            }
        ],
    }


def test_json_batch_prediction_returns_one_prediction_per_image_in_order(client):
    images = [class_image(label, 200 + label) for label in (2, 0, 1, 2)]
    response = client.post(
        "/v1/models/tiny:predict", json={**_instances(*images), "parameters": {"top_k": 2}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1"
    assert len(body["predictions"]) == 4
    first = body["predictions"][0]
    assert set(first) == {"label", "index", "score", "top_k"}
    assert len(first["top_k"]) == 2 and first["top_k"][0]["score"] >= first["top_k"][1]["score"]
    assert first["label"] == f"class_{first['index']}"


def test_served_predictions_equal_the_runtime_run_directly(client, tiny_bundle):
    from imgcls.manifest import load_manifest
    from service.preprocess import Preprocessor
    from service.runtimes import OnnxRuntime

    bundle, _ = tiny_bundle
    images = [class_image(label, 300 + i) for i, label in enumerate((0, 1, 2, 1, 0))]
    body = client.post("/v1/models/tiny:predict", json=_instances(*images)).json()
    preprocess = Preprocessor(load_manifest(bundle).preprocess)
    runtime = OnnxRuntime(bundle / "model.onnx")
    runtime.temperature = load_manifest(bundle).temperature or 1.0  # as the service sets it
    expected = runtime.infer(np.stack([preprocess(i) for i in images]))
    assert [p["index"] for p in body["predictions"]] == expected.argmax(1).tolist()
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected.max(1), atol=1e-6)


def test_multipart_upload_answers_in_the_same_shape(client):
    files = [("file", (f"{i}.png", class_image(i, 400), "image/png")) for i in range(3)]
    response = client.post("/v1/models/tiny:predict", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


def test_versioned_route_serves_that_version(client):
    response = client.post("/v1/models/tiny/versions/1:predict", json=_instances(class_image(1)))
    assert response.json()["model_version"] == "1"


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"instances": []}}, 400, "no images"),
        ({"json": {"inputs": []}}, 400, '"instances"'),
        ({"json": {"instances": [{"b64": "!!!"}]}}, 400, "instance 0: b64 is not valid base64"),
        (
            {"json": {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}},
            400,
            "image 0: not a decodable",
        ),
        ({"json": {"instances": [{"b64": "aGk="}], "parameters": {"top_k": 0}}}, 400, "top_k"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ],
    ids=["bad-json", "no-instances", "wrong-shape", "bad-base64", "not-an-image", "bad-top-k", "wrong-type"],
)
def test_bad_requests_get_a_status_and_an_error_message(client, kwargs, status, message):
    response = client.post("/v1/models/tiny:predict", **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_unknown_model_and_version_are_404_naming_what_exists(client):
    response = client.post("/v1/models/nope:predict", json=_instances(class_image(0)))
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'nope'; models served here: tiny"}
    response = client.post("/v1/models/tiny/versions/9:predict", json=_instances(class_image(0)))
    assert response.status_code == 404 and "versions: 1" in response.json()["error"]


def test_too_many_images_is_400(client, settings):
    images = [class_image(0)] * (settings.max_images_per_request + 1)
    response = client.post("/v1/models/tiny:predict", json=_instances(*images))
    assert response.status_code == 400
    assert "the limit is 64" in response.json()["error"]


def test_a_body_over_the_limit_is_413(model_repo, settings):
    from fastapi.testclient import TestClient

    small = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(small)) as client:
        wait_ready(client)
        response = client.post("/v1/models/tiny:predict", json=_instances(b"x" * 10_000))
        assert response.status_code == 413
        assert "over the limit of 4096 bytes" in response.json()["error"]


def test_a_streamed_body_without_content_length_is_cut_off_at_the_limit(model_repo, settings):
    small = settings.model_copy(update={"max_body_bytes": 4096})

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    with TestClient(create_app(small)) as client:
        wait_ready(client)
        response = client.post(
            "/v1/models/tiny:predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert "over the limit of 4096 bytes" in response.json()["error"]


def test_unknown_routes_answer_json_errors(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and "error" in response.json()


def test_a_broken_bundle_is_listed_not_ready_and_the_service_still_serves(model_repo, settings):
    import shutil

    from fastapi.testclient import TestClient

    from imgcls.manifest import MANIFEST_FILENAME, load_manifest

    shutil.copytree(model_repo / "tiny" / "1", model_repo / "tiny" / "2")
    manifest = load_manifest(model_repo / "tiny" / "1").model_copy(update={"version": 2})
    (model_repo / "tiny" / "2" / MANIFEST_FILENAME).write_text(manifest.to_json())
    (model_repo / "tiny" / "2" / "model.onnx").write_bytes(b"corrupt")  # checksum no longer matches
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        described = client.get("/v1/models/tiny").json()
        assert described["versions"][1]["ready"] is False
        assert "model.onnx: size 7 bytes, manifest says" in described["versions"][1]["error"]
        assert (
            client.get("/readyz").status_code == 200
        )  # a bundle that failed verification does not block readiness
        assert (
            client.post("/v1/models/tiny:predict", json=_instances(class_image(0))).json()["model_version"]
            == "1"
        )
        response = client.post("/v1/models/tiny/versions/2:predict", json=_instances(class_image(0)))
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        metrics = client.get("/metrics").text
        assert 'imgcls_model_ready{model="tiny",version="2"} 0.0' in metrics
        assert 'imgcls_model_ready{model="tiny",version="1"} 1.0' in metrics


def test_concurrent_requests_are_batched_and_answered_correctly_in_order(settings):
    """64 concurrent requests of 1-3 images: every answer matches a direct run, and batches exceed 1."""
    # 128 images in flight at once: room for all of them (admission counts images still decoding)
    settings = settings.model_copy(
        update={"batching": settings.batching.model_copy(update={"max_queue_size": 256})}
    )

    async def scenario():
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.registry.loaded.wait()
            worker = app.state.registry.get("tiny")
            sizes: list[int] = []

            class SizeObserver:
                def batch(self, _worker, stats):
                    sizes.append(stats.size)

                def preprocessed(self, _worker, _seconds):
                    pass

                def computed(self, _worker, _seconds):
                    pass

                def preprocessed_on_device(self, _worker, _seconds):
                    pass

            worker.observers.append(SizeObserver())
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                requests = [
                    [class_image((i + j) % 3, 500 + i * 3 + j) for j in range(1 + i % 3)] for i in range(64)
                ]
                responses = await asyncio.gather(
                    *(http.post("/v1/models/tiny:predict", json=_instances(*images)) for images in requests)
                )
                expected = [(await worker.predict_images(images)).argmax(1).tolist() for images in requests]
            return responses, expected, sizes

    responses, expected, sizes = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert [[p["index"] for p in r.json()["predictions"]] for r in responses] == expected
    assert max(sizes) > 1
