"""The in-process ceiling: what the service's pipeline could deliver for a bundle with no HTTP.

Decode threads feed one inference thread that takes whatever is queued, up to a batch size, with the
runtime `imgcls serve` would pick. The best images/s over a small grid of runtime threads, decode
threads and batch sizes is the bar the HTTP service is measured against (``imgcls bench runtimes``,
``bench compare``); the single-image latency (decode + infer, one thread) is the bar at concurrency 1.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.timing import Timing, time_calls
from imgcls.formats import runtime_label
from imgcls.manifest import load_manifest
from service.preprocess import Preprocessor, init_decode_thread
from service.runtimes import Runtime, choose_runtime, resolve_device
from service.settings import default_decode_threads, default_intra_op_threads, usable_cores

__all__ = ["CeilingResult", "in_process_ceiling", "measure_ceiling", "pipeline_grid", "single_image_latency"]


def single_image_latency(
    runtime: Runtime, preprocessor: Preprocessor, images: list[bytes], seconds: float
) -> Timing:
    """Decode + preprocess + infer one image, one after another: the floor of a request's latency."""
    turn = itertools.count()

    def one() -> None:
        runtime.infer(preprocessor(images[next(turn) % len(images)])[None])

    def timed() -> Timing:
        init_decode_thread()  # the service decodes on such a thread; inference uses the runtime's threads
        return time_calls(one, seconds)

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(timed).result()


@dataclass(frozen=True)
class CeilingResult:
    runtime: str
    decode_threads: int
    batch_size: int
    images_per_s: float
    mean_batch: float


def in_process_ceiling(
    runtime: Runtime,
    preprocessor: Preprocessor,
    images: list[bytes],
    *,
    decode_threads: int,
    batch_size: int,
    seconds: float,
) -> CeilingResult:
    """The service's pipeline shape with no HTTP: ``decode_threads`` threads decode and preprocess as
    fast as they can into a bounded queue; one inference thread takes what is queued (up to
    ``batch_size``, never waiting for more) and runs it. Images/s counted after a warm-up second."""
    batch_size = min(batch_size, getattr(runtime, "max_batch_size", None) or batch_size)  # engine's max shape
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=4 * batch_size)
    stop = threading.Event()
    counter = itertools.count()
    lock = threading.Lock()

    def decoder() -> None:
        init_decode_thread()  # as the service's decode threads are
        while not stop.is_set():
            with lock:
                index = next(counter)
            array = preprocessor(images[index % len(images)])
            while not stop.is_set():
                try:
                    ready.put(array, timeout=0.1)
                    break
                except queue.Full:
                    continue

    done = {"images": 0, "batches": 0}
    window = {"open": False}

    def inference() -> None:
        while not stop.is_set():
            try:
                batch = [ready.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < batch_size:
                try:
                    batch.append(ready.get_nowait())
                except queue.Empty:
                    break
            runtime.infer(np.stack(batch))
            if window["open"]:
                done["images"] += len(batch)
                done["batches"] += 1

    threads = [threading.Thread(target=decoder, daemon=True) for _ in range(decode_threads)]
    threads.append(threading.Thread(target=inference, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    window["open"] = True
    started = time.perf_counter()
    time.sleep(seconds)
    window["open"] = False
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return CeilingResult(
        runtime=runtime_label(runtime.name, runtime.precision),
        decode_threads=decode_threads,
        batch_size=batch_size,
        images_per_s=round(done["images"] / elapsed, 1),
        mean_batch=round(done["images"] / max(1, done["batches"]), 2),
    )


def pipeline_grid(device: str) -> tuple[list[int | None], list[int], list[int]]:
    """What a tuned service could pick, tried for the ceiling: runtime intra-op threads (None: the
    runtime's own; on a GPU they do not matter), decode threads, and largest batch."""
    cores, serving = usable_cores(), default_decode_threads()
    decode = sorted({1, serving, cores}) if device == "cpu" else sorted({serving, cores})
    intra: list[int | None] = (
        sorted({1, cores} | {max(1, cores - t) for t in decode}) if device == "cpu" else [None]
    )
    sizes = sorted({4, 16, 32} | ({1} if cores <= 2 else set()))
    return intra, decode, sizes


def measure_ceiling(
    bundle_dir: Path,
    images: list[bytes],
    *,
    device: str = "auto",
    intra_op_threads: int | None = None,
    seconds: float = 2.0,
    ceiling_seconds: float = 4.0,
    log: Callable[[str], None] = print,
) -> dict:
    """With the runtime `imgcls serve` would pick: the best pipeline images/s over
    :func:`pipeline_grid` (the in-process ceiling), and the single-image latency (decode + infer, one
    after another) with the thread count `imgcls serve` uses by default (``intra_op_threads`` if given)."""
    manifest = load_manifest(bundle_dir)
    preprocessor = Preprocessor(manifest.preprocess)
    resolved = resolve_device(device)
    intra_options, decode_options, sizes = pipeline_grid(resolved)
    if intra_op_threads is not None:
        intra_options = [intra_op_threads]
    serving_threads = intra_op_threads or (
        default_intra_op_threads(default_decode_threads()) if resolved == "cpu" else None
    )
    single, pipeline, name = None, [], ""
    for intra in intra_options:
        runtime = choose_runtime(manifest, bundle_dir, device=resolved, intra_op_threads=intra)
        name = runtime.name
        try:
            if intra == serving_threads or single is None:
                single = single_image_latency(runtime, preprocessor, images, seconds)
            for threads in decode_options:
                for size in sizes:
                    result = in_process_ceiling(
                        runtime,
                        preprocessor,
                        images,
                        decode_threads=threads,
                        batch_size=size,
                        seconds=ceiling_seconds,
                    )
                    row = {"intra_op_threads": intra, **result.__dict__}
                    log(
                        f"pipeline intra_op_threads={intra} decode_threads={threads} batch<={size}: "
                        f"{result.images_per_s} images/s"
                    )
                    pipeline.append(row)
        finally:
            runtime.close()
    assert single is not None
    return {
        "serving_runtime": name,
        "serving_intra_op_threads": serving_threads,
        "single_image_latency_ms": {"p50": round(single.p50_ms, 3), "p99": round(single.p99_ms, 3)},
        "pipeline": pipeline,
        "ceiling": max(pipeline, key=lambda r: r["images_per_s"]),
    }
