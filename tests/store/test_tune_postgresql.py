"""``imgcls tune`` workers sharing one study in a real PostgreSQL server, as the Kubernetes search job
runs them: the URL as CloudNativePG's secret gives it (``postgresql://``), no trial run twice."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_tune import _trials, study  # noqa: F401  (study is a fixture)
from tests.processes import run_imgcls_together

pytestmark = pytest.mark.slow


def test_two_workers_share_a_postgresql_study_and_never_run_a_trial_twice(study, postgres_url):  # noqa: F811
    root, args = study
    name = f"tiny-{uuid.uuid4().hex[:8]}"  # the session's server outlives one test
    args = [*args[: args.index("--study")], "--study", name, "--out", str(root / "runs" / "tiny")]
    logs = run_imgcls_together([*args, "--trials", "4", "--storage", postgres_url], root, 2)
    assert "study.db" not in {p.name for p in (root / "runs" / "tiny").iterdir()}  # the server holds it
    trials = _trials(root)
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    ran = [{line.split(":")[0] for line in log.splitlines() if line.startswith("trial ")} for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
