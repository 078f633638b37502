"""Flagging a mistake through the real HTTP stack into the embedded SQLite store: what is kept, the
refusals that say why, and a store that is down or full never touching predictions."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import class_image, wait_ready


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "feedback"


@pytest.fixture
def flag_client(settings: Settings, store_dir: Path):
    configured = settings.model_copy(update={"feedback_dir": store_dir})
    with TestClient(create_app(configured)) as client:
        wait_ready(client)
        # the store opens in the background; the tests read its tables directly
        deadline = time.monotonic() + 30
        while client.app.state.feedback._store is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield client


MISSING = object()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rows(store_dir: Path, query: str) -> list[tuple]:
    with sqlite3.connect(store_dir / "feedback.db") as connection:
        return connection.execute(query).fetchall()


def test_a_flag_is_stored_with_its_provenance_and_the_image_once_per_content(flag_client, store_dir):
    image = class_image(1, 500)
    predicted = flag_client.post("/v1/models/tiny:predict", json={"instances": [{"b64": _b64(image)}]})
    request_id = predicted.headers["x-request-id"]
    top_k = predicted.json()["predictions"][0]["top_k"]

    first = flag_client.post(
        "/v1/models/tiny/feedback",
        json={
            "b64": _b64(image),
            "correct_label": "class_2",
            "predicted_label": "class_1",
            "scores": top_k,
            "note": "the bar is at the bottom",
            "request_id": request_id,
        },
    )
    second = flag_client.post(
        "/v1/models/tiny/versions/1/feedback",
        files={"file": ("x.png", image, "image/png")},
        data={"correct_label": ""},  # none of these
    )

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    digest = hashlib.sha256(image).hexdigest()
    assert first.json() == {"id": 1, "image_sha256": digest, "flag_count": 1}
    assert second.json() == {"id": 2, "image_sha256": digest, "flag_count": 2}
    assert _rows(store_dir, "select sha256, size_bytes, image_format, flag_count from feedback_images") == [
        (digest, len(image), "PNG", 2)
    ]
    rows = _rows(
        store_dir,
        "select model, version, predicted_label, correct_label, note, request_id, scores from feedback order by id",
    )
    assert rows[0][:6] == ("tiny", 1, "class_1", "class_2", "the bar is at the bottom", request_id)
    assert set(eval(rows[0][6].replace("null", "None"))) == {item["label"] for item in top_k}
    assert rows[1][:6] == ("tiny", 1, None, None, None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"b64": MISSING, "correct_label": "class_0"}, '"b64": the flagged image'),
        ({"correct_label": MISSING}, '"correct_label" is required'),
        ({"b64": "!!", "correct_label": "class_0"}, "not valid base64"),
        (
            {"correct_label": "cat"},
            "\"correct_label\" 'cat' is not a label of this model; its labels: class_0",
        ),
        ({"correct_label": "class_0", "predicted_label": "dog"}, "\"predicted_label\" 'dog' is not a label"),
        ({"correct_label": "class_0", "scores": {"class_0": "high"}}, "must be a finite number"),
        ({"correct_label": "class_0", "note": "x" * 2001}, "at most 2000 characters"),
        ({"correct_label": "class_0", "request_id": "<script>"}, "X-Request-ID"),
    ],
)
def test_a_flag_that_cannot_be_used_is_refused_with_what_to_fix(flag_client, store_dir, body, message):
    body = {"b64": _b64(class_image(0, 501)), "correct_label": "class_0", **body}
    body = {key: value for key, value in body.items() if value is not MISSING}

    response = flag_client.post("/v1/models/tiny/feedback", json=body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert _rows(store_dir, "select count(*) from feedback") == [(0,)]


def test_an_undecodable_image_and_an_unknown_model_are_refused(flag_client):
    not_an_image = flag_client.post(
        "/v1/models/tiny/feedback", json={"b64": _b64(b"GIF89a..."), "correct_label": None}
    )
    unknown = flag_client.post(
        "/v1/models/nope/feedback", json={"b64": _b64(class_image(0, 502)), "correct_label": None}
    )

    assert not_an_image.status_code == 400 and "image" in not_an_image.json()["error"]
    assert unknown.status_code == 404


def test_concurrent_flags_lose_nothing(flag_client, store_dir):
    images = [class_image(i % 3, 600 + i % 7) for i in range(40)]

    def flag(image: bytes) -> int:
        return flag_client.post(
            "/v1/models/tiny/feedback", json={"b64": _b64(image), "correct_label": "class_0"}
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(flag, images))

    assert codes == [201] * 40
    assert _rows(store_dir, "select count(*) from feedback") == [(40,)]
    distinct = {hashlib.sha256(i).hexdigest() for i in images}
    assert _rows(store_dir, "select count(*), sum(flag_count) from feedback_images") == [(len(distinct), 40)]


def test_the_per_model_cap_answers_507_and_a_known_image_still_counts(settings, store_dir):
    first, second = class_image(0, 700), class_image(1, 701)
    capped = settings.model_copy(
        update={"feedback_dir": store_dir, "feedback_max_bytes_per_model": len(first) + len(second) - 1}
    )
    with TestClient(create_app(capped)) as client:
        wait_ready(client)
        codes = [
            client.post(
                "/v1/models/tiny/feedback", json={"b64": _b64(image), "correct_label": None}
            ).status_code
            for image in (first, second, first)
        ]
        full = client.post("/v1/models/tiny/feedback", json={"b64": _b64(second), "correct_label": None})
        metrics = client.get("/metrics").text

    assert codes == [201, 507, 201]
    assert full.status_code == 507 and "IMGCLS_FEEDBACK_MAX_BYTES_PER_MODEL" in full.json()["error"]
    assert re.search(r'imgcls_feedback_total\{model="tiny",result="stored",version="1"\} 2\.0', metrics)
    assert re.search(r'imgcls_feedback_total\{model="tiny",result="full",version="1"\} 2\.0', metrics)


def test_an_unreachable_store_answers_503_and_predictions_go_on(settings):
    down = settings.model_copy(update={"feedback_db_url": "postgresql://imgcls@127.0.0.1:9/nowhere"})
    with TestClient(create_app(down)) as client:
        wait_ready(client)
        image = _b64(class_image(2, 702))
        flagged = client.post("/v1/models/tiny/feedback", json={"b64": image, "correct_label": None})
        predicted = client.post("/v1/models/tiny:predict", json={"instances": [{"b64": image}]})
        metrics = client.get("/metrics").text

    assert flagged.status_code == 503 and flagged.headers["retry-after"]
    assert "the feedback store is unavailable" in flagged.json()["error"]
    assert "nowhere" in flagged.json()["error"] and "Traceback" not in flagged.text
    assert predicted.status_code == 200
    assert re.search(r'imgcls_feedback_total\{model="tiny",result="unavailable",version="1"\} 1\.0', metrics)


def test_a_password_in_the_database_url_never_reaches_a_client(settings):
    down = settings.model_copy(update={"feedback_db_url": "postgresql://imgcls:s3cret-pw@127.0.0.1:9/db"})
    with TestClient(create_app(down)) as client:
        wait_ready(client)
        flagged = client.post(
            "/v1/models/tiny/feedback", json={"b64": _b64(class_image(2, 703)), "correct_label": None}
        )

    assert flagged.status_code == 503 and "s3cret-pw" not in flagged.text
