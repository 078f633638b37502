"""Record the digits quality bar: test accuracy and wall time of `imgcls train` over several seeds.

    python benchmarks/train_digits.py --seeds 0 1 2 3 4

Each seed is a separate `imgcls train` process, bundle export included, so the wall time is
what a user waits for (Python imports too). For scale, each seed's split (the run's split.csv) also
trains scikit-learn's RBF-SVM on the raw pixels scaled to [0, 1]: the defaults (C=1, gamma="scale"),
and the best of a small C x gamma grid chosen on the validation split; both are scored on the same
test images as the CNN. Writes benchmarks/results/<date>-<host>-train-digits/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.machine import machine, result_folder

ROOT = Path(__file__).resolve().parent.parent
SVM_C = (1.0, 10.0, 100.0)  # the first pair of the grid is scikit-learn's default
SVM_GAMMA = ("scale", 0.01, 0.1)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pixels(samples: list) -> tuple[np.ndarray, np.ndarray]:
    """One row per image: its grayscale pixels at their stored size, scaled to [0, 1]."""
    from PIL import Image

    rows = []
    for sample in samples:
        with Image.open(sample.path) as image:
            rows.append(np.asarray(image.convert("L"), dtype=np.float32).ravel() / 255.0)
    return np.stack(rows), np.array([sample.label for sample in samples])


def rbf_svm(run_dir: Path) -> dict:
    """SVC(kernel="rbf") trained on a run's train split, C and gamma picked on its val split (ties go to
    the earlier pair, so the default wins a tie), scored on its test split."""
    from trainer.rundir import RunDir

    run = RunDir(run_dir)
    splits = run.read_splits(run.read_labels())
    x_train, y_train = _pixels(splits["train"])
    x_val, y_val = _pixels(splits["val"])
    x_test, y_test = _pixels(splits["test"])
    fitted, best, val_accuracy = svm_grid(x_train, y_train, x_val, y_val)
    return {
        "svm_default_test_accuracy": float(fitted[(1.0, "scale")].score(x_test, y_test)),
        "svm_test_accuracy": float(fitted[best].score(x_test, y_test)),
        "svm_val_accuracy": val_accuracy,
        "svm_C": best[0],
        "svm_gamma": best[1],
    }


def svm_grid(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> tuple[dict, tuple[float, float | str], float]:
    """SVC(kernel="rbf") fitted on train for each C x gamma of the grid; the pair best on val (ties go
    to the earlier pair, so the default wins a tie) and its val accuracy."""
    from sklearn.svm import SVC

    fitted = {
        (c, gamma): SVC(kernel="rbf", C=c, gamma=gamma).fit(x_train, y_train)
        for c in SVM_C
        for gamma in SVM_GAMMA
    }
    val = {pair: model.score(x_val, y_val) for pair, model in fitted.items()}
    best = max(val, key=val.__getitem__)
    return fitted, best, float(val[best])


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

    imgcls = [sys.executable, "-m", "imgcls"]
    if not args.data.is_dir():
        subprocess.run([*imgcls, "data", "digits", "--out", str(args.data)], check=True)
    runs = []
    load_at_start = os.getloadavg()[0]  # other work on the machine inflates the wall times
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
            cpu_before = _children_cpu_seconds()
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            cpu = _children_cpu_seconds() - cpu_before
            metrics = json.loads((Path(scratch) / f"seed{seed}" / "metrics.json").read_text())
            svm = rbf_svm(Path(scratch) / f"seed{seed}")
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
                    "cpu_seconds": round(cpu, 2),  # user + system, all threads
                    **svm,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
            shutil.rmtree(Path(scratch) / f"seed{seed}", ignore_errors=True)
            shutil.rmtree(Path(scratch) / "models", ignore_errors=True)
    accuracies = [r["test_accuracy"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    svm_tuned = [r["svm_test_accuracy"] for r in runs]
    svm_default = [r["svm_default_test_accuracy"] for r in runs]
    summary = {
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_min": min(accuracies),
        "accuracy_max": max(accuracies),
        "svm_accuracy_mean": statistics.mean(svm_tuned),
        "svm_accuracy_min": min(svm_tuned),
        "svm_accuracy_max": max(svm_tuned),
        "svm_default_accuracy_mean": statistics.mean(svm_default),
        "svm_default_accuracy_min": min(svm_default),
        "wall_seconds_mean": statistics.mean(walls),
        "wall_seconds_max": max(walls),
        "cpu_per_wall_second": sum(r["cpu_seconds"] for r in runs) / sum(walls),
    }
    info = machine()
    result = {
        "benchmark": "imgcls train, configs/digits.yaml",
        "date": date.today().isoformat(),
        "machine": info,
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "overrides": args.overrides,
        "load_1m_at_start": round(load_at_start, 2),
        "svm": {
            "model": "sklearn.svm.SVC(kernel='rbf') on raw pixels scaled to [0, 1]",
            "grid": {"C": list(SVM_C), "gamma": list(SVM_GAMMA)},
            "selection": "highest val accuracy; trained on train only; scored on the run's test split",
        },
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
        f"1-minute load average at the start: {load_at_start:.1f} on {info['cores']} cores; the training "
        f"processes used {summary['cpu_per_wall_second']:.2f} CPU-seconds per wall second "
        "(a load well above 0, or a ratio well below the thread count, means other work shared the CPUs "
        "and the wall times are inflated).",
        "",
        "For scale, an RBF-SVM (`sklearn.svm.SVC(kernel='rbf')`) on each seed's own split: raw pixels "
        "scaled to [0, 1], trained on the train split, scored on the same test images; *default* is "
        "C=1, gamma='scale', *tuned* the best on the val split of "
        f"C in {list(SVM_C)} x gamma in {list(SVM_GAMMA)}.",
        "",
        "| seed | test accuracy | macro F1 | test images | best epoch | wall s | SVM default | SVM tuned (C, gamma) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['seed']} | {r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} | {r['test_samples']} | "
            f"{r['best_epoch']}/{r['epochs_run']} | {r['wall_seconds']:.1f} | "
            f"{r['svm_default_test_accuracy']:.4f} | {r['svm_test_accuracy']:.4f} ({r['svm_C']:g}, {r['svm_gamma']}) |"
            for r in runs
        ),
        "",
        f"Mean accuracy {summary['accuracy_mean']:.4f} (min {summary['accuracy_min']:.4f}); "
        f"mean wall {summary['wall_seconds_mean']:.1f} s (max {summary['wall_seconds_max']:.1f} s). "
        f"RBF-SVM: tuned {summary['svm_accuracy_mean']:.4f} mean (min {summary['svm_accuracy_min']:.4f}), "
        f"default {summary['svm_default_accuracy_mean']:.4f} mean (min {summary['svm_default_accuracy_min']:.4f}).",
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
