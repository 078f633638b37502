"""Footprint of an imgcls install: installed size, package set and cold start.

Three measurements, for recording before and after a packaging change:

* ``size``: the installed size of a virtual environment's site-packages (apparent size: the sum of
  the regular files' ``st_size``, symlinks not followed), and each installed distribution's share
  (the files its ``*.dist-info/RECORD`` lists that exist under site-packages, each file counted
  once). The distributions, as ``name==version``, are the package set. Because PyPI's Linux torch
  pulls in NVIDIA's CUDA libraries (``nvidia-*``, ``cuda-*``, ``triton``), which PyTorch's CPU
  index does not, the total is also given without them; and because PyPI's torch and torchvision
  also carry their own CUDA builds inside (``torch/lib/libtorch_cuda.so``, ``libnvjpeg``...), the
  figure less those files too: an estimate of the CPU image's site-packages, which installs torch
  from PyTorch's CPU index.
* ``coldstart``: ``imgcls serve`` started N times, each time from just before the process is
  spawned to the first ``200`` from ``GET /readyz`` (every bundle loaded and warmed up; see
  service/routes_health.py). The server runs on a free port on 127.0.0.1, on the CPU, with every
  other ``IMGCLS_*`` variable removed from its environment, and is stopped with SIGTERM after each
  run. One warm-up run (page cache) comes first and is recorded apart. The 1-minute load average
  before each run goes in the record: on a shared machine it says how far to trust the times. So
  does the server's CPU time at that first 200 (user + system, from /proc), which other work on
  the machine inflates far less than the wall time.
* ``report``: two records of the same kind side by side, as a markdown table.

Standard library only, so any interpreter runs it (the venv being measured need not be active)::

    python3 benchmarks/footprint.py size --venv .venv-serve --out size.json
    python3 benchmarks/footprint.py coldstart --imgcls .venv-serve/bin/imgcls --repo models --runs 5 \\
        --out coldstart.json
    python3 benchmarks/footprint.py report --before before/size.json --after after/size.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path

MIB = 1024 * 1024
# Distributions PyPI's Linux torch wheel pulls in and PyTorch's CPU index does not. nvidia-ml-py
# (NVML bindings, imgcls's GPU gauges) is imgcls's own dependency and stays in the CPU image.
CUDA_PREFIXES = ("nvidia-", "cuda-")
CUDA_NAMES = ("triton",)
NOT_CUDA = ("nvidia-ml-py",)
# CUDA-only libraries inside PyPI's torch and torchvision wheels (absent from their CPU builds).
CUDA_FILE = re.compile(r"^lib(torch_cuda|c10_cuda|torch_nvshmem|caffe2_nvrtc|nvjpeg|cudart)[._]")

READY_PATH = "/readyz"  # service/routes_health.py: 200 once every bundle that verified is loaded and warm
POLL_S = 0.02
READY_CAP_S = 120.0
STOP_CAP_S = 60.0


# ---- machine ------------------------------------------------------------------------------------


def machine() -> dict:
    """The CPU model, the cores this process may use, memory, OS and the date, for every record."""
    cpu = platform.processor() or platform.machine()
    memory_kib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(memory_kib / 1024 / 1024, 1) if memory_kib else None,
        "os": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, mean and max, rounded to the millisecond."""
    if not values:
        raise ValueError("summary() needs at least one value; every run failed or none was asked for")
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "max": round(max(values), 3),
    }


# ---- size ---------------------------------------------------------------------------------------


@dataclass
class Distribution:
    name: str
    version: str
    size_bytes: int = 0
    files: int = 0  # RECORD entries counted
    missing: int = 0  # RECORD entries absent (or symlinks)
    outside: int = 0  # RECORD entries outside site-packages (console scripts in bin/, data files)
    has_record: bool = True
    cuda_runtime: bool = False
    cuda_file_bytes: int = 0  # CUDA-only libraries (CUDA_FILE) inside a distribution that is not one

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class SiteSize:
    paths: list[Path]
    total_bytes: int
    distributions: list[Distribution] = field(default_factory=list)

    @property
    def attributed_bytes(self) -> int:
        return sum(d.size_bytes for d in self.distributions)

    @property
    def cuda_bytes(self) -> int:
        return sum(d.size_bytes for d in self.distributions if d.cuda_runtime)

    @property
    def cuda_file_bytes(self) -> int:
        return sum(d.cuda_file_bytes for d in self.distributions if not d.cuda_runtime)


def is_cuda_runtime(name: str) -> bool:
    """Whether a distribution is one of the CUDA libraries PyPI's torch brings and CPU torch does not."""
    key = normalize(name)
    if key in NOT_CUDA:
        return False
    return key in CUDA_NAMES or key.startswith(CUDA_PREFIXES)


