"""benchmarks/footprint.py's pure pieces: RECORD-size summing on a tiny fake site-packages, and the stats."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks import footprint


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def dist_info(site: Path, folder: str, name: str, version: str, record: list[str] | None) -> None:
    info = site / folder
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nLong text.\n")
    if record is not None:
        (info / "RECORD").write_text("".join(f"{line}\n" for line in record))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """bigpkg (300 + 50 bytes, one missing file, one console script outside), small_pkg (20 bytes,
    plus a file bigpkg already listed), nvidia-cublas-cu13 (1000 bytes), nvidia-ml-py (5 bytes),
    noreco (no RECORD) and a 7-byte file no RECORD lists."""
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    write(site / "bigpkg" / "__init__.py", 300)
    write(site / "bigpkg" / "core.so", 50)
    dist_info(
        site,
        "bigpkg-2.0.dist-info",
        "BigPkg",
        "2.0",
        [
            "bigpkg/__init__.py,sha256=abc,300",
            "bigpkg/core.so,sha256=def,50",
            "bigpkg/gone.py,sha256=ghi,999",
            "../../../bin/bigpkg,sha256=jkl,40",
            "bigpkg-2.0.dist-info/RECORD,,",
        ],
    )
    write(tmp_path / "bin" / "bigpkg", 40)
    write(site / "small_pkg.py", 20)
    dist_info(site, "small_pkg-0.1.dist-info", "small_pkg", "0.1", ["small_pkg.py,,", "bigpkg/core.so,,", ""])
    write(site / "nvidia" / "cublas" / "lib" / "libcublas.so", 1000)
    dist_info(
        site,
        "nvidia_cublas_cu13-13.0.dist-info",
        "nvidia-cublas-cu13",
        "13.0",
        ["nvidia/cublas/lib/libcublas.so,,1000"],
    )
    write(site / "pynvml.py", 5)
    dist_info(site, "nvidia_ml_py-13.5.dist-info", "nvidia-ml-py", "13.5", ["pynvml.py,,5"])
    dist_info(site, "noreco-1.0.dist-info", "noreco", "1.0", None)
    write(site / "__pycache__" / "stray.pyc", 7)
    return site


def test_record_sizes_sum_existing_files_inside_site_packages(site: Path) -> None:
    result = footprint.measure_site_packages([site])
    by_name = {d.name: d for d in result.distributions}

    big = by_name["BigPkg"]
    record_bytes = (site / "bigpkg-2.0.dist-info" / "RECORD").stat().st_size
    assert (big.size_bytes, big.missing, big.outside) == (300 + 50 + record_bytes, 1, 1)
    assert big.files == 3
    # core.so is counted once, for the first distribution by name that lists it.
    assert (by_name["small_pkg"].size_bytes, by_name["small_pkg"].files) == (20, 1)
    assert by_name["noreco"].has_record is False
    assert by_name["noreco"].size_bytes == 0


def test_total_counts_every_file_and_the_rest_is_unattributed(site: Path) -> None:
    result = footprint.measure_site_packages([site])
    on_disk = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())

    assert result.total_bytes == on_disk
    # METADATA files are not in these fake RECORDs, and the stray .pyc is in none.
    assert result.total_bytes - result.attributed_bytes >= 7


def test_distributions_largest_first_and_the_package_set(site: Path) -> None:
    result = footprint.measure_site_packages([site])
    record = footprint.size_record(result, site.parent.parent.parent)

    assert [d.name for d in result.distributions][:2] == ["nvidia-cublas-cu13", "BigPkg"]
    assert record["packages"] == [
        "BigPkg==2.0",
        "noreco==1.0",
        "nvidia-cublas-cu13==13.0",
        "nvidia-ml-py==13.5",
        "small_pkg==0.1",
    ]
    assert record["distribution_count"] == 5
    assert record["distributions"][0]["bytes"] == 1000


def test_cuda_runtime_is_left_out_but_nvml_stays(site: Path) -> None:
    result = footprint.measure_site_packages([site])
    record = footprint.size_record(result, site)

    assert result.cuda_bytes == 1000
    assert record["cuda_runtime"] == ["nvidia-cublas-cu13==13.0"]
    assert record["without_cuda_bytes"] == result.total_bytes - 1000
    assert record["distribution_count_without_cuda"] == 4


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvidia-cudnn-cu13", True),
        ("nvidia_nccl_cu13", True),
        ("cuda-bindings", True),
        ("triton", True),
        ("nvidia-ml-py", False),
        ("nvidia_ml_py", False),
        ("torch", False),
        ("tritonclient", False),
    ],
)
def test_is_cuda_runtime(name: str, expected: bool) -> None:
    assert footprint.is_cuda_runtime(name) is expected


def test_summary_of_runs() -> None:
    assert footprint.summary([3.0, 1.0, 2.0, 10.0]) == {
        "n": 4,
        "min": 1.0,
        "median": 2.5,
        "mean": 4.0,
        "max": 10.0,
    }
    assert footprint.summary([1.23456])["median"] == 1.235


def test_summary_of_nothing_says_why() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        footprint.summary([])


def test_report_compares_package_sets() -> None:
    before = {
        "kind": "size",
        "total_mib": 200.0,
        "without_cuda_mib": 100.0,
        "cpu_estimate_mib": 90.0,
        "distribution_count": 4,
        "distribution_count_without_cuda": 3,
        "packages": ["torch==2.14.1", "timm==1.0", "Scikit_Learn==1.5", "fastapi==0.115"],
    }
    after = {**before, "total_mib": 150.0, "packages": ["torch==2.14.1", "fastapi==0.115", "anyio==4.0"]}

    text = footprint.report(before, after)

    assert "| site-packages MiB | 200.0 | 150.0 | -25% |" in text
    assert "Removed: scikit-learn, timm" in text
    assert "Added: anyio" in text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_process_cpu_s_reads_this_process() -> None:
    own = time.process_time()
    spent = footprint.process_cpu_s(os.getpid())

    # /proc counts in clock ticks (10 ms), and adds the CPU time of reaped children
    assert spent is not None
    assert spent >= own - 0.05
