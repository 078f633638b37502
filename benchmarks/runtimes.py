"""`imgcls bench runtimes`: what the hardware can do for a bundle without HTTP.

Three measurements, all in this process, after warm-up:

* **runtimes**: latency and images/s of every runtime available here (eager PyTorch, TorchScript,
  ONNX Runtime, and TensorRT where its artifact and library exist) for batch sizes 1, 2, 4, ... 64.
  Eager PyTorch rebuilds the bundle's architecture with random weights: speed does not depend on
  the weights, and a bundle carries no eager checkpoint.
* **preprocessing**: decode + resize + crop + normalise per image, for each decoder the service can
  use (``torchvision.io.decode_jpeg`` for JPEGs, Pillow for everything), one thread.
* **the in-process ceiling** (``benchmarks.ceiling``): the best images/s of the service's own pipeline
  shape, without the service, and the single-image latency.
"""

from __future__ import annotations

import io
import itertools
import statistics
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.artifact_runtimes import load_every_artifact
from benchmarks.ceiling import measure_ceiling
from benchmarks.report import figure_line, machine_line, plotting_available, saved_figure
from benchmarks.timing import time_calls
from imgcls.errors import describe_error
from imgcls.extras import missing_requirements
from imgcls.formats import artifacts_of, format_named, runtime_label
from imgcls.manifest import Manifest
from service.batcher import doubling_batch_sizes
from service.preprocess import Preprocessor, init_decode_thread
from service.runtimes import Runtime, resolve_device, softmax

__all__ = [
    "EagerRuntime",
    "available_runtimes",
    "bench_runtimes",
    "runtime_timings",
    "write_runtimes_report",
]


class EagerRuntime(Runtime):
    """The bundle's architecture as a plain ``nn.Module`` (random weights), fp32, for comparison."""

    name = "eager"  # type: ignore[assignment]

    def __init__(self, manifest: Manifest, *, device: str = "cpu") -> None:
        import torch

        from trainer.models import create_model

        built = create_model(
            manifest.architecture,
            manifest.num_classes,
            in_chans=manifest.input.channels,
            image_size=manifest.input.height,
        )
        self._model = built.model.eval().to(device)
        self._torch = torch
        self.device = device
        self.precision = "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self._model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
            return softmax(logits.float().cpu().numpy())


def available_runtimes(
    manifest: Manifest,
    bundle_dir: Path,
    *,
    device: str,
    intra_op_threads: int | None,
    layout_batch_size: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Runtime], dict[str, str]]:
    """Every runtime that loads here for this bundle, and why each of the others did not.

    With ``layout_batch_size``, each runtime chooses its input layout as the service's warm-up
    does (channels-last where it measures faster on CUDA), so in-process figures match what is served."""
    from service.errors import RuntimeUnavailableError

    runtimes: dict[str, Runtime] = {}
    skipped: dict[str, str] = {}

    def attempt(label: str, build: Callable[[], Runtime]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                runtimes[label] = build()
        except RuntimeUnavailableError as exc:
            skipped[label] = str(exc)
        except Exception as exc:  # a model the eager builder cannot rebuild, a provider that fails
            skipped[label] = describe_error(exc)

    missing = missing_requirements("train")
    if manifest.architecture and missing:  # the eager model is built with the trainer's model registry
        skipped["eager"] = (
            f'needs the train extra (missing: {", ".join(missing)}): pip install "imgcls[train]"'
        )
    elif manifest.architecture:
        attempt("eager", lambda: EagerRuntime(manifest, device=device))
    for name, what in (("torchscript", "TorchScript"), ("onnx", "ONNX")):
        if not artifacts_of(manifest, name):
            skipped[runtime_label(format_named(name).runtime, "fp32")] = f"the bundle has no {what} artifact"
    loaded, failed = load_every_artifact(
        manifest, bundle_dir, device=device, intra_op_threads=intra_op_threads
    )
    if layout_batch_size:
        batch = np.zeros((layout_batch_size, *manifest.input.shape), dtype=np.float32)
        for label, runtime in loaded.items():
            limit = runtime.max_batch_size or layout_batch_size
            layout = runtime.choose_memory_format(batch[:limit], "auto")
            if layout:
                log(f"{label}: {layout}")
    return {**runtimes, **loaded}, {**skipped, **failed}


def runtime_timings(
    runtimes: dict[str, Runtime], shape: tuple[int, int, int], batch_sizes: list[int], seconds: float
) -> list[dict]:
    """One row per (runtime, batch size): latency per batch and images/s."""
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, *shape)).astype(np.float32)
        for name, runtime in runtimes.items():
            limit = getattr(runtime, "max_batch_size", None)
            if limit is not None and batch_size > limit:
                continue  # a TensorRT engine rejects batches above its max shape
            timing = time_calls(lambda runtime=runtime, batch=batch: runtime.infer(batch), seconds)
            rows.append(
                {
                    "runtime": name,
                    "device": runtime.device,
                    "precision": runtime.precision,
                    "batch_size": batch_size,
                    "p50_ms": round(timing.p50_ms, 3),
                    "p99_ms": round(timing.p99_ms, 3),
                    "images_per_s": round(batch_size / (timing.mean_ms / 1e3), 1),
                }
            )
    return rows


