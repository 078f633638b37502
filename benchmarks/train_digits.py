"""Record the digits quality bar: test accuracy and wall time of `imgcls train` over several seeds.

    python benchmarks/train_digits.py --seeds 0 1 2 3 4

Each seed is a separate `imgcls train` process, bundle export included, so the wall time is
what a user waits for (Python imports too). Writes benchmarks/results/<date>-<host>-train-digits/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.machine import machine, result_folder

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--name", default="train-digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    imgcls = [sys.executable, "-m", "trainer"]
    if not args.data.is_dir():
        subprocess.run([*imgcls, "data", "digits", "--out", str(args.data)], check=True)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            command = [
                *imgcls,
                "train",
                "--config",
                str(args.config),
                "--data",
                str(args.data),
                "--seed",
                str(seed),
                "--set",
                f"runs_dir={scratch}",
                "--set",
                f"export.out_dir={scratch}/models",
                "--run-name",
                f"seed{seed}",
            ]
            for item in args.overrides:
                command += ["--set", item]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            metrics = json.loads((Path(scratch) / f"seed{seed}" / "metrics.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "test_accuracy": metrics["test"]["accuracy"],
                    "test_f1_macro": metrics["test"]["f1_macro"],
                    "test_samples": metrics["test"]["samples"],
                    "best_epoch": metrics["best_epoch"],
                    "epochs_run": metrics["epochs_run"],
                    "train_seconds": metrics["train_seconds"],
                    "wall_seconds": round(wall, 2),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
            shutil.rmtree(Path(scratch) / f"seed{seed}", ignore_errors=True)
            shutil.rmtree(Path(scratch) / "models", ignore_errors=True)
    accuracies = [r["test_accuracy"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    summary = {
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_min": min(accuracies),
        "accuracy_max": max(accuracies),
        "wall_seconds_mean": statistics.mean(walls),
        "wall_seconds_max": max(walls),
    }
    info = machine()
    result = {
        "benchmark": "imgcls train, configs/digits.yaml",
        "date": date.today().isoformat(),
        "machine": info,
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "overrides": args.overrides,
        "summary": summary,
        "runs": runs,
    }
    folder = result_folder(args.out, args.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# {result['benchmark']}",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, {result['date']}. Wall time is the whole `imgcls train` process, bundle export included.",
        "",
        "| seed | test accuracy | macro F1 | test images | best epoch | wall s |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['seed']} | {r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} | {r['test_samples']} | "
            f"{r['best_epoch']}/{r['epochs_run']} | {r['wall_seconds']:.1f} |"
            for r in runs
        ),
        "",
        f"Mean accuracy {summary['accuracy_mean']:.4f} (min {summary['accuracy_min']:.4f}); "
        f"mean wall {summary['wall_seconds_mean']:.1f} s (max {summary['wall_seconds_max']:.1f} s).",
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
