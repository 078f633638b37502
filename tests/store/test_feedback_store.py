"""The feedback store against embedded SQLite and a real PostgreSQL server: migrations, images once per
content, concurrent writers losing nothing, the per-model cap, and the export ``imgcls train`` reads."""

from __future__ import annotations

import csv
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy

from imgcls.cli import main
from service.feedback.export import export_folder
from service.feedback.store import NewFeedback, StoreFullError, StoreUnavailableError, open_store
from tests.api.conftest import class_image


def _flag(image: bytes, correct: str | None = "class_0", model: str = "tiny", **extra) -> NewFeedback:
    return NewFeedback(
        model=model, version=1, image=image, image_format="PNG", correct_label=correct, **extra
    )


def test_the_schema_is_alembics_newest_and_reopening_changes_nothing(store_url):
    first = open_store(store_url)
    first.add(_flag(b"one"))
    first.close()

    again = open_store(store_url)
    records = again.records()
    with again.engine.connect() as connection:
        revision = connection.execute(sqlalchemy.text("select version_num from alembic_version")).scalar()
    again.close()

    assert revision == "0001"
    assert len(records) == 1


def test_an_image_is_stored_once_and_counted_per_flag(store_url):
    store = open_store(store_url)
    stored = [store.add(_flag(b"same image", correct)) for correct in ("class_0", "class_1", None)]
    other = store.add(_flag(b"another image", scores={"class_0": 0.7}, note="blurry", request_id="abc-1"))
    records = store.records()
    store.close()

    assert [s.flag_count for s in stored] == [1, 2, 3]
    assert {s.image_sha256 for s in stored} == {hashlib.sha256(b"same image").hexdigest()}
    assert other.flag_count == 1
    assert [r.correct_label for r, _ in records] == ["class_0", "class_1", None, "class_0"]
    last, image = records[-1]
    assert (last.note, last.request_id, last.scores, image.size_bytes) == (
        "blurry",
        "abc-1",
        '{"class_0": 0.7}',
        13,
    )
    assert last.created_at.tzinfo is not None


def test_concurrent_writers_lose_nothing(store_url):
    store = open_store(store_url)
    images = [f"image {i % 10}".encode() for i in range(200)]  # 10 distinct, each flagged 20 times at once
    start = threading.Barrier(16)

    def flag(chunk: list[bytes]) -> int:
        start.wait()
        return sum(store.add(_flag(image)).id > 0 for image in chunk)

    with ThreadPoolExecutor(16) as pool:
        added = sum(pool.map(flag, [images[i::16] for i in range(16)]))
    with store.engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("select count(*) from feedback")).scalar()
        images_kept, flags = connection.execute(
            sqlalchemy.text("select count(*), sum(flag_count) from feedback_images")
        ).one()
    store.close()

    assert added == rows == 200
    assert (images_kept, flags) == (10, 200)


def test_the_cap_counts_each_models_distinct_images(store_url):
    store = open_store(store_url, max_bytes_per_model=10)
    store.add(_flag(b"123456"))
    store.add(_flag(b"123456"))  # already stored: costs nothing
    with pytest.raises(StoreFullError, match="cap of 10"):
        store.add(_flag(b"abcdef"))
    store.add(_flag(b"abcdef", model="other"))  # another model's share
    store.add(_flag(b"123456", model="other"))  # known image: stored once, shared
    store.close()


