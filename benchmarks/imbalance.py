"""Imbalanced classes on digits: what each option of the training config buys the rare classes.

    python -m benchmarks.imbalance --seeds 0 1 2

Per seed, the digits (``imgcls data digits``) are split 70/10/20 (stratified, by the seed), then three
classes keep only ``--keep`` (5 %) of their training images; validation and test stay as they were,
so the rare classes are measured on as many images as the others. ``configs/digits.yaml`` is then
trained in-process once per option below, with everything else equal; each run's test macro-F1 and
the rare classes' mean recall are recorded. Writes
benchmarks/results/<date>-<host>-imbalance/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.machine import machine, result_folder
from benchmarks.recipes import train_recipe
from benchmarks.report import write_record

ROOT = Path(__file__).resolve().parent.parent
RARE = ("3", "5", "8")  # the classes cut down: 3, 5 and 8 are the ones digits confuses most
OPTIONS = {
    "none": [],
    "inverse frequency weights": ["optim.class_weights=inverse_frequency"],
    "effective number weights (beta 0.99)": [
        "optim.class_weights=effective_number",
        "optim.effective_number_beta=0.99",
    ],
    "class-balanced sampler": ["train.sampler=class_balanced"],
    "focal loss (gamma 2)": ["optim.loss=focal", "optim.focal_gamma=2"],
    "focal + effective number": [
        "optim.loss=focal",
        "optim.focal_gamma=2",
        "optim.class_weights=effective_number",
        "optim.effective_number_beta=0.99",
    ],
    "selection on balanced accuracy": ["train.early_stopping_metric=balanced_accuracy"],
    "balanced sampler + balanced accuracy": [
        "train.sampler=class_balanced",
        "train.early_stopping_metric=balanced_accuracy",
    ],
}


def imbalanced_copy(digits: Path, out: Path, seed: int, keep: float) -> dict[str, int]:
    """``out/{train,val,test}/<class>/`` as links into ``digits``; returns the training counts."""
    from sklearn.model_selection import train_test_split

    files = sorted(digits.glob("*/*.png"))
    labels = [f.parent.name for f in files]
    rest, test = train_test_split(files, test_size=0.2, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=0.125, stratify=[f.parent.name for f in rest], random_state=seed
    )
    rng = np.random.default_rng(seed)
    kept = []
    for label in sorted({f.parent.name for f in train}):
        mine = [f for f in train if f.parent.name == label]
        if label in RARE:
            count = max(1, round(keep * len(mine)))
            mine = [mine[i] for i in sorted(rng.choice(len(mine), count, replace=False))]
        kept += mine
    for split, chosen in (("train", kept), ("val", val), ("test", test)):
        for f in chosen:
            target = out / split / f.parent.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.resolve())
    return {
        label: sum(f.parent.name == label for f in kept) for label in sorted({f.parent.name for f in kept})
    }


def run_option(data: Path, runs: Path, name: str, overrides: list[str], seed: int) -> dict:
    result, seconds = train_recipe("digits.yaml", data, runs, name, seed, overrides)
    with (result.run_dir / "per_class.csv").open(newline="") as handle:
        per_class = {row["class"]: row for row in csv.DictReader(handle)}
    metrics = result.test_metrics
    return {
        "option": name,
        "seed": seed,
        "macro_f1": float(metrics["f1_macro"]),
        "accuracy": float(metrics["accuracy"]),
        "rare_recall": float(np.mean([float(per_class[c]["recall"]) for c in RARE])),
        "rare_recall_min": float(min(float(per_class[c]["recall"]) for c in RARE)),
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--keep", type=float, default=0.05, help="share of the rare classes' training images kept"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    parser.add_argument(
        "--options", nargs="*", default=list(OPTIONS), help="names from OPTIONS (default: all)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(
            f"{args.data} does not exist; run `imgcls data digits --out data/digits` (or make demo) first"
        )
    logging.getLogger("imgcls").setLevel(logging.WARNING)

    rows, counts = [], {}
    with tempfile.TemporaryDirectory(prefix="imgcls-imbalance-") as scratch:
        for seed in args.seeds:
            data = Path(scratch) / f"digits-seed{seed}"
            counts[seed] = imbalanced_copy(args.data, data, seed, args.keep)
            for name in args.options:
                row = run_option(data, Path(scratch) / "runs", name, OPTIONS[name], seed)
                rows.append(row)
                print(json.dumps(row), flush=True)

    summary = []
    for name in args.options:
        mine = [r for r in rows if r["option"] == name]
        summary.append(
            {
                "option": name,
                "overrides": OPTIONS[name],
                **{
                    f"{key}_{stat}": round(fn([r[key] for r in mine]), 4)
                    for key in ("macro_f1", "rare_recall", "rare_recall_min", "accuracy")
                    for stat, fn in (("mean", statistics.mean), ("min", min))
                },
            }
        )
    info = machine()
    result = {
        "benchmark": "imbalance",
        "date": date.today().isoformat(),
        "machine": info,
        "settings": {
            "seeds": args.seeds,
            "keep": args.keep,
            "rare_classes": list(RARE),
            "config": "configs/digits.yaml",
        },
        "training_counts": counts,
        "summary": summary,
        "runs": rows,
    }
    rare_counts = ", ".join(
        f"seed {seed}: " + "/".join(str(c[r]) for r in RARE) + f" of ~{int(np.median(list(c.values())))}"
        for seed, c in counts.items()
    )
    lines = [
        f"# Imbalanced digits: classes {', '.join(RARE)} cut to {args.keep:.0%} of their training images",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {result['date']}; configs/digits.yaml "
        f"(20 epochs), seeds {', '.join(map(str, args.seeds))}; rare training images per seed ({rare_counts} "
        "for the other classes); validation and test untouched.",
        "",
        "| option | test macro-F1 (mean, min) | rare classes' recall (mean, min over seeds) | worst rare class's recall (mean) | test accuracy (mean) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {s['option']} | {s['macro_f1_mean']:.4f}, {s['macro_f1_min']:.4f} | "
            f"{s['rare_recall_mean']:.4f}, {s['rare_recall_min']:.4f} | {s['rare_recall_min_mean']:.4f} | "
            f"{s['accuracy_mean']:.4f} |"
            for s in summary
        ),
        "",
    ]
    write_record(result_folder(args.out, "imbalance"), result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
