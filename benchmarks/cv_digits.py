"""Cross-validate the digits recipe, with an RBF-SVM on the same folds in the same table.

    python -m benchmarks.cv_digits --folds 5

Runs ``imgcls cv --config configs/digits.yaml --folds K`` (one process, so the wall time is what a
user waits for), then, on each fold's own split (its ``split.csv``), scikit-learn's RBF-SVM on the raw
pixels scaled to [0, 1]: *default* (C=1, gamma="scale") fitted on all of the fold's non-test images
(train + val, as ``cross_val_score`` would), and *tuned* (the best C x gamma of a small grid on the
fold's val split, refitted on train + val). Both are scored on the fold's test images, the CNN's.
Writes benchmarks/results/<date>-<host>-cv-digits/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.machine import machine, result_folder
from benchmarks.report import write_record
from benchmarks.train_digits import SVM_C, SVM_GAMMA, _pixels, svm_grid

ROOT = Path(__file__).resolve().parent.parent


def fold_svm(fold_dir: Path) -> dict[str, float]:
    """The RBF-SVM's test accuracy on one fold's split: defaults, and tuned on its val split."""
    from sklearn.svm import SVC

    from trainer.rundir import RunDir

    run = RunDir(fold_dir)
    splits = run.read_splits(run.read_labels())
    x_train, y_train = _pixels(splits["train"])
    x_val, y_val = _pixels(splits["val"])
    x_test, y_test = _pixels(splits["test"])
    x_fit, y_fit = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    _, best, _ = svm_grid(x_train, y_train, x_val, y_val)
    return {
        "svm_default": float(SVC(kernel="rbf").fit(x_fit, y_fit).score(x_test, y_test)),
        "svm_tuned": float(
            SVC(kernel="rbf", C=best[0], gamma=best[1]).fit(x_fit, y_fit).score(x_test, y_test)
        ),
        "svm_C": best[0],
        "svm_gamma": best[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the folds' runs here (default: a temp dir)"
    )
    parser.add_argument("--name", default="cv-digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from trainer.cv import summarize

    imgcls = [sys.executable, "-m", "imgcls"]
    if not args.data.is_dir():
        subprocess.run([*imgcls, "data", "digits", "--out", str(args.data)], check=True)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch) / "cv"
        command = [*imgcls, "cv", "--config", str(args.config), "--data", str(args.data)]
        command += ["--folds", str(args.folds), "--out", str(work), "--set", f"runs_dir={scratch}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        cv = json.loads((work / "cv.json").read_text())
        folds = [{**row, **fold_svm(work / row["run"])} for row in cv["per_fold"]]
    summary = {
        "cnn_accuracy": summarize([f["accuracy"] for f in folds]),
        "cnn_f1_macro": summarize([f["f1_macro"] for f in folds]),
        "svm_default_accuracy": summarize([f["svm_default"] for f in folds]),
        "svm_tuned_accuracy": summarize([f["svm_tuned"] for f in folds]),
    }
    info = machine()
    result = {
        "benchmark": f"imgcls cv --folds {args.folds}, configs/digits.yaml",
        "date": date.today().isoformat(),
        "machine": info,
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "load_1m_at_start": round(load_at_start, 2),
        "wall_seconds": round(wall, 1),
        "svm": {
            "model": "sklearn.svm.SVC(kernel='rbf') on raw pixels scaled to [0, 1]",
            "default": "C=1, gamma='scale', fitted on the fold's train + val images",
            "tuned": {
                "C": list(SVM_C),
                "gamma": list(SVM_GAMMA),
                "selection": "best on the fold's val split",
            },
        },
        "summary": summary,
        "folds": folds,
    }

    def cell(stats: dict) -> str:
        return f"**{stats['mean']:.4f} ± {stats['sd']:.4f}**"

    def interval(stats: dict) -> str:
        return f"{stats['ci95_low']:.4f} – {stats['ci95_high']:.4f}"

    lines = [
        f"# {result['benchmark']}",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, {result['date']}; 1-minute load average {load_at_start:.1f} at the start. "
        f"`imgcls cv` took {wall:.0f} s for the {args.folds} folds (one process, training only, no export).",
        "",
        "Stratified folds (seed 0). Each fold's test split is the fold; its train and val splits are the "
        "other folds, 10 % of them for validation (the CNN's checkpoint selection). The RBF-SVM "
        "(`sklearn.svm.SVC`, raw pixels scaled to [0, 1]) is scored on the same test images: *default* "
        "C=1, gamma='scale' fitted on train + val; *tuned* the best on the val split of "
        f"C in {list(SVM_C)} x gamma in {list(SVM_GAMMA)}, refitted on train + val.",
        "",
        "| fold | test images | CNN accuracy | CNN macro F1 | best epoch | SVM default | SVM tuned (C, gamma) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {f['fold']} | {f['test_images']} | {f['accuracy']:.4f} | {f['f1_macro']:.4f} | "
            f"{f['best_epoch']}/{f['epochs_run']} | {f['svm_default']:.4f} | "
            f"{f['svm_tuned']:.4f} ({f['svm_C']:g}, {f['svm_gamma']}) |"
            for f in folds
        ),
        f"| mean ± sd | | {cell(summary['cnn_accuracy'])} | {cell(summary['cnn_f1_macro'])} | | "
        f"{cell(summary['svm_default_accuracy'])} | {cell(summary['svm_tuned_accuracy'])} |",
        f"| 95 % interval | | {interval(summary['cnn_accuracy'])} | {interval(summary['cnn_f1_macro'])} | | "
        f"{interval(summary['svm_default_accuracy'])} | {interval(summary['svm_tuned_accuracy'])} |",
        "",
    ]
    write_record(result_folder(args.out, args.name), result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