def test_export_writes_a_folder_the_trainer_reads_and_a_csv_with_provenance(store_url, tmp_path):
    from trainer.data import _read_imagefolder

    store = open_store(store_url)
    cats = [class_image(0, 800 + i) for i in range(2)]
    for image in cats:
        store.add(_flag(image, "class_0", predicted_label="class_1", note="bar on top"))
    store.add(_flag(cats[0], "class_0"))  # the same image again, same label: one file
    store.add(_flag(class_image(1, 810), "class_1"))
    store.add(_flag(class_image(2, 811), None))
    store.add(_flag(class_image(2, 812), "class_2", model="elsewhere"))
    out = tmp_path / "flags"

    summary = export_folder(store, out, model="tiny")
    store.close()

    assert (summary.records, summary.images) == (5, 4)
    assert summary.labels == {"class_0": 3, "class_1": 1, "_unlabelled": 1}
    assert sorted(p.relative_to(out).parts[0] for p in out.rglob("*.png")) == [
        "_unlabelled", "class_0", "class_0", "class_1",
    ]  # fmt: skip
    names, samples = _read_imagefolder(out)
    assert names == ["class_0", "class_1"] and len(samples) == 3  # _unlabelled is not a class
    with (out / "feedback.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and all((out / row["path"]).is_file() for row in rows)
    assert rows[0]["predicted_label"] == "class_1" and rows[0]["note"] == "bar on top"
    assert rows[0]["flag_count"] == "2" and rows[4]["label"] == ""


def test_feedback_list_and_export_from_the_command_line(store_url, tmp_path, capsys):
    store = open_store(store_url)
    store.add(_flag(class_image(0, 820), "class_2", predicted_label="class_0", note="wrong band"))
    store.add(_flag(class_image(1, 821), None))
    store.close()

    assert main(["feedback", "list", "--db", store_url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert main(["feedback", "export", "--db", store_url, "--out", str(tmp_path / "out")]) == 0
    exported = capsys.readouterr().out

    assert len(listed) == 2
    assert "tiny v1  class_0 -> class_2" in listed[0] and "note: wrong band" in listed[0]
    assert "-> (_unlabelled: none of these)" in listed[1]
    assert "2 flags, 2 image files" in exported and "_unlabelled: 1, class_2: 1" in exported
    assert main(["feedback", "list", "--db", store_url, "--model", "nope"]) == 0
    assert capsys.readouterr().out.strip() == "no flags for model nope"


def test_an_unreachable_database_is_an_error_that_hides_the_password(capsys):
    with pytest.raises(StoreUnavailableError) as raised:
        open_store("postgresql://me:hunter2@127.0.0.1:9/db")
    assert "hunter2" not in str(raised.value) and "127.0.0.1:9" in str(raised.value)

    assert main(["feedback", "list", "--db", "postgresql://me:hunter2@127.0.0.1:9/db"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: feedback database postgresql+psycopg://me:***@127.0.0.1:9/db") or "***" in err
    )
    assert "hunter2" not in err and "Traceback" not in err
    assert main(["feedback", "list", "--db", "not a url"]) == 2
    assert "is not a URL" in capsys.readouterr().err


def test_the_service_stores_concurrent_flags_in_postgresql(fresh_postgres_url, settings):
    import base64

    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.api.conftest import wait_ready

    configured = settings.model_copy(update={"feedback_db_url": fresh_postgres_url})
    images = [base64.b64encode(class_image(i % 3, 900 + i)).decode() for i in range(30)]
    with TestClient(create_app(configured)) as client:
        wait_ready(client)

        def flag(image: str) -> int:
            body = {"b64": image, "correct_label": "class_1", "note": "from a test"}
            return client.post("/v1/models/tiny/feedback", json=body).status_code

        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(flag, images))

    assert codes == [201] * 30
    engine = sqlalchemy.create_engine(fresh_postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("select count(*) from feedback")).scalar() == 30
        assert connection.execute(sqlalchemy.text("select count(*) from feedback_images")).scalar() == 30
    engine.dispose()


@pytest.fixture
def settings(tiny_bundle, tmp_path: Path):
    import shutil

    from service.settings import BatchingSettings, Settings

    bundle, _ = tiny_bundle
    shutil.copytree(bundle, tmp_path / "models" / "tiny" / "1")
    return Settings(
        model_repo=tmp_path / "models",
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=64),
        decode_threads=2,
        intra_op_threads=1,
    )
