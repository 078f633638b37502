"""Which Python packages the GPU check must carry to the GPU machine, as wheels, and whether they fit.

The GPU machine (this workplace's nvidia-h200) has Python 3.12, its own CUDA build of PyTorch and a
long list of packages, but no network, and a call sends it at most 64 MiB (the repository and the
carried wheels together). So the GPU check carries exactly what imgcls needs there and the machine
lacks: the project's runtime dependencies and train extra, pytest, pytest-timeout and CHECK_NEEDS, followed through
their requirements, stopping at every package the machine already has (except ALSO_CARRIED).

Versions come from the environment this runs in (the project's .venv), so the GPU machine runs the
same versions of the carried packages as the tests here. Never carried: torch, torchvision, triton,
nvidia-* and cuda-* (they would replace the machine's CUDA build), and onnxruntime-gpu (too large).

Used by scripts/build-gpu-wheels.sh (``select`` and ``check``, here) and scripts/gpu-check.sh
(``verify``, on the GPU machine). Standard library and ``packaging`` only: both machines have them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

# What travels to the GPU machine in one call, and what of it the wheels may take: the rest is the
# repository (about 1.5 MiB now) and room for it to grow.
CALL_LIMIT_BYTES = 64 * MIB
WHEEL_BUDGET_BYTES = 56 * MIB

# The development tools the GPU check runs (the `dev` extra's other tools are not needed there).
CHECK_TOOLS = ("pytest", "pytest-timeout")
# What the check's tests need that no declared requirement brings to the machine: starlette's
# TestClient (tests/api) warns without httpx2, an error under the tests' filterwarnings; here it comes
# in through timm's huggingface-hub, whose version on the machine does not need it.
CHECK_NEEDS = ("httpx2",)

# The machine's Python packages, from /work/.library/device/KINDS.md ("Python packages already
# there", read on 2026-11-17). Refresh with `select --kinds PATH` when that file changes.
MACHINE_PACKAGES_READ = "2026-11-17"
_MACHINE_PACKAGE_NAMES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
    einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
    gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
    iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
    nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
    nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
    triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
    xarray xxhash yarl zipp
"""
MACHINE_PACKAGES = frozenset(_MACHINE_PACKAGE_NAMES.split())

# Packages never carried, even when the machine lacks them or a requirement names another version.
NEVER_CARRIED = {
    "torch": "the machine's CUDA build is used; a carried torch would replace it",
    "torchvision": "built against the machine's torch; a carried one would not match it",
    "torchaudio": "built against the machine's torch",
    "triton": "matches the machine's torch",
    "torch-tensorrt": "TensorRT is not on the machine (its libraries are not on PyPI)",
    "tensorrt": "TensorRT is not on the machine (its libraries are not on PyPI)",
    "onnxruntime-gpu": "its cp312 wheel is 255.6 MB (1.31.1), four times what a call carries",
}
NEVER_CARRIED_PREFIXES = ("nvidia-", "cuda-", "tensorrt-")

# Carried although the machine has them: carried packages need a recent version, the machine's is not
# listed, and an old one would break every import of pydantic. Pure Python and small.
ALSO_CARRIED = {
    "typing-extensions": "pydantic-core 2.50 needs >=4.16.0 and the machine's version is not listed",
}

# Requirement markers are evaluated for the GPU machine's Python, not this one's.
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}


class SelectionError(Exception):
    """A needed package cannot be pinned from this environment."""


class WheelFolderError(Exception):
    """The wheel folder does not hold exactly the selection, or it does not fit a call."""


