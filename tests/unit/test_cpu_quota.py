"""Thread pools are sized from the cores a container may really use: CPU set capped by CFS quota."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.settings as settings_module
from service.settings import cpu_quota_cores


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_cpu_quota_is_read_from_cgroup_v2_then_v1(tmp_path: Path, files: dict[str, str], expected):
    for relative, text in files.items():
        _write(tmp_path, relative, text)
    assert cpu_quota_cores(tmp_path) == expected


@pytest.mark.parametrize(("quota", "expected"), [(None, 8), (2.0, 2), (2.5, 2), (0.5, 1), (16.0, 8)])
def test_usable_cores_is_the_cpu_set_capped_by_the_quota(monkeypatch, quota, expected):
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(settings_module, "cpu_quota_cores", lambda: quota)
    assert settings_module.usable_cores() == expected
    assert settings_module.default_decode_threads() == min(4, expected)
