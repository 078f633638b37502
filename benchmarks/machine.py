"""The machine a benchmark ran on, for every result file's header."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["machine", "result_folder"]


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def result_folder(out: Path, name: str) -> Path:
    """``out/<date>-<host>-<name>``: where one benchmark run's files go."""
    from datetime import date

    return Path(out) / f"{date.today().isoformat()}-{platform.node()}-{name}"
