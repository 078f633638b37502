"""The training and search manifests in k8s/training/ (plain files for `kubectl apply -f`): their core
resources, and the pod Kubeflow Trainer makes of the TrainJob, validate strictly against the Kubernetes
schemas; the custom resources use only fields their CRDs define; every pod meets the restricted Pod
Security Standard on GPU nodes with the shared claims; and the commands parse: torchrun's options with
torch's own parser, then the rest as an imgcls command."""

from __future__ import annotations

import argparse
import copy

import pytest
import yaml

from tests.deploy.conftest import K8S, find
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, _validate

TRAINING = K8S / "training"


def _load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((TRAINING / name).read_text()) if doc]


TRAINJOB = find(_load("kubeflow-trainjob.yaml"), "TrainJob")
SERVICE = find(_load("torchrun-job.yaml"), "Service")
TORCHRUN_JOB = find(_load("torchrun-job.yaml"), "Job")
TUNE_JOB = find(_load("tune-job.yaml"), "Job")
TUNE_DB = find(_load("tune-postgresql.yaml"), "Cluster")
RUNS_CLAIM = find(_load("runs-pvc.yaml"), "PersistentVolumeClaim")
EVERY_DOCUMENT = [doc for path in sorted(TRAINING.glob("*.yaml")) for doc in _load(path.name)]
SERVICE_ACCOUNT = yaml.safe_load((K8S / "base" / "serviceaccount.yaml").read_text())
FEEDBACK_DB = yaml.safe_load((K8S / "examples" / "feedback-postgresql" / "cluster.yaml").read_text())

# Kubeflow Trainer v2.3.0, trainer.kubeflow.org/v1alpha1: the fields its CRD defines at each level we use
# (https://github.com/kubeflow/trainer/blob/v2.3.0/manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml,
# generated from pkg/apis/trainer/v1alpha1/trainjob_types.go). A misspelt field would be pruned by the
# API server without a word, so the keys are checked here.
TRAINJOB_SPEC = {"runtimeRef", "initializer", "trainer", "runtimePatches", "suspend", "activeDeadlineSeconds",
                 "managedBy"}  # fmt: skip
RUNTIME_REF = {"name", "apiGroup", "kind"}
TRAINER = {"image", "command", "args", "env", "numNodes", "resourcesPerNode", "numProcPerNode"}
RUNTIME_PATCH = {"manager", "time", "trainingRuntimeSpec"}
POD_SPEC_PATCH = {"serviceAccountName", "volumes", "initContainers", "containers", "imagePullSecrets",
                  "securityContext", "nodeSelector", "affinity", "tolerations", "schedulingGates",
                  "terminationGracePeriodSeconds"}  # fmt: skip
CONTAINER_PATCH = {"name", "env", "volumeMounts", "securityContext"}
# What the Torch plugin sets in the `node` container (pkg/runtime/framework/plugins/torch/torch.go, and
# TorchRunReservedEnvNames and ContainerTrainerPort in pkg/constants/constants.go): a TrainJob that sets
# one of these itself is refused.
PET_NAMES = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
TRAINER_PORT = 29500


