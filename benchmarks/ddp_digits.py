"""One process against N data-parallel processes on the digits recipe: time per epoch and test accuracy.

    python -m benchmarks.ddp_digits --nproc 1 2 --seeds 0 1 2

Runs ``imgcls train --config configs/digits.yaml --nproc P`` (no report, no export) for each process
count and seed, one run at a time, and reads each run's metrics.csv and metrics.json. The global batch
(``train.batch_size``) is the same for every P, so the runs train the same recipe; what changes is how
many processes share each batch. Writes benchmarks/results/<date>-<host>-ddp-digits/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.machine import machine, result_folder
from benchmarks.report import write_record

ROOT = Path(__file__).resolve().parent.parent


def one_run(config: Path, data: Path, runs: Path, nproc: int, seed: int) -> dict:
    name = f"p{nproc}-s{seed}"
    command = [sys.executable, "-m", "imgcls", "train", "--config", str(config), "--data", str(data)]
    command += ["--run-name", name, "--seed", str(seed), "--nproc", str(nproc), "--no-report", "--no-export"]
    command += ["--set", f"runs_dir={runs}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with (runs / name / "metrics.csv").open() as handle:
        epochs = [float(row["seconds"]) for row in csv.DictReader(handle)]
    metrics = json.loads((runs / name / "metrics.json").read_text())
    return {
        "nproc": nproc,
        "seed": seed,
        "wall_seconds": round(wall, 1),
        # the first epoch also fills the decoded-image cache; the steady state is the median of the rest
        "epoch_seconds_median": round(statistics.median(epochs[1:] or epochs), 3),
        "epochs": len(epochs),
        "test_accuracy": metrics["test"]["accuracy"],
        "best_epoch": metrics["best_epoch"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="ddp-digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    if not args.data.is_dir():
        subprocess.run(
            [sys.executable, "-m", "imgcls", "data", "digits", "--out", str(args.data)], check=True
        )
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [one_run(args.config, args.data, Path(scratch), p, s) for p in args.nproc for s in args.seeds]
    by_nproc = {
        p: {
            "epoch_seconds_median": statistics.median(
                r["epoch_seconds_median"] for r in rows if r["nproc"] == p
            ),
            "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in rows if r["nproc"] == p),
            "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in rows if r["nproc"] == p),
        }
        for p in args.nproc
    }
    info = machine()
    result = {
        "benchmark": "imgcls train --nproc P, configs/digits.yaml (global batch 64)",
        "date": date.today().isoformat(),
        "machine": info,
        "load_1m_at_start": round(load_at_start, 2),
        "summary": {str(p): v for p, v in by_nproc.items()},
        "runs": rows,
    }
    alone = by_nproc.get(1)
    lines = [
        f"# {result['benchmark']}",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}, "
        f"{result['date']}; 1-minute load average {load_at_start:.1f} at the start. One run at a time; "
        "Gloo on CPU; each of P processes gets cores / P threads (imgcls train --nproc's default).",
        "",
        "| processes | seeds | epoch (median, s) | speed-up | run wall time (mean, s) | test accuracy (mean) |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {p} | {len(args.seeds)} | {v['epoch_seconds_median']:.2f} | "
            f"{(alone['epoch_seconds_median'] / v['epoch_seconds_median']) if alone else float('nan'):.2f}x | "
            f"{v['wall_seconds_mean']:.1f} | {v['test_accuracy_mean']:.4f} |"
            for p, v in by_nproc.items()
        ),
        "",
        "| processes | seed | epochs | epoch (median, s) | wall (s) | test accuracy | best epoch |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['nproc']} | {r['seed']} | {r['epochs']} | {r['epoch_seconds_median']:.2f} | "
            f"{r['wall_seconds']:.1f} | {r['test_accuracy']:.4f} | {r['best_epoch']} |"
            for r in rows
        ),
        "",
    ]
    write_record(result_folder(args.out, args.name), result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