def normalize(name: str) -> str:
    """PEP 503 normalisation: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    out = name.lower()
    for sep in ("_", "."):
        out = out.replace(sep, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def find_site_packages(venv: Path) -> list[Path]:
    """The venv's own idea of its site-packages (purelib and platlib), asked of its interpreter."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} does not exist: --venv must be a virtual environment's folder")
    code = (
        "import json, sysconfig; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout
    paths: list[Path] = []
    for raw in json.loads(out):
        path = Path(raw).resolve()
        if path.is_dir() and path not in paths:
            paths.append(path)
    return paths


def tree_bytes(root: Path) -> int:
    """Apparent size of every regular file under root; symlinks are neither followed nor counted."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def read_metadata(dist_info: Path) -> tuple[str, str]:
    """Name and Version from METADATA; from the folder's name (``name-version.dist-info``) without one."""
    metadata = dist_info / "METADATA"
    if metadata.exists():
        with metadata.open(encoding="utf-8", errors="replace") as f:
            headers = HeaderParser().parse(f, headersonly=True)
        if headers.get("Name") and headers.get("Version"):
            return str(headers["Name"]), str(headers["Version"])
    stem = dist_info.name.removesuffix(".dist-info")
    name, _, version = stem.partition("-")
    return name, version


def measure_site_packages(paths: Sequence[Path]) -> SiteSize:
    """Total size of the site-packages folders and each distribution's share of it, largest first.

    A distribution's share is the size of the files its RECORD lists that exist inside these
    folders, each file counted once (for the first distribution, by name, that lists it). Files no
    RECORD lists (caches written later, installs without a RECORD) are the difference between
    ``total_bytes`` and ``attributed_bytes``.
    """
    roots = [Path(p).resolve() for p in paths]
    site = SiteSize(paths=roots, total_bytes=sum(tree_bytes(root) for root in roots))
    seen: set[Path] = set()
    dist_infos = sorted(
        (d for root in roots for d in root.glob("*.dist-info") if d.is_dir()), key=lambda d: d.name.lower()
    )
    for dist_info in dist_infos:
        name, version = read_metadata(dist_info)
        dist = Distribution(name=name, version=version, cuda_runtime=is_cuda_runtime(name))
        record = dist_info / "RECORD"
        if not record.exists():
            dist.has_record = False
            site.distributions.append(dist)
            continue
        with record.open(newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.reader(f):
                if not row or not row[0]:
                    continue
                path = (dist_info.parent / row[0]).resolve()
                if not any(path.is_relative_to(root) for root in roots):
                    dist.outside += 1
                    continue
                if not path.is_file() or path.is_symlink():
                    dist.missing += 1
                    continue
                if path in seen:
                    continue
                seen.add(path)
                size = path.stat().st_size
                dist.files += 1
                dist.size_bytes += size
                if CUDA_FILE.match(path.name):
                    dist.cuda_file_bytes += size
        site.distributions.append(dist)
    site.distributions.sort(key=lambda d: (-d.size_bytes, normalize(d.name)))
    return site


def size_record(site: SiteSize, venv: Path) -> dict:
    without_cuda = site.total_bytes - site.cuda_bytes
    cpu_estimate = without_cuda - site.cuda_file_bytes
    return {
        "kind": "size",
        "venv": str(venv),
        "site_packages": [str(p) for p in site.paths],
        "machine": machine(),
        "total_bytes": site.total_bytes,
        "total_mib": round(site.total_bytes / MIB, 1),
        "without_cuda_bytes": without_cuda,
        "without_cuda_mib": round(without_cuda / MIB, 1),
        "cuda_runtime_mib": round(site.cuda_bytes / MIB, 1),
        "cuda_runtime": sorted(d.pin for d in site.distributions if d.cuda_runtime),
        "cuda_files_in_other_distributions_mib": {
            d.name: round(d.cuda_file_bytes / MIB, 1)
            for d in site.distributions
            if d.cuda_file_bytes and not d.cuda_runtime
        },
        "cpu_estimate_bytes": cpu_estimate,
        "cpu_estimate_mib": round(cpu_estimate / MIB, 1),
        "unattributed_mib": round((site.total_bytes - site.attributed_bytes) / MIB, 1),
        "distribution_count": len(site.distributions),
        "distribution_count_without_cuda": sum(not d.cuda_runtime for d in site.distributions),
        "packages": sorted((d.pin for d in site.distributions), key=str.lower),
        "distributions": [
            {
                "name": d.name,
                "version": d.version,
                "bytes": d.size_bytes,
                "mib": round(d.size_bytes / MIB, 1),
                "files": d.files,
                "missing": d.missing,
                "outside": d.outside,
                "has_record": d.has_record,
                "cuda_runtime": d.cuda_runtime,
                "cuda_file_mib": round(d.cuda_file_bytes / MIB, 1),
            }
            for d in site.distributions
        ],
    }


# ---- cold start ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_environment() -> dict[str, str]:
    """This process's environment without any IMGCLS_* setting, on the CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
    env["IMGCLS_DEVICE"] = "cpu"
    return env


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process and its reaped children (None without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def one_start(imgcls: Path, repo: Path, log: Path) -> dict:
    """Spawn ``imgcls serve``, time it to the first 200 from /readyz, then stop it with SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}{READY_PATH}"
    command = [str(imgcls), "serve", "--model-repo", str(repo), "--port", str(port), "--host", "127.0.0.1"]
    load = load_average()
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_environment())
        first_answer_s: float | None = None  # the first HTTP answer of any status: the port is serving
        ready_s = 0.0
        cpu_s: float | None = None
        body: dict | None = None
        try:
            while True:
                elapsed = time.perf_counter() - start
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"imgcls serve exited with {proc.returncode} before ready:\n{tail(log)}"
                    )
                if elapsed > READY_CAP_S:
                    raise RuntimeError(f"{url} not 200 within {READY_CAP_S:.0f} s:\n{tail(log)}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        ready_s = time.perf_counter() - start
                        cpu_s = process_cpu_s(proc.pid)
                        body = json.loads(response.read())
                        first_answer_s = first_answer_s if first_answer_s is not None else ready_s
                        break
                except urllib.error.HTTPError as error:  # 503: serving, not ready yet
                    error.close()
                    if first_answer_s is None:
                        first_answer_s = time.perf_counter() - start
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass  # not listening yet
                time.sleep(POLL_S)
        finally:
            stop_start = time.perf_counter()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_CAP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stop_s = time.perf_counter() - stop_start
    models = (body or {}).get("models", {})
    # /readyz does not wait for bundles that failed to load, so a 200 alone could time a server with none.
    if not models or any(state != "ready" for state in models.values()):
        raise RuntimeError(
            f"/readyz answered 200 but the models are {models}; expected every one ready:\n{tail(log)}"
        )
    return {
        "ready_s": round(ready_s, 3),
        "first_answer_s": round(first_answer_s, 3),
        "cpu_s_at_ready": round(cpu_s, 2) if cpu_s is not None else None,
        "stop_s": round(stop_s, 3),
        "exit_code": proc.returncode,
        "load_1m_before": load,
        "port": port,
        "models": models,
    }


def interpreter_versions(imgcls: Path) -> dict:
    """Versions in the venv the imgcls script belongs to (its bin/python), asked once and untimed."""
    python = str(imgcls.parent / "python")
    code = (
        "import json, platform, importlib.metadata as m\n"
        "v = {'python': platform.python_version()}\n"
        "for name in ('imgcls', 'torch', 'torchvision', 'onnxruntime', 'fastapi', 'uvicorn'):\n"
        "    try: v[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: v[name] = None\n"
        "print(json.dumps(v))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return (
        json.loads(done.stdout) if done.returncode == 0 else {"python": python, "error": done.stderr[-500:]}
    )


def coldstart(imgcls: Path, repo: Path, runs: int, warmup: int, logs: Path) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "kind": "coldstart",
        "imgcls": str(imgcls),
        "repo": str(repo),
        "bundles": sorted(str(p.parent.relative_to(repo)) for p in repo.glob("*/*/manifest.json")),
        "command": f"{imgcls} serve --model-repo {repo} --port <free> --host 127.0.0.1",
        "environment": "IMGCLS_* removed, IMGCLS_DEVICE=cpu",
        "measure": f"spawn to first 200 from GET {READY_PATH}, polled every {POLL_S * 1000:.0f} ms",
        "machine": machine(),
        "versions": interpreter_versions(imgcls),
        "warmup": [],
        "runs": [],
    }
    plan = [("warmup", n) for n in range(1, warmup + 1)] + [("runs", n) for n in range(1, runs + 1)]
    for kind, n in plan:
        result = one_start(imgcls, repo, logs / f"{kind}-{n}.log")
        record[kind].append(result)
        print(
            f"{'warm-up' if kind == 'warmup' else 'run'} {n}: ready {result['ready_s']:.2f} s (first answer {result['first_answer_s']:.2f} s, "
            f"CPU {result['cpu_s_at_ready']} s), load {result['load_1m_before']}",
            file=sys.stderr,
        )
    for key in ("ready_s", "first_answer_s", "cpu_s_at_ready", "load_1m_before"):
        values = [r[key] for r in record["runs"] if r[key] is not None]
        record[key] = summary(values) if values else None
    return record


