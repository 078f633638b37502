"""Every kustomization in k8s/ renders with `kubectl kustomize`; its core resources validate strictly
against the Kubernetes schemas (kubernetes-validate --strict); its custom resources carry what their
operators require; the PrometheusRule is the promtool-checked rules file."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.conftest import (
    DEPLOYABLE,
    K8S,
    config_env,
    dev_tool,
    find,
    kustomizations,
    server_container,
)

# The schemas kubernetes-validate ships: the newest, and the oldest minor still in use here (the kubectl
# this project installs is 1.32).
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}


# Not a kustomization: the one-off pod that fills the model repository volume (docs/deployment.md, Deploy on GPU or CPU nodes).
LOADER = yaml.safe_load((K8S / "examples" / "models-loader.yaml").read_text())


def _core(docs: list[dict]) -> list[dict]:
    return [d for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM]


def _validate(documents: list[dict], version: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"resources-{version}.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    tool = dev_tool("kubernetes-validate", "kubernetes-validate")
    return subprocess.run(
        [tool, "--strict", "--kubernetes-version", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_overlays_the_deployment_guide_deploys_are_all_shipped():
    assert set(DEPLOYABLE) <= set(kustomizations()), kustomizations()


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_kustomization_renders_a_complete_deployment_with_exactly_one_autoscaler(
    rendered, kustomization
):
    kinds = [d["kind"] for d in rendered[kustomization]]
    for kind in ["Namespace", "ConfigMap", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
                 "NetworkPolicy", "ServiceMonitor", "PrometheusRule"]:  # fmt: skip
        assert kind in kinds, f"k8s/{kustomization} renders no {kind}"
    assert kinds.count("HorizontalPodAutoscaler") + kinds.count("ScaledObject") == 1, kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_core_resource_validates_strictly_against_the_kubernetes_schemas(rendered, version, tmp_path):
    documents = [doc for name in kustomizations() for doc in _core(rendered[name])] + [LOADER]
    result = _validate(documents, version, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # every document was checked against a schema (an unknown kind is only a warning)
    assert output.count("passed for resource") == len(documents), output


def test_strict_validation_rejects_a_field_kubernetes_does_not_know(rendered, tmp_path):
    """The check above is only as good as --strict: a misspelt field must fail it."""
    deployment = copy.deepcopy(find(rendered["overlays/cpu"], "Deployment", "imgcls"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    result = _validate([deployment], KUBERNETES_VERSIONS[-1], tmp_path)
    assert result.returncode != 0
    assert "periodSecond" in result.stdout + result.stderr


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_service_monitor_scrapes_a_named_port_of_the_service_it_selects(rendered, kustomization):
    docs = rendered[kustomization]
    monitor = find(docs, "ServiceMonitor", "imgcls")
    service = find(docs, "Service", "imgcls")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_the_prometheus_rule_has_rule_groups_that_each_record_or_alert(rendered, kustomization):
    rule = find(rendered[kustomization], "PrometheusRule", "imgcls")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for entry in group["rules"]:
            assert ("record" in entry) != ("alert" in entry) and entry["expr"]


def test_the_prometheus_rule_is_exactly_the_rules_file_promtool_tests(rendered):
    rules_file = yaml.safe_load((K8S / "monitoring" / "imgcls-rules.yaml").read_text())
    rule = find(rendered["overlays/gpu"], "PrometheusRule", "imgcls")
    assert rule["spec"] == {"groups": rules_file["groups"]}, (
        "k8s/base/prometheusrule.yaml has drifted from k8s/monitoring/imgcls-rules.yaml; regenerate its "
        "groups with the command at the top of prometheusrule.yaml"
    )


def test_promtool_accepts_the_prometheus_rules_rules(rendered, tmp_path):
    promtool = require_tool("promtool", "apt-get install prometheus")
    rule = find(rendered["overlays/gpu"], "PrometheusRule", "imgcls")
    path = tmp_path / "prometheusrule-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    check = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr


@pytest.mark.parametrize("kustomization", ["overlays/keda-cpu", "overlays/keda-gpu"])
def test_the_keda_overlays_scale_the_deployment_with_a_prometheus_trigger_and_no_second_autoscaler(
    rendered, kustomization
):
    docs = rendered[kustomization]
    scaled = find(docs, "ScaledObject", "imgcls")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == find(docs, "Deployment")["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    prometheus = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert len(prometheus) == 1
    assert {"serverAddress", "query", "threshold"} <= prometheus[0]["metadata"].keys()
    float(prometheus[0]["metadata"]["threshold"])  # KEDA parses it as a number
    # KEDA makes its own HPA; a second one on the same Deployment would fight it
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_pod_meets_the_restricted_pod_security_standard(rendered, kustomization):
    docs = rendered[kustomization]
    namespace = find(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in context["capabilities"], container["name"]
        # writes go to emptyDirs (or the volume the init container fills), never to the image
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, container["name"]


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_config_map_and_secret_the_pod_uses_is_rendered_or_documented(rendered, kustomization):
    """A reference kustomize failed to rewrite (a generated name without its hash) would leave the pod
    stuck in CreateContainerConfigError; the API-key Secret is the one thing the operator creates."""
    docs = rendered[kustomization]
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for container in pod["containers"] + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps, source
            if "secretRef" in source:
                assert source["secretRef"].get("optional") is True, source
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == ["imgcls-api-keys"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    rendered_claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == rendered_claims


def test_the_gpu_overlays_ask_for_one_gpu_on_gpu_nodes_and_the_cpu_overlays_for_none(rendered):
    for name in ["overlays/gpu", "overlays/keda-gpu"]:
        pod = find(rendered[name], "Deployment", "imgcls")["spec"]["template"]["spec"]
        resources = server_container(rendered[name])["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert pod["nodeSelector"]
    for name in ["overlays/cpu", "overlays/keda-cpu", "examples/model-from-object-storage"]:
        pod = find(rendered[name], "Deployment", "imgcls")["spec"]["template"]["spec"]
        resources = server_container(rendered[name])["resources"]
        assert "nvidia.com/gpu" not in resources["limits"] and "tolerations" not in pod


def test_the_models_loader_fills_the_claim_the_server_reads_as_the_servers_user(rendered):
    docs = rendered["overlays/cpu"]
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    loader = LOADER["spec"]
    assert LOADER["metadata"]["namespace"] == find(docs, "Namespace")["metadata"]["name"]
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in loader["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {find(docs, "PersistentVolumeClaim")["metadata"]["name"]}
    assert loader["securityContext"] == pod["securityContext"]  # same user: what it writes, the server reads
    (container,) = loader["containers"]
    assert container["image"] == server_container(docs)["image"]  # the cpu image has tar, for kubectl cp
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["mountPath"] == config_env(docs)["IMGCLS_MODEL_REPO"] and not models.get("readOnly")
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]


def _env(container: dict, name: str) -> dict:
    return next(e for e in container["env"] if e["name"] == name)


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_feedback_goes_to_sqlite_on_the_models_volume_unless_a_database_secret_exists(
    rendered, kustomization
):
    docs = rendered[kustomization]
    container = server_container(docs)
    source = _env(container, "IMGCLS_FEEDBACK_DB_URL")["valueFrom"]["secretKeyRef"]
    assert source == {"name": "imgcls-feedback-db", "key": "url", "optional": True}
    folder = config_env(docs)["IMGCLS_FEEDBACK_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
    models = next(
        m for m in container["volumeMounts"] if m["mountPath"] == config_env(docs)["IMGCLS_MODEL_REPO"]
    )
    assert mount["name"] == models["name"] and not mount.get("readOnly") and models["readOnly"] is True
    assert mount["subPath"].startswith(".")  # the model repository skips dot-folders
    assert f"mkdir -p /models/{mount['subPath']}" in " ".join(LOADER["spec"]["containers"][0]["command"])


def test_the_postgresql_example_runs_a_cloudnativepg_cluster_and_reads_its_app_secret(rendered):
    docs = rendered["examples/feedback-postgresql"]
    cluster = find(docs, "Cluster", "imgcls-feedback")
    assert cluster["metadata"]["namespace"] == find(docs, "Namespace")["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["instances"] >= 2 and spec["storage"]["size"]  # the operator requires storage
    assert spec["bootstrap"]["initdb"]["database"] and spec["bootstrap"]["initdb"]["owner"]
    source = _env(server_container(docs), "IMGCLS_FEEDBACK_DB_URL")["valueFrom"]["secretKeyRef"]
    # CloudNativePG writes the owner's credentials to <cluster>-app, a libpq URI under "uri"
    assert source == {"name": "imgcls-feedback-app", "key": "uri", "optional": False}


BULK = yaml.safe_load((K8S / "examples" / "bulk-predict-job.yaml").read_text())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_bulk_prediction_job_validates_strictly(version, tmp_path):
    result = _validate([BULK], version, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_bulk_prediction_job_runs_one_shard_per_index_on_the_server_s_image_and_volume(rendered):
    docs = rendered["overlays/cpu"]
    spec = BULK["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "predict" and args[args.index("--shard") + 1] == str(spec["completions"])
    assert "$(JOB_COMPLETION_INDEX)" in args[args.index("--out") + 1]  # one output part per shard
    assert any(e["name"] == "JOB_COMPLETION_INDEX" for e in container["env"])  # so that it expands in args
    assert container["image"] == server_container(docs)["image"]
    assert (
        pod["securityContext"]
        == find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]["securityContext"]
    )
    models = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert (
        models["claimName"] == find(docs, "PersistentVolumeClaim")["metadata"]["name"] and models["readOnly"]
    )
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True


def test_the_bulk_prediction_job_s_arguments_parse_as_an_imgcls_command():
    from typer.main import get_command

    from imgcls.cli import app

    args = [
        a.replace("$(JOB_COMPLETION_INDEX)", "0")
        for a in BULK["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    command = get_command(app)
    context = command.make_context("imgcls", list(args), resilient_parsing=True)
    name, sub, rest = command.resolve_command(context, list(args))
    assert name == "predict"
    sub.make_context("predict", rest)  # raises on an unknown option
