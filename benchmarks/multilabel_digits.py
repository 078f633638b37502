"""Multilabel on the embedded digit grids: what each multilabel loss of the training config buys.

    python -m benchmarks.multilabel_digits --seeds 0 1 2

``imgcls data digit-grid`` writes 16x16 grids of 2x2 cells, each a digit or empty, labelled with the
digits present. ``configs/digit_grid.yaml`` is trained in-process once per loss below and seed (each
seed its own split), everything else equal; each run's test mAP, micro/macro F1 at the tuned
thresholds, subset accuracy and Hamming loss are recorded. Writes
benchmarks/results/<date>-<host>-multilabel-digits/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

from benchmarks.machine import machine, result_folder
from benchmarks.recipes import train_recipe
from benchmarks.report import write_record

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {
    "binary cross-entropy": ["optim.loss=bce"],
    "bce + inverse-frequency pos_weight": ["optim.loss=bce", "optim.class_weights=inverse_frequency"],
    "focal (gamma 2)": ["optim.loss=focal", "optim.focal_gamma=2"],
    "asymmetric (gamma- 4, clip 0.05)": ["optim.loss=asymmetric"],
}
METRICS = ("map", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss")


def run_option(data: Path, runs: Path, name: str, overrides: list[str], seed: int) -> dict:
    result, seconds = train_recipe("digit_grid.yaml", data, runs, name, seed, overrides)
    metrics = result.test_metrics
    return {"option": name, "seed": seed, **{key: float(metrics[key]) for key in METRICS}, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="multilabel-digits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from trainer.digits import write_digit_grid

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "digit_grid"
        write_digit_grid(data)
        for seed in args.seeds:
            for name, overrides in OPTIONS.items():
                runs.append(run_option(data / "labels.csv", Path(scratch) / "runs", name, overrides, seed))
                print(json.dumps(runs[-1]), flush=True)
    summary = {
        name: {
            key: statistics.mean(r[key] for r in runs if r["option"] == name) for key in (*METRICS, "seconds")
        }
        for name in OPTIONS
    }
    info = machine()
    result = {
        "benchmark": "multilabel losses on the digit grids, configs/digit_grid.yaml",
        "date": date.today().isoformat(),
        "machine": info,
        "seeds": args.seeds,
        "options": OPTIONS,
        "summary": summary,
        "runs": runs,
    }

    def spread(name: str, key: str) -> str:
        values = [r[key] for r in runs if r["option"] == name]
        return f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})"

    lines = [
        f"# {result['benchmark']}",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, {result['date']}. `imgcls data digit-grid` (906 grids of 2x2 cells from "
        f"the 1,797 digits, each digit used once); `configs/digit_grid.yaml` otherwise unchanged; seeds "
        f"{', '.join(map(str, args.seeds))}, each its own split (test: 182 grids). Mean (min–max) over seeds; "
        "F1 and subset accuracy at the thresholds tuned on val; Hamming loss: lower is better.",
        "",
        "| loss | test mAP | micro F1 | macro F1 | subset accuracy | Hamming loss | s per run |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {spread(name, 'map')} | {spread(name, 'f1_micro')} | {spread(name, 'f1_macro')} | "
            f"{spread(name, 'subset_accuracy')} | {spread(name, 'hamming_loss')} | "
            f"{summary[name]['seconds']:.0f} |"
            for name in OPTIONS
        ),
        "",
    ]
    write_record(result_folder(args.out, args.name), result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
