"""imgcls commands as separate processes for the tests that kill them or run several at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torch's launcher starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_imgcls_once_written(args: list[str], cwd: Path, written: Path) -> None:
    """Run ``imgcls ARGS`` and kill it with every process it started, at once, as soon as ``written``
    exists: as a pod or a node dies mid-run."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imgcls", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not written.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [process.pid, *descendants(process.pid)]
    for pid in tree:  # stopped first, so that none reacts to the others' deaths
        os.kill(pid, signal.SIGSTOP)
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    process.wait()


def run_imgcls_together(args: list[str], cwd: Path, count: int) -> list[str]:
    """``count`` copies of ``imgcls ARGS`` at once; each one's stderr, once all have exited with 0."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "imgcls", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    logs = [worker.communicate(timeout=600)[1] for worker in workers]  # every pipe read and closed
    for worker, stderr in zip(workers, logs, strict=True):
        assert worker.returncode == 0, stderr
    return logs