# ---- report -------------------------------------------------------------------------------------


def report(before: dict, after: dict) -> str:
    if before.get("kind") != after.get("kind"):
        raise SystemExit(f"cannot compare a {before.get('kind')} record with a {after.get('kind')} record")
    if before["kind"] == "size":
        rows = [
            ("site-packages MiB", before["total_mib"], after["total_mib"]),
            ("without CUDA runtime MiB", before["without_cuda_mib"], after["without_cuda_mib"]),
            ("CPU image estimate MiB", before["cpu_estimate_mib"], after["cpu_estimate_mib"]),
            ("distributions", before["distribution_count"], after["distribution_count"]),
            (
                "distributions without CUDA runtime",
                before["distribution_count_without_cuda"],
                after["distribution_count_without_cuda"],
            ),
        ]
        names_before = {normalize(p.split("==")[0]) for p in before["packages"]}
        names_after = {normalize(p.split("==")[0]) for p in after["packages"]}
        lines = table(rows)
        lines.append("")
        lines.append(f"Removed: {', '.join(sorted(names_before - names_after)) or 'none'}")
        lines.append(f"Added: {', '.join(sorted(names_after - names_before)) or 'none'}")
        return "\n".join(lines)
    rows = [
        (f"{label} {which} s", before[key][which], after[key][which])
        for key, label in (("ready_s", "ready"), ("first_answer_s", "first answer"))
        for which in ("min", "median", "max")
    ]
    if before.get("cpu_s_at_ready") and after.get("cpu_s_at_ready"):
        rows.append(
            (
                "server CPU s at ready, median",
                before["cpu_s_at_ready"]["median"],
                after["cpu_s_at_ready"]["median"],
            )
        )
    rows.append(("runs", before["ready_s"]["n"], after["ready_s"]["n"]))
    rows.append(
        ("1-min load before, median", before["load_1m_before"]["median"], after["load_1m_before"]["median"])
    )
    lines = table(rows)
    if before["bundles"] != after["bundles"]:
        lines.insert(0, f"Not the same bundles: {before['bundles']} before, {after['bundles']} after.\n")
    return "\n".join(lines)


