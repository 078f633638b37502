"""Training runs for the training benchmarks: a config of configs/, trained in-process on one seed."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["train_recipe"]

ROOT = Path(__file__).resolve().parent.parent


def train_recipe(config_name: str, data: Path, runs: Path, option: str, seed: int, overrides: list[str]):
    """``configs/<config_name>`` on ``data`` with ``overrides``, seeded, not exported, in a run folder of
    its own under ``runs``; returns the :class:`trainer.train.TrainResult` and the seconds it took."""
    from trainer.config import load_config
    from trainer.train import train

    config = load_config(
        ROOT / "configs" / config_name,
        [
            f"data.path={data}",
            f"runs_dir={runs}",
            f"run_name=seed{seed}-{abs(hash(option)) % 10**8}",
            f"train.seed={seed}",
            "export.enabled=false",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config)
    return result, round(time.perf_counter() - started, 1)
