"""KServe v1's explain verb through the real HTTP stack with a real bundle: the prediction and its map
per image, the class and method asked for, refusals that say why, and metrics apart from predictions."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import ExplainSettings, Settings
from tests.api.conftest import class_image, wait_ready


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _png(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def _wide(label: int) -> bytes:
    """A class image stretched to 60x40: the map must come back at this size, not the crop's."""
    image = Image.open(io.BytesIO(class_image(label, 300 + label))).convert("RGB").resize((60, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_explain_answers_each_prediction_with_its_map_and_overlay_at_the_image_size(client):
    images = [class_image(1, 201), _wide(2)]

    response = client.post("/v1/models/tiny:explain", json={"instances": [_b64(i) for i in images]})
    predicted = client.post("/v1/models/tiny:predict", json={"instances": [_b64(i) for i in images]}).json()

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1"
    first, second = body["explanations"]
    assert set(first) == {
        "label", "index", "score", "top_k", "explained_label", "explained_index", "method",
        "map_png", "map_shape", "overlay_png",
    }  # fmt: skip
    for explained, prediction in zip(body["explanations"], predicted["predictions"], strict=True):
        assert explained["label"] == prediction["label"]  # the eager model agrees with the served one
        assert explained["score"] == pytest.approx(prediction["score"], abs=1e-3)
        assert explained["explained_label"] == explained["label"] and explained["method"] == "gradcam"
    heat = _png(second["map_png"])
    assert heat.mode == "L" and heat.size == (60, 40) and second["map_shape"] == [40, 60]
    assert _png(second["overlay_png"]).mode == "RGB" and _png(second["overlay_png"]).size == (60, 40)
    assert np.asarray(heat).max() > 0


def test_label_parameter_explains_that_class_and_multipart_takes_it_as_a_field(client):
    image = class_image(0, 202)
    json_answer = client.post(
        "/v1/models/tiny:explain",
        json={"instances": [_b64(image)], "parameters": {"label": "class_2", "top_k": 1}},
    ).json()["explanations"][0]
    form_answer = client.post(
        "/v1/models/tiny:explain", files={"file": ("a.png", image, "image/png")}, data={"label": "class_2"}
    ).json()["explanations"][0]

    assert json_answer["explained_label"] == "class_2" and json_answer["explained_index"] == 2
    assert len(json_answer["top_k"]) == 1
    assert form_answer["explained_label"] == "class_2"
    assert form_answer["map_png"] == json_answer["map_png"]


def test_unknown_label_and_method_are_refused_with_what_the_model_offers(client):
    image = _b64(class_image(0, 203))

    unknown_label = client.post(
        "/v1/models/tiny:explain", json={"instances": [image], "parameters": {"label": "cat"}}
    )
    rollout = client.post(
        "/v1/models/tiny:explain", json={"instances": [image], "parameters": {"method": "rollout"}}
    )
    not_an_image = client.post("/v1/models/tiny:explain", json={"instances": [_b64(b"nope")]})

    assert unknown_label.status_code == 400
    assert "'cat' is not a class of this model; its classes: class_0" in unknown_label.json()["error"]
    assert rollout.status_code == 400
    assert (
        rollout.json()["error"]
        == "method 'rollout': this model explains with gradcam (rollout needs a vision transformer)"
    )
    assert not_an_image.status_code == 400 and not_an_image.json()["error"].startswith("image 0: ")
    assert "Traceback" not in not_an_image.text


def test_explanations_count_in_their_own_metrics_not_the_predictions(client):
    image = _b64(class_image(1, 204))
    assert client.post("/v1/models/tiny:explain", json={"instances": [image, image]}).status_code == 200
    assert (
        client.post(
            "/v1/models/tiny:explain", json={"instances": [image], "parameters": {"label": "x"}}
        ).status_code
        == 400
    )

    metrics = client.get("/metrics").text

    assert re.search(
        r'imgcls_explain_duration_seconds_count\{method="gradcam",model="tiny",version="1"\} 1\.0', metrics
    )
    assert re.search(r'imgcls_explain_requests_total\{code="200",model="tiny",version="1"\} 1\.0', metrics)
    assert re.search(
        r'imgcls_explain_rejected_total\{model="tiny",reason="bad_input",version="1"\} 1\.0', metrics
    )
    assert 'imgcls_explain_queue_depth{model="tiny",version="1"} 0.0' in metrics
    assert "imgcls_images_total{" not in metrics  # nothing went through the prediction batcher
    assert "imgcls_requests_total{" not in metrics


def test_a_bundle_without_eager_weights_answers_501_with_how_to_re_export(
    model_repo: Path, settings: Settings
):
    bundle = model_repo / "tiny" / "1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["explain"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/v1/models/tiny:explain", json={"instances": [_b64(class_image(0, 205))]})
        status = client.get("/v1/models/tiny").json()["versions"][0]["explain"]
        predicted = client.post("/v1/models/tiny:predict", json={"instances": [_b64(class_image(0, 205))]})

    assert response.status_code == 501
    assert "carries no eager weights for explanations" in response.json()["error"]
    assert "re-export it with imgcls export" in response.json()["error"]
    assert status["available"] is False
    assert predicted.status_code == 200  # predictions are unaffected


def test_explanations_switched_off_answer_501_and_predictions_go_on(settings: Settings):
    off = settings.model_copy(update={"explain": ExplainSettings(enabled=False)})
    with TestClient(create_app(off)) as client:
        wait_ready(client)
        response = client.post("/v1/models/tiny:explain", json={"instances": [_b64(class_image(0, 206))]})

    assert response.status_code == 501 and "switched off" in response.json()["error"]


def test_a_versioned_explain_route_and_an_unknown_model(client, model_repo: Path):
    image = _b64(class_image(2, 207))

    assert client.post("/v1/models/tiny/versions/1:explain", json={"instances": [image]}).status_code == 200
    missing = client.post("/v1/models/nope:explain", json={"instances": [image]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_nothing_of_a_request_stays_on_the_explainer_after_it_is_answered(client):
    image = _b64(class_image(1, 208))
    for label in ("class_0", "class_1", None):
        parameters = {"label": label} if label else {}
        assert (
            client.post(
                "/v1/models/tiny:explain", json={"instances": [image], "parameters": parameters}
            ).status_code
            == 200
        )

    worker = client.app.state.registry.get("tiny")
    explainer = worker.explanations._explainers.get()
    worker.explanations._explainers.put(explainer)
    modules = list(explainer.model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules)
    assert all(p.grad is None for p in explainer.model.parameters())
    assert worker.explanations.admission.pending == 0


@pytest.mark.cuda
def test_on_cuda_the_explainer_runs_on_the_gpu_and_answers_like_the_cpu(client, settings: Settings):
    image = _b64(class_image(1, 209))
    on_cpu = client.post("/v1/models/tiny:explain", json={"instances": [image]}).json()["explanations"][0]

    with TestClient(
        create_app(settings.model_copy(update={"device": "cuda", "runtime": "torchscript"}))
    ) as gpu:
        wait_ready(gpu)
        on_gpu = gpu.post("/v1/models/tiny:explain", json={"instances": [image]}).json()["explanations"][0]
        explainer = gpu.app.state.registry.get("tiny").explanations._explainers.get()

    assert next(explainer.model.parameters()).is_cuda
    assert on_gpu["label"] == on_cpu["label"] and on_gpu["map_shape"] == on_cpu["map_shape"]
    cpu_map = np.asarray(_png(on_cpu["map_png"]), dtype=float)
    gpu_map = np.asarray(_png(on_gpu["map_png"]), dtype=float)
    assert np.abs(cpu_map - gpu_map).max() <= 3  # of 255: float differences between the devices
