"""Prometheus metrics: names in base units, ``imgcls_`` prefixed, labelled by model and version.

One :class:`ServiceMetrics` per app, on its own ``CollectorRegistry`` (tests build several apps in
one process). Queue depth, readiness and model info are read from the live workers at scrape time,
so they can never drift from the truth. The service runs as one process (one uvicorn worker per
pod or GPU), so no multiprocess mode is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from service.batcher import BatchStats, doubling_batch_sizes

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "ServiceMetrics", "batch_size_buckets"]

# 0.25 ms .. 30 s: quantiles stay meaningful from a tiny CPU model to a large GPU batch under load.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to and including the largest batch the batcher may form."""
    return tuple(float(size) for size in doubling_batch_sizes(max_batch_size))


class _LiveModelCollector:
    """Queue depth (admitted images) and capacity, readiness and model info, read from the workers on each scrape."""

    def __init__(self, workers: Callable[[], Iterable]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "imgcls_queue_depth",
            "Images accepted and not yet answered: waiting for a decode thread, decoding, queued or computing.",
            labels=["model", "version"],
        )
        decoding = GaugeMetricFamily(
            "imgcls_decode_queue_depth",
            "Of imgcls_queue_depth, the images not yet decoded: waiting for a decode thread or decoding.",
            labels=["model", "version"],
        )
        ready = GaugeMetricFamily(
            "imgcls_model_ready", "1 when the model version serves, else 0.", labels=["model", "version"]
        )
        capacity = GaugeMetricFamily(
            "imgcls_queue_capacity",
            "max_queue_size: the most images accepted and not yet answered; beyond it requests get 503.",
            labels=["model", "version"],
        )
        explain_depth = GaugeMetricFamily(
            "imgcls_explain_queue_depth",
            "Images accepted for explanation and not yet answered: waiting for an explain thread or computing.",
            labels=["model", "version"],
        )
        info = GaugeMetricFamily(
            "imgcls_model_info",
            "The runtime serving each model version (value 1).",
            labels=["model", "version", "runtime", "precision", "device"],
        )
        for worker in self._workers():
            labels = [worker.name, str(worker.version)]
            ready.add_metric(labels, 1.0 if worker.ready else 0.0)
            if worker.batcher is not None:
                depth.add_metric(labels, float(worker.admission.pending))
                decoding.add_metric(labels, float(worker.batcher.incoming_count))
                capacity.add_metric(labels, float(worker.admission.max_queue_size))
            explanations = getattr(worker, "explanations", None)
            if explanations is not None and explanations.error is None:
                explain_depth.add_metric(labels, float(explanations.admission.pending))
            if worker.runtime is not None:
                info.add_metric(
                    [*labels, worker.runtime.name, worker.runtime.precision, worker.runtime.device], 1.0
                )
        yield from (depth, decoding, capacity, ready, info, explain_depth)


class _GpuCollector:
    """GPU utilisation and memory through NVML; yields nothing (absent, not zero) where there is no GPU."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no library, no driver, no GPU: the series are simply absent
            self._nvml = None

    def collect(self) -> Iterable[Metric]:
        nvml = self._nvml
        if nvml is None:
            return
        utilization = GaugeMetricFamily(
            "imgcls_gpu_utilization_ratio", "GPU busy fraction (NVML).", labels=["gpu"]
        )
        used = GaugeMetricFamily("imgcls_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        total = GaugeMetricFamily("imgcls_gpu_memory_total_bytes", "GPU memory (NVML).", labels=["gpu"])
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                utilization.add_metric([str(index)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                used.add_metric([str(index)], float(memory.used))
                total.add_metric([str(index)], float(memory.total))
        except Exception:  # a GPU that vanished mid-scrape must not fail the whole scrape
            return
        yield from (utilization, used, total)


class ServiceMetrics:
    def __init__(self, max_batch_size: int, workers: Callable[[], Iterable] = list) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        model = ["model", "version"]
        self.requests = Counter(
            "imgcls_requests",
            "Prediction requests answered.",
            [*model, "protocol", "code"],
            registry=self.registry,
        )
        self.images = Counter("imgcls_images", "Images classified.", model, registry=self.registry)
        self.request_duration = Histogram(
            "imgcls_request_duration_seconds",
            "Prediction request time, end to end inside the server.",
            [*model, "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "imgcls_queue_duration_seconds",
            "Per image: from entering the batcher's queue (decoded) to the start of its batch.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.preprocess_duration = Histogram(
            "imgcls_preprocess_duration_seconds",
            "Per image decoded on a decode thread: decode, colour conversion, resize and normalisation.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.device_preprocess_duration = Histogram(
            "imgcls_device_preprocess_duration_seconds",
            "Per batch: JPEG decoding and preprocessing on the runtime's device (device preprocessing).",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "imgcls_inference_duration_seconds",
            "Per batch: the runtime's compute time.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imgcls_batch_size",
            "Images per batch sent to the runtime.",
            model,
            buckets=batch_size_buckets(max_batch_size),
            registry=self.registry,
        )
        self.inflight_count = 0  # kept by the request observer; graceful shutdown reads it too
        self.inflight = Gauge(
            "imgcls_inflight_requests", "Prediction requests being handled.", registry=self.registry
        )
        self.inflight.set_function(lambda: self.inflight_count)
        self.rejected = Counter(
            "imgcls_rejected", "Requests refused, by reason.", [*model, "reason"], registry=self.registry
        )
        self.explain_duration = Histogram(
            "imgcls_explain_duration_seconds",
            "Per explanation request: the explainer's time on its thread (maps and the prediction).",
            [*model, "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.explain_requests = Counter(
            "imgcls_explain_requests",
            "Explanation requests answered (KServe v1 :explain), by status code.",
            [*model, "code"],
            registry=self.registry,
        )
        self.explain_rejected = Counter(
            "imgcls_explain_rejected",
            "Explanation requests refused, by reason (queue_full, deadline, bad_input, ...).",
            [*model, "reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "imgcls_feedback",
            "Flags received, by result: stored, unavailable (store down: 503), full (cap: 507), rejected (bad input).",
            [*model, "result"],
            registry=self.registry,
        )
        self.registry.register(_LiveModelCollector(workers))
        self.registry.register(_GpuCollector())

    # --- the worker's observer protocol ---
    def batch(self, worker, stats: BatchStats) -> None:
        labels = (worker.name, str(worker.version))
        self.batch_size.labels(*labels).observe(stats.size)
        queue = self.queue_duration.labels(*labels)
        for seconds in stats.queue_seconds:
            queue.observe(seconds)
        self.images.labels(*labels).inc(stats.size)

    def preprocessed(self, worker, seconds: float) -> None:
        self.preprocess_duration.labels(worker.name, str(worker.version)).observe(seconds)

    def preprocessed_on_device(self, worker, seconds: float) -> None:
        self.device_preprocess_duration.labels(worker.name, str(worker.version)).observe(seconds)

    def computed(self, worker, seconds: float) -> None:
        self.inference_duration.labels(worker.name, str(worker.version)).observe(seconds)

    def explained(self, worker, seconds: float, method: str) -> None:
        self.explain_duration.labels(worker.name, str(worker.version), method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
