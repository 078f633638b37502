"""A real Prometheus (Debian's package) scraping a live imgcls, and promtool on the shipped rules.

`.ci/run` installs `prometheus`; on a machine without it these tests skip with the reason, except
under CI (CI=true), where a missing binary is a failure.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import class_image
from tests.conftest import require_tool

pytestmark = pytest.mark.slow  # a real Prometheus scraping a real server

RULES_DIR = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    promtool = require_tool("promtool", "apt-get install prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "imgcls-rules.yaml"], cwd=RULES_DIR, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "imgcls-rules.test.yaml"], cwd=RULES_DIR, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_prometheus_scrapes_imgcls_and_the_rules_compute_latency_and_batch_size(server_url, tmp_path):
    prometheus = require_tool("prometheus", "apt-get install prometheus")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES_DIR / "imgcls-rules.yaml"}
scrape_configs:
  - job_name: imgcls
    static_configs:
      - targets: ["{server_url}"]
"""
    )
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict]:
        answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    stop = threading.Event()

    def traffic() -> None:
        body = {
            "instances": [{"b64": base64.b64encode(class_image(i % 3, 1300 + i)).decode()} for i in range(3)]
        }
        with httpx.Client(base_url=f"http://{server_url}", timeout=10) as http:
            for _ in range(3000):  # bounded; stopped by the test well before
                if stop.is_set():
                    return
                http.post("/v1/models/tiny:predict", json=body)
                time.sleep(0.02)

    driver = threading.Thread(target=traffic)
    try:
        deadline = time.monotonic() + 30
        while True:  # Prometheus up?
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(
                    f"prometheus did not start: {process.stderr.read() if process.poll() is not None else ''}"
                )
            time.sleep(0.2)
        driver.start()
        deadline = time.monotonic() + 60
        p99 = batch = []
        while time.monotonic() < deadline:
            p99 = query('imgcls:request_duration_seconds:p99_5m{model="tiny",version="1"}')
            batch = query('imgcls:batch_size:avg5m{model="tiny",version="1"}')
            if p99 and batch and float(p99[0]["value"][1]) > 0:
                break
            time.sleep(1)
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
    finally:
        stop.set()
        if driver.is_alive():
            driver.join(timeout=15)
        process.terminate()
        process.communicate(timeout=30)
    assert targets and targets[0]["health"] == "up"
    assert p99, "the p99 recording rule produced no series"
    assert 0 < float(p99[0]["value"][1]) < 5
    assert batch and float(batch[0]["value"][1]) >= 1


def test_the_dashboard_only_queries_series_that_exist():
    """Every metric name in grafana-dashboard.json is a recording rule or a metric imgcls exports."""
    import json
    import re

    import yaml

    dashboard = json.loads((RULES_DIR / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((RULES_DIR / "imgcls-rules.yaml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exported = {
        "imgcls_images_total", "imgcls_batch_size_bucket", "imgcls_queue_depth", "imgcls_queue_capacity",
        "imgcls_rejected_total", "imgcls_model_ready",
        # GPU gauges exist only where NVML finds a GPU; the panel stays empty elsewhere
        "imgcls_gpu_utilization_ratio", "imgcls_gpu_memory_used_bytes", "imgcls_gpu_memory_total_bytes",
    }  # fmt: skip
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b(imgcls[:_][a-z0-9_:]+)", target["expr"]))
    assert names, "no queries found"
    assert names <= recorded | exported, names - recorded - exported
