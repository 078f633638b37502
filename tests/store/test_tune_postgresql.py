"""``imgcls tune`` workers sharing one study in a real PostgreSQL server, as the Kubernetes search job
runs them: the URL as CloudNativePG's secret gives it (``postgresql://``), no trial run twice."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.integration.test_tune import _trials, study  # noqa: F401  (study is a fixture)
from tests.processes import run_imgcls_together

pytestmark = pytest.mark.slow


@pytest.fixture
def tune_database_url(postgres_url: str) -> str:
    """A database of its own on the session's server: the feedback store's tests keep an Alembic
    version table in the shared one, which Optuna would take for its own (and refuse)."""
    import sqlalchemy

    name = f"tune_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def test_the_feedback_store_s_database_is_refused_with_the_reason(study, fresh_postgres_url):  # noqa: F811
    from service.feedback.store import open_store

    open_store(fresh_postgres_url).close()  # the feedback tables and their Alembic version
    root, args = study
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", *args, "--trials", "1", "--storage", fresh_postgres_url],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "another application's Alembic version table" in done.stderr and "Traceback" not in done.stderr


def test_two_workers_share_a_postgresql_study_and_never_run_a_trial_twice(study, tune_database_url):  # noqa: F811
    postgres_url = tune_database_url
    root, args = study
    name = "tiny-pg"
    args = [*args[: args.index("--study")], "--study", name, "--out", str(root / "runs" / "tiny")]
    logs = run_imgcls_together([*args, "--trials", "4", "--storage", postgres_url], root, 2)
    assert "study.db" not in {p.name for p in (root / "runs" / "tiny").iterdir()}  # the server holds it
    trials = _trials(root)
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    ran = [{line.split(":")[0] for line in log.splitlines() if line.startswith("trial ")} for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