def _pillow_path(preprocessor: Preprocessor) -> Callable[[bytes], np.ndarray]:
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from imgcls.preprocess import decode_converted, eval_transform

    transform = eval_transform(preprocessor.spec)
    mode = preprocessor.spec.color_mode

    def run(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return transform(F.pil_to_tensor(decode_converted(image, mode))).numpy()

    return run


def preprocess_timings(preprocessor: Preprocessor, images: list[bytes], seconds: float) -> list[dict]:
    """Per image, one thread (torch single-threaded, as in the service's decode threads): the
    service's own path, and the Pillow path it falls back to."""
    with ThreadPoolExecutor(1, initializer=init_decode_thread) as thread:
        return thread.submit(_preprocess_timings, preprocessor, images, seconds).result()


def _preprocess_timings(preprocessor: Preprocessor, images: list[bytes], seconds: float) -> list[dict]:
    jpeg = all(data[:3] == b"\xff\xd8\xff" for data in images)
    paths = {"pillow": _pillow_path(preprocessor)}
    if jpeg:  # the service's path for JPEGs; for other formats it is the Pillow path above
        paths = {"torchvision.io.decode_jpeg": preprocessor, **paths}
    rows = []
    for decoder, run in paths.items():
        turn = itertools.count()
        timing = time_calls(lambda run=run, turn=turn: run(images[next(turn) % len(images)]), seconds)
        rows.append(
            {
                "decoder": decoder,
                "p50_ms": round(timing.p50_ms, 3),
                "p99_ms": round(timing.p99_ms, 3),
                "images_per_s_one_thread": round(1e3 / timing.mean_ms, 1),
            }
        )
    return rows


def bench_runtimes(
    bundle_dir: Path,
    images: list[bytes],
    *,
    device: str = "auto",
    batch_sizes: list[int] | None = None,
    seconds: float = 2.0,
    ceiling_seconds: float = 4.0,
    intra_op_threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run all three measurements for the bundle; return the results document (see results.json)."""

    from imgcls.manifest import load_manifest

    device = resolve_device(device)
    manifest = load_manifest(bundle_dir)
    shape = (manifest.input.channels, manifest.input.height, manifest.input.width)
    sizes = batch_sizes or doubling_batch_sizes(64)
    runtimes, skipped = available_runtimes(
        manifest,
        bundle_dir,
        device=device,
        intra_op_threads=intra_op_threads,
        layout_batch_size=max(sizes),
        log=log,
    )
    if not runtimes:
        raise RuntimeError(f"no runtime loads {bundle_dir} here: {skipped}")
    for name, reason in skipped.items():
        log(f"skipped {name}: {reason}")
    log(f"runtimes {', '.join(runtimes)} on {device}, batch sizes {sizes}")
    rows = runtime_timings(runtimes, shape, sizes, seconds)

    preprocessor = Preprocessor(manifest.preprocess)
    preprocessing = preprocess_timings(preprocessor, images, seconds)
    log(f"preprocessing: {preprocessing}")
    for runtime in runtimes.values():
        runtime.close()
    reference = measure_ceiling(
        bundle_dir,
        images,
        device=device,
        intra_op_threads=intra_op_threads,
        seconds=seconds,
        ceiling_seconds=ceiling_seconds,
        log=log,
    )
    return {
        "bundle": str(bundle_dir),
        "model": manifest.name,
        "architecture": manifest.architecture,
        "weights": manifest.weights,
        "input": list(shape),
        "device": device,
        "intra_op_threads": intra_op_threads,
        "image_bytes_mean": round(statistics.fmean(len(i) for i in images)),
        "runtimes": rows,
        "skipped": skipped,
        "preprocessing": preprocessing,
        **reference,
    }


def write_runtimes_report(document: dict, folder: Path) -> Path:
    """results.json, results.md and images-per-s-by-batch.png in ``folder``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    best = document["ceiling"]
    lines = [
        f"# Runtimes: {document['model']} ({document['architecture']}, input {'x'.join(map(str, document['input']))}) "
        f"on {document['device']}, in-process",
        "",
        f"{machine_line(document)}. Images: {document['images']} (mean {document['image_bytes_mean']:,} bytes).",
        "",
        f"**In-process ceiling: {best['images_per_s']:,} images/s** ({best['runtime']} with "
        f"{best['intra_op_threads'] or 'its default'} thread(s), {best['decode_threads']} decode thread(s), batches "
        f"up to {best['batch_size']}, mean batch {best['mean_batch']}). **Single image, decode + infer: p50 "
        f"{document['single_image_latency_ms']['p50']} ms**, p99 {document['single_image_latency_ms']['p99']} ms "
        f"(runtime threads as `imgcls serve` sets them: {document['serving_intra_op_threads'] or 'default'}).",
        "",
        "| runtime | device | precision | batch | p50 ms | p99 ms | images/s |",
        "|---|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['runtime']} | {r['device']} | {r['precision']} | {r['batch_size']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['images_per_s']:,} |"
            for r in document["runtimes"]
        ),
        "",
        *(f"Not measured: {name}: {reason}." for name, reason in document["skipped"].items()),
        "",
        "| preprocessing (decode + resize + crop + normalise), 1 thread | p50 ms | p99 ms | images/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['decoder']} | {r['p50_ms']} | {r['p99_ms']} | {r['images_per_s_one_thread']:,} |"
            for r in document["preprocessing"]
        ),
        "",
        "| pipeline: runtime threads | decode threads | max batch | mean batch | images/s |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {c['intra_op_threads'] or 'default'} | {c['decode_threads']} | {c['batch_size']} | "
            f"{c['mean_batch']} | {c['images_per_s']:,} |"
            for c in document["pipeline"]
        ),
        "",
        figure_line("images/s by batch size", "images-per-s-by-batch.png"),
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))

    if plotting_available():
        with saved_figure(folder / "images-per-s-by-batch.png") as (_, ax):
            for name in dict.fromkeys(r["runtime"] for r in document["runtimes"]):
                rows = [r for r in document["runtimes"] if r["runtime"] == name]
                ax.plot(
                    [r["batch_size"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=name
                )
            ax.axhline(
                best["images_per_s"], color="grey", linestyle="--", label="in-process ceiling (with decode)"
            )
            ax.set_xscale("log", base=2)
            ax.set(
                xlabel="batch size",
                ylabel="images/s (inference only)",
                title=f"{document['architecture']} on {document['device']}",
            )
            ax.grid(alpha=0.3)
            ax.legend()
    return folder
