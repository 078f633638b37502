"""The contracts between the pieces: the manifests against the service they run (a live server
configured from the rendered ConfigMap), the autoscalers against the metrics the service really
exports, and the HPA's target against the benchmark it was derived from."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import class_image
from tests.conftest import require_tool
from tests.deploy.conftest import (
    API_KEY,
    DEPLOYABLE,
    EVERY_SERVER,
    K8S,
    ROOT,
    config_env,
    find,
    server_container,
)

WITH_HPA = ["overlays/cpu", "overlays/gpu", "examples/model-from-object-storage"]
WITH_KEDA = ["overlays/keda-cpu", "overlays/keda-gpu"]
ADAPTER = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
# The benchmark the HPA target was derived from (docs/deployment.md, Capacity planning).
BENCHMARK = ROOT / "benchmarks" / "results" / "2026-11-23-vm-compare-mobilenet_v3_small" / "results.json"
HEADROOM = 0.7  # scale out at 70 % of the load that met the latency target


def _pods_metric(hpa: dict) -> dict:
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return pods


def _cpu_target(hpa: dict) -> int:
    (cpu,) = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    return cpu["target"]["averageUtilization"]


def _series_name(series_query: str) -> str:
    return re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", series_query).group(1)


def _adapter_output_name(rule: dict, series: str) -> str:
    """What prometheus-adapter names the metric: name.matches applied to the series, replaced by name.as
    (Go's ${1} is Python's \\g<1>)."""
    pattern = rule["name"]["matches"]
    assert re.search(pattern, series), f"{pattern} does not match {series}"
    return re.sub(pattern, re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule["name"]["as"]), series)


def _scrape(url: str) -> dict[str, list[dict]]:
    """sample name -> the label sets it has, from a live /metrics."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


def _inner_selection(query: str) -> tuple[str, str, str]:
    """(function, series, range) of the `fn(series{...}[range])` at the heart of an autoscaling query."""
    found = re.search(r"(\w+)\(\s*([a-zA-Z_:][\w:]*|<<\.Series>>)\{[^}]*\}\[(\w+)\]\)", query)
    assert found, f"no fn(series{{...}}[range]) in {query}"
    return found.groups()


def _predict(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"instances": [{"b64": base64.b64encode(class_image(1, 4242)).decode()}]}
    return httpx.post(f"{url}/v1/models/tiny:predict", json=body, headers=headers, timeout=30)


# --- the manifests against the live service ---------------------------------------------------------


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_every_probe_targets_a_route_that_answers_200_on_the_serving_port_without_a_key(
    rendered, live, kustomization
):
    serving, _ = live
    docs = rendered[kustomization]
    container = server_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {
        "startupProbe": "/v2/health/ready",
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }
    for probe, path in expected.items():
        action = container[probe]["httpGet"]
        assert action["path"] == path, probe
        assert ports[action["port"]] == int(config_env(docs)["IMGCLS_PORT"]), probe
        # kubelet sends no Authorization header; with API keys configured the probe must still pass
        assert httpx.get(f"{serving}{path}", timeout=10).status_code == 200, probe