@dataclass
class Selection:
    carried: dict[str, str] = field(default_factory=dict)  # name -> version, pinned
    # requirements of the carried packages (and the roots) on packages the machine has: checked there
    from_machine: dict[str, set[str]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # name -> why it is not carried

    def pins(self) -> list[str]:
        return [f"{name}=={version}" for name, version in sorted(self.carried.items())]


def never_carried(name: str) -> str | None:
    """Why ``name`` is never carried, or None."""
    name = canonicalize_name(name)
    if name in NEVER_CARRIED:
        return NEVER_CARRIED[name]
    if name.startswith(NEVER_CARRIED_PREFIXES):
        return "CUDA libraries come with the machine's torch; carried ones would replace them"
    return None


def parse_machine_packages(kinds_text: str, kind: str = "nvidia-h200") -> frozenset[str]:
    """The package names of KINDS.md's "Python packages already there" line for ``kind``."""
    match = re.search(rf"^{re.escape(kind)}:.*?Packages: (.+?)\.\s*$", kinds_text, re.MULTILINE)
    if match is None:
        raise SelectionError(f"no '{kind}: ... Packages: a, b, c.' line in the KINDS.md given")
    return frozenset(canonicalize_name(name.strip()) for name in match.group(1).split(","))


def project_roots(pyproject: Path) -> list[str]:
    """pyproject's runtime dependencies and its train extra (the check trains and exports), the GPU
    check's tools from its dev extra, and CHECK_NEEDS."""
    project = tomllib.loads(pyproject.read_text())["project"]
    train = project.get("optional-dependencies", {}).get("train", [])
    dev = project.get("optional-dependencies", {}).get("dev", [])
    tools = [line for line in dev if canonicalize_name(Requirement(line).name) in CHECK_TOOLS]
    missing = set(CHECK_TOOLS) - {canonicalize_name(Requirement(line).name) for line in tools}
    if missing:
        raise SelectionError(f"pyproject's dev extra lacks {', '.join(sorted(missing))}")
    return [*project["dependencies"], *train, *tools, *CHECK_NEEDS]


def installed_distributions() -> dict[str, tuple[str, list[str]]]:
    """This environment's distributions: name -> (version, Requires-Dist lines)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        found.setdefault(name, (dist.version, list(dist.requires or [])))
    return found


def _applies(requirement: Requirement, extra: str, environment: Mapping[str, str]) -> bool:
    if requirement.marker is None:
        return extra == ""
    return requirement.marker.evaluate({**environment, "extra": extra})


def select(
    roots: Iterable[str],
    installed: Mapping[str, tuple[str, list[str]]],
    machine: frozenset[str],
    environment: Mapping[str, str] = TARGET_ENVIRONMENT,
) -> Selection:
    """Follow ``roots`` through their requirements (for ``environment``), stopping at the packages
    the machine has and those never carried; pin every other one to its version in ``installed``."""
    selection = Selection()
    queue = [Requirement(line) for line in roots]
    expanded: set[tuple[str, str]] = set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in NEVER_CARRIED:  # before the machine's list: torch==2.14.1 is not checked there
            selection.excluded[name] = NEVER_CARRIED[name]
            continue
        if name in machine and name not in ALSO_CARRIED:
            spec = f"{name}{requirement.specifier}" if requirement.specifier else name
            selection.from_machine.setdefault(name, set()).add(spec)
            continue
        reason = never_carried(name)
        if reason is not None:
            selection.excluded[name] = reason
            continue
        if name not in installed:
            raise SelectionError(
                f"{requirement} is needed on the GPU machine, which lacks it, and it is not installed "
                f"here to take its version from; install it in this environment (make venv) and run again"
            )
        version, requires = installed[name]
        if not requirement.specifier.contains(version, prereleases=True):
            raise SelectionError(f"{requirement} is needed, but this environment has {name} {version}")
        selection.carried[name] = version
        for extra in ("", *sorted(canonicalize_name(e) for e in requirement.extras)):
            if (name, extra) in expanded:
                continue
            expanded.add((name, extra))
            for line in requires:
                child = Requirement(line)
                if _applies(child, extra, environment):
                    child.marker = None
                    queue.append(child)
    return selection


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    size: int


def read_folder(folder: Path) -> list[Wheel]:
    wheels = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        wheels.append(Wheel(path, canonicalize_name(name), str(version), path.stat().st_size))
    return wheels


def check_folder(
    wheels: list[Wheel],
    pins: Iterable[str],
    *,
    budget_bytes: int = WHEEL_BUDGET_BYTES,
    repo_bytes: int = 0,
    limit_bytes: int = CALL_LIMIT_BYTES,
) -> int:
    """Raise WheelFolderError unless the wheels are exactly ``pins`` (one version of each, none never
    carried) and fit: at most ``budget_bytes``, and with the repository at most ``limit_bytes``.
    Returns the wheels' total size."""
    problems = []
    wanted = {
        canonicalize_name(Requirement(p).name): str(next(iter(Requirement(p).specifier)).version)
        for p in pins
    }
    by_name: dict[str, list[Wheel]] = {}
    for wheel in wheels:
        by_name.setdefault(wheel.name, []).append(wheel)
    for name, found in sorted(by_name.items()):
        if len(found) > 1:
            problems.append(
                f"{len(found)} wheels of {name} ({', '.join(w.path.name for w in found)}): keep one"
            )
        if never_carried(name):
            problems.append(f"{found[0].path.name} must not travel: {never_carried(name)}")
        elif name not in wanted:
            problems.append(f"{found[0].path.name} is not in the selection (left from an earlier build?)")
        elif all(Version(w.version) != Version(wanted[name]) for w in found):
            problems.append(f"{found[0].path.name} is not the selected {name}=={wanted[name]}")
    problems += [
        f"no wheel for {name}=={version}" for name, version in sorted(wanted.items()) if name not in by_name
    ]
    total = sum(wheel.size for wheel in wheels)
    if total > budget_bytes:
        problems.append(
            f"the wheels take {total / MIB:.1f} MiB, over the {budget_bytes / MIB:.0f} MiB budget "
            f"(a call carries {limit_bytes / MIB:.0f} MiB with the repository): carry fewer packages"
        )
    if total + repo_bytes > limit_bytes:
        problems.append(
            f"wheels {total / MIB:.1f} MiB + repository {repo_bytes / MIB:.1f} MiB = "
            f"{(total + repo_bytes) / MIB:.1f} MiB, over the {limit_bytes / MIB:.0f} MiB a call carries"
        )
    if problems:
        raise WheelFolderError("; ".join(problems))
    return total


def repository_bytes(root: Path = ROOT) -> int:
    """What travels besides carried paths: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    paths = (root / p for p in listed.split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def unmet(requirements: Iterable[str], versions: Mapping[str, str | None]) -> list[str]:
    """Which ``requirements`` the given versions (name -> version, None: absent) do not meet."""
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        version = versions.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not installed")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the machine has {version}")
    return problems


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    choose = commands.add_parser("select", help="write DIR/carried.txt and DIR/needs-from-machine.txt")
    choose.add_argument("folder", type=Path)
    choose.add_argument("--kinds", type=Path, help="read the machine's packages from this KINDS.md")
    check = commands.add_parser("check", help="the folder holds exactly carried.txt's wheels, and they fit")
    check.add_argument("folder", type=Path)
    check.add_argument("--budget-mib", type=float, default=WHEEL_BUDGET_BYTES / MIB)
    verify = commands.add_parser("verify", help="on the GPU machine: its packages meet what the wheels need")
    verify.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "select":
            machine = MACHINE_PACKAGES
            if args.kinds is not None:
                machine = parse_machine_packages(args.kinds.read_text())
            selection = select(project_roots(ROOT / "pyproject.toml"), installed_distributions(), machine)
            args.folder.mkdir(parents=True, exist_ok=True)
            (args.folder / "carried.txt").write_text("".join(f"{pin}\n" for pin in selection.pins()))
            needs = sorted(spec for specs in selection.from_machine.values() for spec in specs)
            (args.folder / "needs-from-machine.txt").write_text("".join(f"{line}\n" for line in needs))
            for name, reason in sorted(selection.excluded.items()):
                print(f"not carried: {name}: {reason}", file=sys.stderr)
            print(
                f"the machine has (list read {MACHINE_PACKAGES_READ}): {', '.join(sorted(selection.from_machine))}",
                file=sys.stderr,
            )
            print("\n".join(selection.pins()))
        elif args.command == "check":
            wheels = read_folder(args.folder)
            pins = (args.folder / "carried.txt").read_text().split()
            repo = repository_bytes()
            total = check_folder(wheels, pins, budget_bytes=int(args.budget_mib * MIB), repo_bytes=repo)
            for wheel in wheels:
                print(f"{wheel.size / MIB:8.2f} MiB  {wheel.path.name}")
            print(f"{total / MIB:8.2f} MiB  {len(wheels)} wheels (budget {args.budget_mib:g} MiB)")
            print(f"{repo / MIB:8.2f} MiB  the repository as it travels now")
            print(
                f"{(total + repo) / MIB:8.2f} MiB  in all, of the {CALL_LIMIT_BYTES // MIB} MiB a call carries"
            )
        else:
            needs = (args.folder / "needs-from-machine.txt").read_text().split()
            versions = {
                canonicalize_name(Requirement(n).name): _installed_version(Requirement(n).name) for n in needs
            }
            problems = unmet(needs, versions)
            for problem in problems:
                print(f"unmet: {problem}")
            print(f"{len(needs) - len(problems)} of {len(needs)} requirements on the machine's packages met")
            return 1 if problems else 0
    except (SelectionError, WheelFolderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
