"""Bulk prediction against the in-process ceiling, on the same bundle and images.

    python -m benchmarks.bulk_predict --model mobilenet_v3_small --images 4096 --repeats 3

Exports a random-init speed bundle of ``--model`` (speed does not depend on trained weights), writes
``--images`` files cycling through 64 synthetic 320x240 JPEGs, measures the in-process ceiling that
``imgcls bench runtimes`` prints (the service's pipeline shape over its grid of threads and batch
sizes), then runs ``imgcls predict --bundle`` (:func:`service.bulk.predict_bulk`, CSV output) on the
folder ``--repeats`` times. Records both, and bulk prediction's share of the ceiling, to
benchmarks/results/<date>-<host>-bulk-predict-<model>/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

from benchmarks.ceiling import measure_ceiling
from benchmarks.images import synthetic_jpegs
from benchmarks.machine import machine, result_folder
from benchmarks.report import write_record

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from service.bulk import list_inputs, predict_bulk
    from trainer.export import export_random_init

    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "models" / args.model / "1"
        export_random_init(args.model, 1000, 224, bundle, formats=("torchscript", "onnx"))
        jpegs = synthetic_jpegs(count=64)
        folder = Path(scratch) / "images"
        folder.mkdir()
        for index in range(args.images):
            (folder / f"{index:06d}.jpg").write_bytes(jpegs[index % len(jpegs)])
        ceiling = measure_ceiling(
            bundle, jpegs, device="cpu", seconds=1.0, ceiling_seconds=args.ceiling_seconds
        )
        runs = []
        for repeat in range(args.repeats):
            out = Path(scratch) / f"predictions-{repeat}.csv"
            result = predict_bulk(bundle, list_inputs(folder), out, batch_size=args.batch_size, device="cpu")
            runs.append(
                {
                    "images": result.written,
                    "seconds": round(result.seconds, 3),
                    "images_per_s": round(result.images_per_second, 1),
                    "runtime": result.runtime,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    best = ceiling["ceiling"]
    mean = statistics.mean(r["images_per_s"] for r in runs)
    info = machine()
    record = {
        "benchmark": f"imgcls predict --bundle against the in-process ceiling, {args.model}",
        "date": date.today().isoformat(),
        "machine": info,
        "images": args.images,
        "batch_size": args.batch_size,
        "ceiling": ceiling,
        "bulk_runs": runs,
        "bulk_mean_images_per_s": round(mean, 1),
        "share_of_ceiling": round(mean / best["images_per_s"], 3),
    }
    lines = [
        f"# {record['benchmark']}",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}, {record['date']}. "
        f"Random-init {args.model} (1000 classes, 224 px), {args.images} JPEG files of 320x240 (64 distinct "
        "images, in the page cache), CPU.",
        "",
        "| | images/s |",
        "|---|---:|",
        f"| in-process ceiling (`imgcls bench runtimes`: {best['runtime']}, {best['intra_op_threads']} runtime "
        f"thread(s), {best['decode_threads']} decode thread(s), batch <= {best['batch_size']}) | {best['images_per_s']:.1f} |",
        *(
            f"| `imgcls predict --bundle`, run {i + 1} (batch {args.batch_size}, CSV out) | {r['images_per_s']:.1f} |"
            for i, r in enumerate(runs)
        ),
        f"| **bulk mean, share of the ceiling** | **{mean:.1f} ({100 * record['share_of_ceiling']:.0f} %)** |",
        "",
    ]
    write_record(result_folder(args.out, f"bulk-predict-{args.model}"), record, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