def test_predictions_need_the_api_key_mounted_from_the_secret(live):
    serving, _ = live
    assert _predict(serving, {}).status_code == 401
    answer = _predict(serving, {"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200, answer.text


def test_metrics_are_served_on_the_metrics_port_and_not_on_the_serving_port(live):
    """The NetworkPolicy admits only the monitoring namespace to the metrics port: that is only
    protection if the serving port does not answer /metrics too."""
    serving, metrics = live
    assert httpx.get(f"{serving}/metrics", timeout=10).status_code == 404
    assert "imgcls_inflight_requests" in _scrape(metrics)


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_service_monitor_reaches_the_metrics_port_the_settings_open(rendered, kustomization):
    docs = rendered[kustomization]
    endpoint = find(docs, "ServiceMonitor", "imgcls")["spec"]["endpoints"][0]
    service_port = next(
        p for p in find(docs, "Service", "imgcls")["spec"]["ports"] if p["name"] == endpoint["port"]
    )
    container_ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert container_ports[service_port["targetPort"]] == int(config_env(docs)["IMGCLS_METRICS_PORT"])


def test_the_hpa_metric_is_what_prometheus_adapter_makes_of_a_series_the_service_exports(rendered, live):
    serving, metrics = live
    assert _predict(serving, {"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    exported = _scrape(metrics)
    produced = set()
    for rule in ADAPTER["rules"]["custom"]:
        series = _series_name(rule["seriesQuery"])
        assert series in exported, f"the adapter reads {series}, which the service does not export"
        # the labels the adapter maps to Kubernetes objects come from Prometheus's target labels, so
        # the service must not set them itself
        assert not {"namespace", "pod"} & {k for labels in exported[series] for k in labels}
        assert {"namespace", "pod"} <= rule["resources"]["overrides"].keys()
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        produced.add(_adapter_output_name(rule, series))
    for name in WITH_HPA:
        hpa = find(rendered[name], "HorizontalPodAutoscaler", "imgcls")
        pods = _pods_metric(hpa)
        assert pods["metric"]["name"] in produced
        assert pods["target"]["type"] == "AverageValue"


def test_keda_asks_prometheus_the_adapters_question_with_the_hpas_targets(rendered):
    (rule,) = ADAPTER["rules"]["custom"]
    adapter = _inner_selection(rule["metricsQuery"])
    series = _series_name(rule["seriesQuery"])
    hpa = find(rendered["overlays/cpu"], "HorizontalPodAutoscaler", "imgcls")
    for name in WITH_KEDA:
        docs = rendered[name]
        scaled = find(docs, "ScaledObject", "imgcls")["spec"]
        (prometheus,) = [t for t in scaled["triggers"] if t["type"] == "prometheus"]
        (cpu,) = [t for t in scaled["triggers"] if t["type"] == "cpu"]
        query = prometheus["metadata"]["query"]
        function, keda_series, window = _inner_selection(query)
        assert (function, keda_series, window) == (adapter[0], series, adapter[2])
        # summed over this Deployment's pods (the Service the ServiceMonitor scrapes), divided by KEDA
        # by the replica count: the same per-pod average the HPA's Pods metric is
        assert query.startswith("sum(") and prometheus.get("metricType", "AverageValue") == "AverageValue"
        namespace = find(docs, "Deployment", "imgcls")["metadata"]["namespace"]
        assert f'namespace="{namespace}"' in query
        assert f'service="{find(docs, "Service", "imgcls")["metadata"]["name"]}"' in query
        assert float(prometheus["metadata"]["threshold"]) == float(
            _pods_metric(hpa)["target"]["averageValue"]
        )
        assert int(cpu["metadata"]["value"]) == _cpu_target(hpa)
        assert scaled["minReplicaCount"] == hpa["spec"]["minReplicas"]
        assert scaled["maxReplicaCount"] == hpa["spec"]["maxReplicas"]
        assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
        server = f"{ADAPTER['prometheus']['url']}:{ADAPTER['prometheus']['port']}"
        assert prometheus["metadata"]["serverAddress"] == server


def test_the_adapter_and_keda_queries_are_valid_promql(rendered, tmp_path):
    promtool = require_tool("promtool", "apt-get install prometheus")
    (rule,) = ADAPTER["rules"]["custom"]
    adapter_query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", _series_name(rule["seriesQuery"]))
        .replace("<<.LabelMatchers>>", 'namespace="imgcls",pod=~"imgcls-a|imgcls-b"')
        .replace("<<.GroupBy>>", "pod")
    )
    (trigger,) = [
        t for t in find(rendered["overlays/keda-cpu"], "ScaledObject", "imgcls")["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]  # fmt: skip
    rules = {
        "groups": [
            {
                "name": "autoscaling-queries",
                "rules": [
                    {"record": "adapter:query", "expr": adapter_query},
                    {"record": "keda:query", "expr": trigger["metadata"]["query"]},
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_hpa_target_is_70_percent_of_the_requests_in_flight_measured_at_the_latency_target(rendered):
    """Little's law on the recorded benchmark: in flight = throughput x mean latency (docs/deployment.md, Capacity planning)."""
    rows = json.loads(BENCHMARK.read_text())["rows"]
    (measured,) = [r for r in rows if r["server"] == "imgcls" and r["concurrency"] == 32]
    in_flight = measured["requests_per_s"] * measured["mean_ms"] / 1000
    assert math.isclose(in_flight, measured["concurrency"], rel_tol=0.02)  # a closed loop: all 32 busy
    for name in WITH_HPA:
        target = float(
            _pods_metric(find(rendered[name], "HorizontalPodAutoscaler", "imgcls"))["target"]["averageValue"]
        )
        assert target == round(HEADROOM * in_flight)
        assert _cpu_target(find(rendered[name], "HorizontalPodAutoscaler", "imgcls")) == round(HEADROOM * 100)


# --- the manifests against the service's settings ------------------------------------------------


@pytest.mark.parametrize("kustomization", EVERY_SERVER)
def test_every_config_map_is_valid_service_settings_with_threads_fitted_to_the_pods_cpus(
    rendered, kustomization, monkeypatch
):
    from service.settings import Settings

    docs = rendered[kustomization]
    for name, value in config_env(docs).items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # what `imgcls serve` builds in the pod; invalid values raise here
    assert settings.host == "0.0.0.0"
    # the service counts the CPUs it may run on, which in a pod is the node's count, not the limit:
    # the threads must be set, and the decode threads must not outnumber the pod's CPUs
    config = config_env(docs)
    assert {"IMGCLS_DECODE_THREADS", "IMGCLS_INTRA_OP_THREADS"} <= config.keys()
    cpus = float(server_container(docs)["resources"]["requests"]["cpu"])
    assert settings.decode_threads <= cpus


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_termination_grace_period_outlasts_the_pre_stop_pause_and_the_drain(rendered, kustomization):
    docs = rendered[kustomization]
    config = config_env(docs)
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    command = server_container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = float(config["IMGCLS_SHUTDOWN_GRACE_S"])
    assert float(config["IMGCLS_SHUTDOWN_MIN_DRAIN_S"]) <= grace_s
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + grace_s


@pytest.mark.parametrize("kustomization", EVERY_SERVER)
def test_the_settings_paths_are_mounted_and_every_write_lands_on_an_empty_dir(rendered, kustomization):
    docs = rendered[kustomization]
    config = config_env(docs)
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = server_container(docs)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[config["IMGCLS_MODEL_REPO"]]["readOnly"] is True
    keys = Path(config["IMGCLS_API_KEYS_FILE"])
    secret = volumes[mounts[str(keys.parent)]["name"]]["secret"]
    assert keys.name in [item["path"] for item in secret["items"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for variable in ("HOME", "TMPDIR"):
        assert "emptyDir" in volumes[mounts[env[variable]]["name"]], variable
    for init in pod.get("initContainers", []):  # whatever fills the model repository writes to an emptyDir
        for mount in init["volumeMounts"]:
            if mount["mountPath"] == config["IMGCLS_MODEL_REPO"]:
                assert "emptyDir" in volumes[mount["name"]]


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_network_policy_opens_serving_to_the_namespace_and_ingress_and_metrics_only_to_monitoring(
    rendered, kustomization
):
    docs = rendered[kustomization]
    policy = find(docs, "NetworkPolicy", "imgcls")["spec"]
    pod_labels = find(docs, "Deployment", "imgcls")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    container_ports = {p["name"] for p in server_container(docs)["ports"]}
    by_port: dict[str, list[dict]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in container_ports
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == container_ports == {"http", "metrics"}
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {"podSelector": {}} in by_port["http"]  # the pods of this namespace
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in by_port["http"] if "namespaceSelector" in p]
    assert namespaces and {"kubernetes.io/metadata.name": "monitoring"} not in namespaces


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_service_budget_and_autoscaler_all_point_at_the_deployments_pods(rendered, kustomization):
    docs = rendered[kustomization]
    deployment = find(docs, "Deployment", "imgcls")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert find(docs, "Service", "imgcls")["spec"]["selector"].items() <= pod_labels.items()
    budget = find(docs, "PodDisruptionBudget", "imgcls")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    autoscalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    (autoscaler,) = autoscalers
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    minimum = autoscaler["spec"].get("minReplicas", autoscaler["spec"].get("minReplicaCount"))
    assert minimum > budget["maxUnavailable"], "a drain must never take the last replica"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
