"""`imgcls bench pipeline`: what the serving pipeline delivers against what its runtime can do, and
which stage bounds it.

Three measurements of one bundle on one device:

1. **In-process, no HTTP**: eager FP32 PyTorch and every runtime of the bundle at each batch size.
   The runtime `imgcls serve` picks on this device is the *reference*; its best images/s over the
   batch sizes is the in-process figure, and the speed-up is against eager FP32's best.
2. **HTTP with preprocessed pixels**: `imgcls serve` driven with OIP binary FP32 `pixels` tensors,
   so the server does no decoding: what HTTP, the event loop and the batcher cost, as a share of
   the in-process figure.
3. **HTTP with JPEG bytes**: the same server decoding every image. The server's own metrics give
   how busy the decode threads and the runtime were over the run, so the report names the stage
   that bounds throughput, or says that neither did (the bound is then HTTP and the event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.load import build_payloads, run, run_closed_loop
from benchmarks.runtimes import available_runtimes, runtime_timings
from benchmarks.servers import imgcls_running

__all__ = [
    "SATURATED",
    "BatchSizeError",
    "Scrape",
    "bounding_stage",
    "parse_scrape",
    "run_pipeline",
    "stage_busy",
    "write_pipeline_report",
]


class BatchSizeError(ValueError):
    """No requested batch size fits the served runtime (a TensorRT engine's largest batch)."""


# A stage busy this share of the time or more is saturated: it is what limits throughput.
SATURATED = 0.85

_SECONDS_SUMS = {
    "imgcls_preprocess_duration_seconds": "decode",  # per image, on the decode threads
    "imgcls_device_preprocess_duration_seconds": "device_decode",  # per batch, on the device thread
    "imgcls_inference_duration_seconds": "runtime",  # per batch, on the inference thread
}


@dataclass(frozen=True)
class Scrape:
    """One /metrics scrape of one model: seconds spent per stage so far, the server's CPU seconds,
    and what it serves the model with."""

    at: float  # time.perf_counter() when taken
    stage_seconds: dict[str, float]
    cpu_seconds: float
    runtime: str | None  # runtime_label of imgcls_model_info, e.g. "torchscript", "tensorrt-int8"


def parse_scrape(metrics_text: str, model: str, at: float) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    from imgcls.formats import runtime_label

    stages = dict.fromkeys(_SECONDS_SUMS.values(), 0.0)
    cpu, runtime = 0.0, None
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "process_cpu_seconds_total":
                cpu = sample.value
            elif sample.labels.get("model") != model:
                continue
            elif sample.name.endswith("_sum") and sample.name[: -len("_sum")] in _SECONDS_SUMS:
                stages[_SECONDS_SUMS[sample.name[: -len("_sum")]]] += sample.value
            elif sample.name == "imgcls_model_info" and sample.value == 1:
                runtime = runtime_label(sample.labels["runtime"], sample.labels["precision"])
    return Scrape(at, stages, cpu, runtime)


def stage_busy(before: Scrape, after: Scrape, decode_threads: int) -> dict[str, float]:
    """The share of the time between two scrapes that each stage was occupied: the decode threads
    (together), the device decoding thread and the inference thread; and the server's CPU use in cores."""
    seconds = after.at - before.at

    def busy(stage: str, threads: int = 1) -> float:
        return round((after.stage_seconds[stage] - before.stage_seconds[stage]) / (seconds * threads), 3)

    return {
        "decode_busy": busy("decode", decode_threads),
        "device_decode_busy": busy("device_decode"),
        "runtime_busy": busy("runtime"),
        "server_cpu_cores": round((after.cpu_seconds - before.cpu_seconds) / seconds, 2),
    }


def bounding_stage(busy: dict[str, float]) -> str:
    """``decode``, ``device_decode`` or ``runtime``: the busiest stage when it is saturated; else ``http``."""
    shares = {stage: busy[f"{stage}_busy"] for stage in ("decode", "device_decode", "runtime")}
    stage = max(shares, key=shares.__getitem__)
    return stage if shares[stage] >= SATURATED else "http"


def _best(rows: list[dict], runtime: str) -> dict | None:
    mine = [row for row in rows if row["runtime"] == runtime]
    return max(mine, key=lambda row: row["images_per_s"]) if mine else None


def _serve(
    model_repo: Path,
    payloads: list,
    *,
    model: str,
    reference: str,
    env: dict[str, str],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    decode_threads: int,
) -> dict:
    scrapes: list[Scrape] = []
    with imgcls_running(model_repo, env, payloads[0]) as url:

        def scrape() -> None:
            response = httpx.get(f"{url}/metrics", timeout=30.0)
            response.raise_for_status()  # a 401/404 must not read as an idle server
            scrapes.append(parse_scrape(response.text, model, time.perf_counter()))

        result = run(
            run_closed_loop(url, payloads, concurrency, warmup_s, duration_s, window_hooks=(scrape, scrape))
        )
    if scrapes[1].runtime != reference:
        raise RuntimeError(
            f"the server served {model} with {scrapes[1].runtime}, not {reference} as measured in-process"
        )
    summary = result.summary()
    busy = stage_busy(scrapes[0], scrapes[1], decode_threads)
    return {**summary, **busy, "bound": bounding_stage(busy)}


def run_pipeline(
    bundle_dir: Path,
    model_repo: Path,
    jpegs: list[bytes],
    *,
    device: str,
    batch_sizes: list[int],
    seconds: float,
    concurrency: int,
    images_per_request: int,
    warmup_s: float,
    duration_s: float,
    decode_threads: int,
    intra_op_threads: int,
    log: Callable[[str], None] = print,
) -> dict:
    """All three measurements; ``model_repo`` holds only ``bundle_dir``. Returns results.json's body.

    In-process and served runtimes get the same ``intra_op_threads`` (CPU), so the served rows'
    share of the in-process figure is what HTTP, batching and decoding cost, not a thread count."""
    from benchmarks.artifact_runtimes import served_label
    from benchmarks.images import pixel_tensors
    from imgcls.manifest import load_manifest

    manifest = load_manifest(bundle_dir)
    runtimes, skipped = available_runtimes(
        manifest,
        bundle_dir,
        device=device,
        intra_op_threads=intra_op_threads,
        layout_batch_size=max(batch_sizes),
        log=log,
    )
    try:
        reference = served_label(manifest, device, runtimes)
        if reference is None:
            raise RuntimeError(f"no runtime can serve {manifest.name} on {device}: {skipped}")
        log(f"in-process on {device}: {', '.join(runtimes)}; the service serves {reference}")
        limit = runtimes[reference].max_batch_size
        if limit is not None and min(batch_sizes) > limit:
            raise BatchSizeError(f"every batch size is above the largest batch of {reference} ({limit})")
        rows = runtime_timings(runtimes, manifest.input.shape, batch_sizes, seconds)
    finally:
        for runtime in runtimes.values():
            runtime.close()
    best_reference, best_eager = _best(rows, reference), _best(rows, "eager")
    in_process = best_reference["images_per_s"]
    log(f"{reference}: best {in_process} images/s at batch {best_reference['batch_size']}")

    env = {
        "IMGCLS_DEVICE": device,
        "IMGCLS_DECODE_THREADS": str(decode_threads),
        "IMGCLS_INTRA_OP_THREADS": str(intra_op_threads),
        "IMGCLS_BATCHING__MAX_BATCH_SIZE": str(best_reference["batch_size"]),
    }
    # Enough distinct bodies that every client cycles through different ones.
    count = max(32, 2 * concurrency)
    pixels = build_payloads(
        "v2-pixels",
        manifest.name,
        pixel_tensors(jpegs, manifest.input.shape),
        images_per_request,
        count=count,
        pixel_shape=manifest.input.shape,
    )
    jpeg = build_payloads("v2-binary", manifest.name, jpegs, images_per_request, count=count)
    served_rows = []
    for label, payloads in (("v2 binary pixels (FP32, preprocessed)", pixels), ("v2 binary JPEG", jpeg)):
        row = _serve(
            model_repo,
            payloads,
            model=manifest.name,
            reference=reference,
            env=env,
            concurrency=concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s,
            decode_threads=decode_threads,
        )
        row.update(input=label, share_of_in_process=round(row["images_per_s"] / in_process, 3))
        served_rows.append(row)
        log(
            f"{label}: {row['images_per_s']} images/s ({row['share_of_in_process']:.0%} of in-process), "
            f"p99 {row['p99_ms']} ms, decode busy {row['decode_busy']:.0%}, runtime busy "
            f"{row['runtime_busy']:.0%}: bound by {row['bound']}"
        )
    return {
        "bundle": str(bundle_dir),
        "model": manifest.name,
        "architecture": manifest.architecture,
        "device": device,
        "reference_runtime": reference,
        "in_process": rows,
        "skipped": skipped,
        "in_process_best": best_reference,
        "eager_fp32_best": best_eager,
        "speedup_over_eager_fp32": round(in_process / best_eager["images_per_s"], 2) if best_eager else None,
        "served": served_rows,
        "settings": {
            "batch_sizes": batch_sizes,
            "seconds": seconds,
            "concurrency": concurrency,
            "images_per_request": images_per_request,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "decode_threads": decode_threads,
            "intra_op_threads": intra_op_threads,
            "max_batch_size": best_reference["batch_size"],
        },
    }


def write_pipeline_report(document: dict, folder: Path) -> Path:
    """results.json and results.md in ``folder``."""
    import json

    from benchmarks.report import machine_line

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    best, eager = document["in_process_best"], document["eager_fp32_best"]
    settings = document["settings"]
    lines = [
        f"# Pipeline: {document['model']} ({document['architecture']}) on {document['device']}",
        "",
        machine_line(document),
        "",
        f"**In-process** ({document['reference_runtime']}, the runtime `imgcls serve` picks here): "
        f"{best['images_per_s']:,} images/s at batch {best['batch_size']}"
        + (
            f"; eager FP32 best {eager['images_per_s']:,} images/s at batch {eager['batch_size']}: "
            f"**{document['speedup_over_eager_fp32']}×**."
            if eager
            else "."
        ),
        "",
        f"**Served over HTTP** ({settings['concurrency']} closed-loop clients, {settings['images_per_request']} "
        f"image(s) per request, max batch {settings['max_batch_size']}, {settings['decode_threads']} decode "
        f"thread(s), {settings['intra_op_threads']} runtime thread(s) here and in-process, "
        f"{settings['duration_s']} s):",
        "",
        "| input | images/s | share of in-process | p50 ms | p99 ms | decode busy | device decode busy | runtime busy "
        "| server CPU cores | bound by |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in document["served"]:
        lines.append(
            f"| {row['input']} | {row['images_per_s']:,} | {row['share_of_in_process']:.0%} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['decode_busy']:.0%} | {row['device_decode_busy']:.0%} | "
            f"{row['runtime_busy']:.0%} | {row['server_cpu_cores']} | "
            f"{row['bound']} |"
        )
    lines += [
        "",
        f"A stage busy {SATURATED:.0%} of the time or more bounds throughput; `http` means no stage (decode "
        "threads, the device decoding thread, the inference thread) was saturated, so the limit is the HTTP "
        "layer, the event loop or the client.",
        "",
        "| runtime | precision | batch | p50 ms | images/s |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['runtime']} | {r['precision']} | {r['batch_size']} | {r['p50_ms']} | {r['images_per_s']:,} |"
        for r in document["in_process"]
    ]
    if document["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in document["skipped"].items()) + "."]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