def _pod_patch(trainjob: dict) -> dict:
    """The pod template of the runtime's `node` Job, as the TrainJob's one runtime patch sets it."""
    (patch,) = trainjob["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    return job["template"]["spec"]["template"]


def _pet_env(trainjob: dict) -> list[dict]:
    name, trainer = trainjob["metadata"]["name"], trainjob["spec"]["trainer"]
    return [
        {"name": "PET_NNODES", "value": str(trainer["numNodes"])},
        {"name": "PET_NPROC_PER_NODE", "value": str(trainer["numProcPerNode"])},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
    ]


def _trainjob_pod(trainjob: dict) -> dict:
    """The pod Trainer makes for node 0: the runtime's `node` container with spec.trainer's image,
    command, args, env (and the PET_* variables) and resourcesPerNode, in the patched pod spec."""
    trainer, template = trainjob["spec"]["trainer"], _pod_patch(trainjob)
    spec = copy.deepcopy(template["spec"])
    (container,) = spec.pop("containers")
    container.update(
        image=trainer["image"],
        command=trainer["command"],
        args=trainer["args"],
        env=[*trainer.get("env", []), *_pet_env(trainjob)],
        resources=trainer["resourcesPerNode"],
        ports=[{"containerPort": TRAINER_PORT}],
    )
    name = trainjob["metadata"]["name"]
    metadata = {"name": f"{name}-node-0-0", "namespace": trainjob["metadata"]["namespace"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**metadata, "labels": template["metadata"]["labels"]},
        "spec": {**spec, "hostname": f"{name}-node-0-0", "subdomain": name, "containers": [container]},
    }


TRAINJOB_POD = _trainjob_pod(TRAINJOB)
# Every pod these files run: (what, pod spec).
PODS = {
    "kubeflow-trainjob": TRAINJOB_POD["spec"],
    "torchrun-job": TORCHRUN_JOB["spec"]["template"]["spec"],
    "tune-job": TUNE_JOB["spec"]["template"]["spec"],
}


def _torchrun(container: dict) -> argparse.Namespace:
    """The container's torchrun options as torch's own parser reads them (with any PET_* variables of
    the environment as defaults, as in the pod)."""
    from torch.distributed.run import get_args_parser

    assert container["command"] == ["torchrun"]
    return get_args_parser().parse_args(list(container["args"]))


def _parse_as_imgcls(args: list[str]) -> str:
    """The imgcls subcommand that ``args`` name; raises on an unknown command or option."""
    from typer.main import get_command

    from imgcls.cli import app

    command = get_command(app)
    context = command.make_context("imgcls", list(args), resilient_parsing=True)
    name, sub, rest = command.resolve_command(context, list(args))
    assert sub is not None, f"imgcls has no command {args[0]!r}"
    sub.make_context(name, rest)  # raises on an unknown option
    return name


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _overrides(args: list[str]) -> dict[str, str]:
    """The command's --set SECTION.FIELD=VALUE overrides."""
    return dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--set")


def _gpus(resources: dict) -> int:
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    return int(resources["limits"]["nvidia.com/gpu"])


@pytest.fixture
def no_pet_variables(monkeypatch):
    for name in PET_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_every_training_resource_is_in_the_imgcls_namespace_with_the_project_s_labels():
    kinds = {d["kind"] for d in EVERY_DOCUMENT}
    assert kinds == {"TrainJob", "Service", "Job", "Cluster", "PersistentVolumeClaim"}
    for doc in EVERY_DOCUMENT:
        assert doc["metadata"]["namespace"] == "imgcls", doc["metadata"]["name"]
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "imgcls" and labels["app.kubernetes.io/component"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_core_training_resources_and_the_trainjob_s_pod_validate_strictly(version, tmp_path):
    documents = [d for d in EVERY_DOCUMENT if d["kind"] not in {"TrainJob", "Cluster"}] + [TRAINJOB_POD]
    result = _validate(documents, version, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("passed for resource") == len(documents), output


def test_the_trainjob_uses_only_fields_the_kubeflow_trainer_crd_defines():
    assert TRAINJOB["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and TRAINJOB["kind"] == "TrainJob"
    spec = TRAINJOB["spec"]
    assert spec.keys() <= TRAINJOB_SPEC and spec["runtimeRef"].keys() <= RUNTIME_REF
    assert spec["trainer"].keys() <= TRAINER
    for patch in spec["runtimePatches"]:
        assert patch.keys() <= RUNTIME_PATCH and patch["manager"]
    pod = _pod_patch(TRAINJOB)
    assert pod["metadata"].keys() <= {"labels", "annotations"}
    assert pod["spec"].keys() <= POD_SPEC_PATCH
    for container in pod["spec"]["containers"]:
        assert container.keys() <= CONTAINER_PATCH
        # Trainer refuses env in a patch of the `node` container: it belongs in spec.trainer.env
        assert container["name"] != "node" or "env" not in container
    assert not {e["name"] for e in spec["trainer"].get("env", [])} & PET_NAMES  # reserved by the Torch plugin


def test_the_trainjob_runs_torchrun_on_the_torch_distributed_runtime_with_one_process_per_gpu():
    spec = TRAINJOB["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = spec["trainer"]
    assert trainer["image"].endswith("-gpu") and trainer["numNodes"] >= 2
    assert trainer["command"] == ["torchrun"]
    assert trainer["numProcPerNode"] == _gpus(trainer["resourcesPerNode"])
    (container,) = _pod_patch(TRAINJOB)["spec"]["containers"]
    assert container["name"] == "node"  # the container the Torch plugin fills in


def test_the_trainjob_s_torchrun_takes_nodes_processes_and_rendezvous_from_what_trainer_sets(monkeypatch):
    for variable in _pet_env(TRAINJOB):
        monkeypatch.setenv(variable["name"], variable.get("value", "1"))  # node 1: a fieldRef in the pod
    (container,) = TRAINJOB_POD["spec"]["containers"]
    parsed = _torchrun(container)
    trainer, name = TRAINJOB["spec"]["trainer"], TRAINJOB["metadata"]["name"]
    assert parsed.nnodes == str(trainer["numNodes"])
    assert parsed.nproc_per_node == str(trainer["numProcPerNode"])
    assert parsed.node_rank == 1
    assert parsed.rdzv_backend == "static"  # node 0 hosts the store at the master address
    assert (parsed.master_addr, parsed.master_port) == (f"{name}-node-0-0.{name}", TRAINER_PORT)
    assert parsed.module and parsed.training_script == "imgcls"


def test_the_indexed_job_runs_one_pod_per_node_and_one_process_per_gpu(no_pet_variables):
    spec = TORCHRUN_JOB["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    parsed = _torchrun(container)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(parsed.nnodes) >= 2
    assert int(parsed.nproc_per_node) == _gpus(container["resources"])
    assert parsed.module and parsed.training_script == "imgcls"
    assert parsed.rdzv_id == _option(parsed.training_script_args, "--run-name")
    # torchrun restarts the group in place; past that, the Job replaces a pod, and only once it is gone
    assert parsed.max_restarts > 0 and pod["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    # a fresh store for each rendezvous round: with the shared one, a replacement pod's processes read
    # what the lost pod's left and fail to connect (pytorch/pytorch#135712)
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in container["env"]
    assert spec["backoffLimit"] >= spec["completions"]  # one lost node can fail every pod once


def test_pod_0_hosts_the_rendezvous_under_the_name_the_headless_service_gives_it(no_pet_variables):
    pod = TORCHRUN_JOB["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = _torchrun(container)
    job, service = TORCHRUN_JOB["metadata"]["name"], SERVICE["metadata"]["name"]
    namespace = TORCHRUN_JOB["metadata"]["namespace"]
    assert SERVICE["metadata"]["namespace"] == namespace
    assert SERVICE["spec"]["clusterIP"] == "None" and SERVICE["spec"]["publishNotReadyAddresses"] is True
    assert SERVICE["spec"]["selector"] == {"batch.kubernetes.io/job-name": job}
    assert pod["subdomain"] == service
    # An Indexed Job's pod I is named <job>-I; the full name is the one in pod 0's /etc/hosts, so its
    # torchrun knows it is the host without a DNS lookup
    host, port = parsed.rdzv_endpoint.rsplit(":", 1)
    assert parsed.rdzv_backend == "c10d"
    assert host == f"{job}-0.{service}.{namespace}.svc.cluster.local"
    assert int(port) in {p["port"] for p in SERVICE["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    assert dict(item.split("=") for item in parsed.rdzv_conf.split(","))["read_timeout"]


def test_the_trainjob_and_the_indexed_job_run_the_same_training(no_pet_variables):
    (job_container,) = TORCHRUN_JOB["spec"]["template"]["spec"]["containers"]
    (trainjob_container,) = TRAINJOB_POD["spec"]["containers"]
    job, trainjob = _torchrun(job_container), _torchrun(trainjob_container)
    assert trainjob.training_script_args == job.training_script_args
    assert trainjob_container["image"] == job_container["image"]
    assert trainjob_container["resources"] == job_container["resources"]
    assert TRAINJOB["spec"]["trainer"]["numNodes"] == TORCHRUN_JOB["spec"]["completions"]


@pytest.mark.parametrize("workload", ["kubeflow-trainjob", "torchrun-job"])
def test_the_distributed_training_s_arguments_parse_as_imgcls_train(workload, no_pet_variables):
    pod = PODS[workload]
    parsed = _torchrun(pod["containers"][0])
    args = parsed.training_script_args
    assert parsed.module and parsed.training_script == "imgcls"
    assert _parse_as_imgcls(args) == "train"
    assert "--resume-if-exists" in args and _option(args, "--run-name")


def test_the_search_job_s_arguments_parse_as_an_imgcls_command():
    (container,) = TUNE_JOB["spec"]["template"]["spec"]["containers"]
    assert "command" not in container  # the image's ENTRYPOINT, imgcls
    assert _parse_as_imgcls(container["args"]) == "tune"


def test_the_search_job_s_workers_share_one_study_in_the_cloudnativepg_database():
    spec = TUNE_JOB["spec"]
    assert spec.get("completionMode", "NonIndexed") == "NonIndexed"
    assert spec["completions"] == spec["parallelism"] >= 2 and spec["backoffLimit"] > 0
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert int(_option(args, "--trials")) >= spec["parallelism"]  # the study's total, shared by the pods
    assert _option(args, "--study")
    assert "--seed" not in args  # one seed would have every worker's sampler make the same choices
    assert _gpus(container["resources"]) == 1
    storage = next(e for e in container["env"] if e["name"] == "IMGCLS_TUNE_STORAGE")
    # CloudNativePG writes the owner's credentials to <cluster>-app, a libpq URI under "uri"
    assert storage["valueFrom"]["secretKeyRef"] == {
        "name": f"{TUNE_DB['metadata']['name']}-app",
        "key": "uri",
        "optional": False,
    }
    assert TUNE_DB["apiVersion"] == "postgresql.cnpg.io/v1"
    assert TUNE_DB["metadata"]["namespace"] == TUNE_JOB["metadata"]["namespace"]
    db = TUNE_DB["spec"]
    assert db["instances"] >= 1 and db["storage"]["size"]  # the operator requires storage
    assert db["bootstrap"]["initdb"]["database"] and db["bootstrap"]["initdb"]["owner"]
    # Optuna's and the feedback store's Alembic version tables cannot share one database
    assert TUNE_DB["metadata"]["name"] != FEEDBACK_DB["metadata"]["name"]


@pytest.mark.parametrize("workload", list(PODS))
def test_every_training_pod_meets_the_restricted_pod_security_standard(workload):
    pod = PODS[workload]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user, as the server's pods
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    if "serviceAccountName" in pod:  # the TrainJob's pods: the base's account, which mounts no token
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT["metadata"]["name"]
        assert SERVICE_ACCOUNT["automountServiceAccountToken"] is False
    else:
        assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in context["capabilities"], container["name"]
        # writes go to volumes, never to the image
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, container["name"]


@pytest.mark.parametrize("workload", list(PODS))
def test_every_training_pod_runs_on_gpu_nodes_with_shared_memory_and_the_shared_claims(workload):
    pod = PODS[workload]
    (container,) = pod["containers"]
    assert container["image"].endswith("-gpu") and _gpus(container["resources"]) >= 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # DataLoader workers (and NCCL) need more than the runtime's 64 MiB /dev/shm; memory-backed, it
    # counts against the memory limit
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    assert container["resources"]["limits"]["memory"]
    # every pod (every node, every search worker) writes runs to the one ReadWriteMany claim
    runs = volumes[mounts["/runs"]["name"]]["persistentVolumeClaim"]
    assert runs["claimName"] == RUNS_CLAIM["metadata"]["name"] and not mounts["/runs"].get("readOnly")
    assert RUNS_CLAIM["spec"]["accessModes"] == ["ReadWriteMany"]
    data = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert data["claimName"] == "imgcls-data" and mounts["/data"]["readOnly"] is True
    args = container["args"]
    assert _overrides(args)["runs_dir"] == "/runs"
    for option in ["--config", "--data"]:
        assert _option(args, option).startswith("/data/")
    if "train" in args:  # the bundle at the end of training: the image's working directory is read-only
        assert _overrides(args)["export.out_dir"].startswith("/runs/")