def table(rows: Sequence[tuple[str, float | int, float | int]]) -> list[str]:
    lines = ["| | before | after | change |", "|---|---:|---:|---:|"]
    for label, b, a in rows:
        change = f"{(a - b) / b * 100:+.0f}%" if b else "n/a"
        lines.append(f"| {label} | {b} | {a} | {change} |")
    return lines


# ---- command line -------------------------------------------------------------------------------


def write_json(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    size = commands.add_parser("size", help="installed size and package set of a virtual environment")
    size.add_argument("--venv", type=Path, required=True, help="the virtual environment's folder")
    size.add_argument("--out", type=Path, required=True, help="JSON record to write")
    size.add_argument("--packages", type=Path, help="also write the package set, one name==version a line")

    cold = commands.add_parser("coldstart", help="process start to GET /readyz 200, N times")
    cold.add_argument(
        "--imgcls", type=Path, required=True, help="the imgcls executable (e.g. VENV/bin/imgcls)"
    )
    cold.add_argument("--repo", type=Path, required=True, help="model repository to serve")
    cold.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    cold.add_argument(
        "--warmup", type=int, default=1, help="untimed runs first, for the page cache (default 1)"
    )
    cold.add_argument("--out", type=Path, required=True, help="JSON record to write")
    cold.add_argument("--logs", type=Path, help="folder for the servers' logs (default: a new temporary one)")

    rep = commands.add_parser("report", help="markdown table comparing two records of the same kind")
    rep.add_argument("--before", type=Path, required=True)
    rep.add_argument("--after", type=Path, required=True)

    args = parser.parse_args(argv)
    if args.command == "size":
        venv = args.venv.resolve()
        record = size_record(measure_site_packages(find_site_packages(venv)), venv)
        write_json(record, args.out)
        if args.packages:
            args.packages.write_text("\n".join(record["packages"]) + "\n")
        print(
            f"{record['total_mib']} MiB, {record['without_cuda_mib']} MiB without CUDA runtime, "
            f"{record['cpu_estimate_mib']} MiB CPU image estimate; "
            f"{record['distribution_count']} distributions",
        )
    elif args.command == "coldstart":
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        repo = args.repo.resolve()
        logs = args.logs or Path(tempfile.mkdtemp(prefix="imgcls-coldstart-"))
        print(f"server logs in {logs}", file=sys.stderr)
        record = coldstart(args.imgcls.resolve(), repo, args.runs, args.warmup, logs)
        write_json(record, args.out)
        s = record["ready_s"]
        print(f"ready: min {s['min']} s, median {s['median']} s, max {s['max']} s over {s['n']} runs")
    else:
        before = json.loads(args.before.read_text())
        after = json.loads(args.after.read_text())
        print(report(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
