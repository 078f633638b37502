"""scripts/gpu-check.sh runs through without a GPU, each step skipping with the reason, and its output
fits what comes back from the GPU machine (docs/performance.md, "Running the GPU check")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs scripts/gpu-check.sh

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_gpu_check_runs_through_without_a_gpu_and_its_output_fits_what_comes_back(tmp_path):
    # A 10 s budget leaves no time for any step: this checks the plumbing, not the steps (docs/performance.md
    # gives the full dry run).
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "gpu-check.sh"), "--budget-s", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    for step in ("wheels", "env", "tests", "export", "runtimes", "pipeline"):
        assert re.search(rf"^\| {step} \| skipped: ", summary, re.MULTILINE), summary
    assert "ONNX Runtime CUDA: " in summary
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)


def test_gpu_check_without_out_stops_before_writing_anything(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "gpu-check.sh")], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "set OUT" in result.stderr
    assert list(tmp_path.iterdir()) == []
