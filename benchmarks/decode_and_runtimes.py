"""Record what the service's choices rest on: JPEG decoder speed, and runtime speed for a bundle.

    python benchmarks/decode_and_runtimes.py --bundle models/digits/1

Single-process, in-process timings (no HTTP), after warm-up. Writes
benchmarks/results/<date>-<host>-decode-runtimes/{results.json,results.md}. The fuller
`imgcls bench runtimes` (all batch sizes, all runtimes, the in-process ceiling) comes with the
benchmarks issue.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.machine import machine

ROOT = Path(__file__).resolve().parent.parent


def per_call(fn, seconds: float = 2.0) -> float:
    for _ in range(20):
        fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "digits" / "1")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from service.runtimes import OnnxRuntime, TorchScriptRuntime
    from trainer.manifest import load_manifest
    from trainer.transforms import decode_converted

    rng = np.random.default_rng(0)
    gradient = (np.add.outer(np.arange(240), np.arange(320))[..., None] * [1, 2, 3] % 256).astype(np.int64)
    picture = np.clip(gradient + rng.integers(0, 30, gradient.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    def pillow() -> None:
        with Image.open(io.BytesIO(data)) as image:
            F.pil_to_tensor(decode_converted(image, "RGB"))

    def torchvision_jpeg() -> None:
        decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    decode = {
        name: per_call(fn) * 1e6
        for name, fn in (("pillow", pillow), ("torchvision.io.decode_jpeg", torchvision_jpeg))
    }

    manifest = load_manifest(args.bundle)
    shape = (manifest.input.channels, manifest.input.height, manifest.input.width)
    runtimes = {
        "onnxruntime": OnnxRuntime(args.bundle / "model.onnx", intra_op_threads=args.threads),
        "torchscript": TorchScriptRuntime(
            args.bundle / "model.torchscript.pt", intra_op_threads=args.threads
        ),
    }
    rows = []
    for batch_size in (1, 8, 32):
        batch = rng.standard_normal((batch_size, *shape)).astype(np.float32)
        for name, runtime in runtimes.items():
            seconds = per_call(lambda runtime=runtime, batch=batch: runtime.infer(batch))
            rows.append(
                {
                    "runtime": name,
                    "batch_size": batch_size,
                    "ms_per_batch": seconds * 1e3,
                    "images_per_s": batch_size / seconds,
                }
            )

    info = machine()
    result = {
        "date": date.today().isoformat(),
        "machine": info,
        "bundle": str(args.bundle),
        "architecture": manifest.architecture,
        "input": list(shape),
        "jpeg_320x240_decode_us": decode,
        "runtimes": rows,
    }
    folder = args.out / f"{date.today().isoformat()}-{info['host']}-decode-runtimes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# JPEG decoding and runtime speed (in-process, no HTTP)",
        "",
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {result['date']}. "
        f"Bundle {manifest.name} v{manifest.version} ({manifest.architecture}, input {'x'.join(map(str, shape))}).",
        "",
        "| 320x240 JPEG decode, 1 thread | µs/image |",
        "|---|---:|",
        *(f"| {name} | {us:.0f} |" for name, us in decode.items()),
        "",
        "| runtime | batch | ms/batch | images/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['runtime']} | {r['batch_size']} | {r['ms_per_batch']:.3f} | {r['images_per_s']:,.0f} |"
            for r in rows
        ),
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
