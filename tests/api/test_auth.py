from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from imgcls.errors import ConfigError
from service.app import create_app
from service.auth import load_api_keys
from tests.api.conftest import class_image, wait_ready

KEY = "k" * 32


def _predict(client: TestClient, **headers):
    body = {"instances": [{"b64": base64.b64encode(class_image(0)).decode()}]}
    return client.post("/v1/models/tiny:predict", json=body, headers=headers)


def test_with_keys_configured_prediction_needs_a_valid_bearer_key(settings):
    with TestClient(create_app(settings.model_copy(update={"api_keys": [KEY]}))) as client:
        wait_ready(client)
        missing = _predict(client)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in missing.json()["error"]
        assert _predict(client, Authorization="Bearer " + "x" * 32).status_code == 401
        assert _predict(client, Authorization=f"Basic {KEY}").status_code == 401
        assert _predict(client, Authorization=f"Bearer {KEY}").status_code == 200
        assert client.get("/v2/models/tiny").status_code == 401
        assert client.get("/healthz").status_code == 200  # probes need no secret by default
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'imgcls_rejected_total{model="",reason="unauthorized",version=""} 4.0' in metrics.text


def test_health_and_metrics_can_be_closed_too(settings, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# mounted secret\n{KEY}\n\n")
    locked = settings.model_copy(
        update={"api_keys_file": keys_file, "auth_health": True, "auth_metrics": True}
    )
    with TestClient(create_app(locked)) as client:
        assert client.get("/healthz").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_no_keys_means_no_auth(client):
    assert _predict(client).status_code == 200


def test_short_keys_and_unreadable_files_are_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        load_api_keys(["short"], None)
    with pytest.raises(ConfigError, match="cannot read the API keys file"):
        load_api_keys([], tmp_path / "missing")


def test_the_page_loads_without_a_key_but_explain_and_feedback_need_one(settings):
    image = base64.b64encode(class_image(1)).decode()
    with TestClient(create_app(settings.model_copy(update={"api_keys": [KEY]}))) as client:
        wait_ready(client)
        pages = [client.get(path).status_code for path in ("/", "/ui", "/ui/", "/ui/app.js", "/ui/app.css")]
        explain = client.post("/v1/models/tiny:explain", json={"instances": [{"b64": image}]})
        flag = client.post("/v1/models/tiny/feedback", json={"b64": image, "correct_label": None})
        listing = client.get("/v1/models")
        keyed = client.post(
            "/v1/models/tiny/feedback",
            json={"b64": image, "correct_label": None},
            headers={"Authorization": f"Bearer {KEY}"},
        )

    assert pages == [200] * 5
    assert (explain.status_code, flag.status_code, listing.status_code) == (401, 401, 401)
    assert keyed.status_code == 201
