"""The GPU check's scripts: what scripts/gpu_wheels.py carries to the GPU machine and whether it fits,
and that both shell scripts parse. tests/e2e/test_gpu_check_script.py runs scripts/gpu-check.sh."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"

_spec = importlib.util.spec_from_file_location("gpu_wheels", SCRIPTS / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(_spec)
sys.modules["gpu_wheels"] = gpu_wheels  # dataclasses look their module up there
_spec.loader.exec_module(gpu_wheels)

MIB = gpu_wheels.MIB


@pytest.mark.parametrize("script", ["gpu-check.sh", "build-gpu-wheels.sh"])
def test_the_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _installed(**packages: tuple[str, list[str]]) -> dict[str, tuple[str, list[str]]]:
    return {name.replace("_", "-"): value for name, value in packages.items()}


def test_selection_stops_at_the_machines_packages_and_never_carries_torch_or_cuda_libraries():
    installed = _installed(
        fastapi=("0.165.0", ["starlette>=1.6", "pydantic>=2.9", "anyio>=4.1"]),
        starlette=("1.10.0", ["anyio<5,>=4.0"]),
        pydantic=("2.14.4", ["pydantic-core==2.50.5"]),
        pydantic_core=("2.50.5", []),
        timm=("1.0.31", ["torch", "torchvision"]),
        torch=("2.14.1", ["nvidia-cublas==13.1", "triton==3.6"]),
        nvidia_cudnn_cu99=("9.9", []),
        tensorrt_cu99=("11.1", []),
    )
    machine = frozenset({"anyio", "timm"})  # and none of torch, triton or the nvidia-* libraries
    roots = [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0",
        "fastapi>=0.115",
        "nvidia-cudnn-cu99",
        "tensorrt-cu99",
    ]
    selection = gpu_wheels.select(roots, installed, machine)
    assert selection.pins() == [
        "fastapi==0.165.0",
        "pydantic==2.14.4",
        "pydantic-core==2.50.5",
        "starlette==1.10.0",
    ]
    assert {"torch", "torchvision", "nvidia-cudnn-cu99", "tensorrt-cu99"} <= set(selection.excluded)
    assert selection.from_machine == {"anyio": {"anyio>=4.1", "anyio<5,>=4.0"}, "timm": {"timm>=1.0"}}


def test_selection_follows_requested_extras_and_the_gpu_machines_python_markers():
    installed = _installed(
        uvicorn=("0.55.0", ['httptools>=0.6; extra == "standard"', 'watchfiles; extra == "reload"']),
        httptools=("0.9.0", []),
        watchfiles=("1.3.0", []),
        newer=("1.0", ['only312>=1; python_version >= "3.12"', 'only311; python_version < "3.12"']),
        only312=("2.0", []),
    )
    selection = gpu_wheels.select(["uvicorn[standard]", "newer"], installed, frozenset())
    assert selection.pins() == ["httptools==0.9.0", "newer==1.0", "only312==2.0", "uvicorn==0.55.0"]


def test_selection_refuses_a_needed_package_it_cannot_pin():
    with pytest.raises(gpu_wheels.SelectionError, match=re.escape("python-multipart>=0.0.9 is needed")):
        gpu_wheels.select(["python-multipart>=0.0.9"], {}, frozenset())
    with pytest.raises(gpu_wheels.SelectionError, match=re.escape("this environment has fastapi 0.100.0")):
        gpu_wheels.select(["fastapi>=0.115"], _installed(fastapi=("0.100.0", [])), frozenset())


def test_the_projects_selection_carries_the_service_stack_and_nothing_the_machine_has():
    roots = gpu_wheels.project_roots(ROOT / "pyproject.toml")
    selection = gpu_wheels.select(roots, gpu_wheels.installed_distributions(), gpu_wheels.MACHINE_PACKAGES)
    carried = set(selection.carried)
    assert {"fastapi", "uvicorn", "pydantic", "pydantic-settings", "python-multipart", "httpx2"} <= carried
    assert not carried & (gpu_wheels.MACHINE_PACKAGES - set(gpu_wheels.ALSO_CARRIED))
    assert not [name for name in carried if gpu_wheels.never_carried(name)]
    assert {"pytest", "pytest-timeout", "timm"} <= set(selection.from_machine)


def test_the_machines_packages_are_read_from_the_kinds_list():
    text = "nvidia-h200: their image holds these, read 2026-11-17. Packages: absl-py, Jinja2, torch, zipp.\n"
    assert gpu_wheels.parse_machine_packages(text) == {"absl-py", "jinja2", "torch", "zipp"}
    with pytest.raises(gpu_wheels.SelectionError, match="no 'nvidia-h200: "):
        gpu_wheels.parse_machine_packages("other-kind: Packages: a, b.\n")


def _wheel(name: str, version: str, mib: float):
    path = Path(f"{name.replace('-', '_')}-{version}-py3-none-any.whl")
    return gpu_wheels.Wheel(path, name, version, int(mib * MIB))


PINS = ["fastapi==0.165.0", "pydantic-core==2.50.5"]


def test_a_folder_holding_exactly_the_selection_within_budget_passes():
    wheels = [_wheel("fastapi", "0.165.0", 0.2), _wheel("pydantic-core", "2.50.5", 2.2)]
    assert gpu_wheels.check_folder(wheels, PINS, repo_bytes=2 * MIB) == int(0.2 * MIB) + int(2.2 * MIB)


def test_wheels_over_the_budget_are_refused():
    wheels = [_wheel("fastapi", "0.165.0", 30), _wheel("pydantic-core", "2.50.5", 27)]
    with pytest.raises(gpu_wheels.WheelFolderError, match=r"57\.0 MiB, over the 56 MiB budget"):
        gpu_wheels.check_folder(wheels, PINS)


def test_wheels_and_repository_over_what_a_call_carries_are_refused():
    wheels = [_wheel("fastapi", "0.165.0", 20), _wheel("pydantic-core", "2.50.5", 20)]
    with pytest.raises(gpu_wheels.WheelFolderError, match=r"= 65\.0 MiB, over the 64 MiB a call carries"):
        gpu_wheels.check_folder(wheels, PINS, repo_bytes=25 * MIB)


def test_two_versions_stale_missing_and_never_carried_wheels_are_each_named():
    wheels = [
        _wheel("fastapi", "0.165.0", 0.1),
        _wheel("fastapi", "0.160.0", 0.1),
        _wheel("torch", "2.14.1", 0.1),
        _wheel("leftover", "1.0", 0.1),
    ]
    with pytest.raises(gpu_wheels.WheelFolderError) as raised:
        gpu_wheels.check_folder(wheels, PINS)
    message = str(raised.value)
    assert "2 wheels of fastapi" in message
    assert "torch-2.14.1-py3-none-any.whl must not travel" in message
    assert "leftover-1.0-py3-none-any.whl is not in the selection" in message
    assert "no wheel for pydantic-core==2.50.5" in message


def test_unmet_names_the_requirement_and_the_machines_version():
    assert gpu_wheels.unmet(
        ["anyio>=4.1", "typer>=0.12", "missing"], {"anyio": "4.0.0", "typer": "0.29.2"}
    ) == [
        "anyio>=4.1: the machine has 4.0.0",
        "missing: not installed",
    ]
