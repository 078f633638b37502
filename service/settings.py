"""Service settings: environment variables (``IMGCLS_*``) and CLI flags, validated at start-up.

Batching defaults apply to every model; ``IMGCLS_MODELS`` overrides them per model name, e.g.
``IMGCLS_MODELS='{"digits": {"max_batch_size": 16, "runtime": "torchscript"}}'``. Tests build
``Settings(...)`` directly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgcls.formats import OLD_RUNTIME_NAMES, FormatName

__all__ = [
    "BatchingSettings",
    "ExplainSettings",
    "ModelOverrides",
    "ModelSettings",
    "Settings",
    "cpu_quota_cores",
    "usable_cores",
]


def _new_runtime_name(value: object) -> object:
    """``onnxruntime`` and ``onnxruntime-int8``, the names before ``imgcls.formats``, still work."""
    return OLD_RUNTIME_NAMES.get(value, value) if isinstance(value, str) else value


# auto, or the export format to serve (imgcls.formats): onnx is the FP32 ONNX model, onnx-int8 the INT8
# one (auto picks it on CPU when it passed parity). A wrong value is refused naming these.
RuntimeChoice = Annotated[Literal["auto", FormatName], BeforeValidator(_new_runtime_name)]
DeviceChoice = Literal["auto", "cpu", "cuda"]


class BatchingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 5.0  # how long the oldest item may wait
    # ...but only while more images are being decoded: a lone request is sent at once, and under load
    # batches still fill (docs/performance.md). False: Triton's wait, whether or not anything is coming.
    wait_only_for_incoming: bool = True
    # images accepted and not yet answered (decoding, queued or computing), beyond which requests get 503
    max_queue_size: Annotated[int, Field(ge=1)] = 512
    timeout_ms: Annotated[float, Field(gt=0)] = 10_000  # default deadline, from arrival to answer (504)
    preferred_batch_sizes: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _preferred_within_max(self) -> BatchingSettings:
        too_big = [s for s in self.preferred_batch_sizes if s < 1 or s > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} must lie in 1..max_batch_size ({self.max_batch_size})"
            )
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_batch_size ({self.max_batch_size})"
            )
        return self


class ExplainSettings(BaseModel):
    """Explanations (``service.explaining``): apart from the batcher, with their own threads and queue."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # False: :explain answers 501 and no eager model is loaded
    concurrency: Annotated[int, Field(ge=1, le=64)] = 1  # explanations computed at once, per model version
    threads: Annotated[int, Field(ge=1)] = 1  # torch threads per explanation on the CPU
    # How much nicer (Linux) the explain threads are than the server: on a busy CPU predictions come
    # first and explanations take what is left (0: equal footing). Without effect where the OS has none.
    nice: Annotated[int, Field(ge=0, le=19)] = 19
    # images accepted for explanation and not yet answered, per model version; beyond it 503
    max_queue_size: Annotated[int, Field(ge=1)] = 16
    timeout_ms: Annotated[float, Field(gt=0)] = 30_000  # from arrival to answer (504)


class ModelOverrides(BaseModel):
    """Per-model changes to the defaults; unset fields keep the service-wide value."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    timeout_ms: float | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    wait_only_for_incoming: bool | None = None
    runtime: RuntimeChoice | None = None
    device: DeviceChoice | None = None


class ModelSettings(BaseModel):
    """The resolved settings one model version runs with."""

    batching: BatchingSettings
    runtime: RuntimeChoice
    device: DeviceChoice
    intra_op_threads: int | None
    warmup: bool
    device_preprocessing: Literal["auto", "on", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"


def cpu_quota_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """This process's CFS CPU quota in cores (a Kubernetes ``limits.cpu``), or None when unlimited.

    cgroup v2 (``cpu.max``: "max 100000" or "200000 100000"), then v1 (``cpu/cpu.cfs_quota_us``,
    -1 when unlimited). Inside a container both paths are the container's own cgroup.
    """
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cores() -> int:
    """The cores this process may use: its CPU set, capped by its cgroup's CPU quota.

    A pod limited to 2 CPUs on a 64-core node sees all 64 in its CPU set; sizing thread pools from
    that would run 64 threads into 2 cores' worth of CFS time and throttle every request.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota_cores()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def default_decode_threads() -> int:
    return max(1, min(4, usable_cores()))


def default_intra_op_threads(decode_threads: int) -> int:
    """The cores the decode threads leave free, at least 1: the runtime's threads on the CPU."""
    return max(1, usable_cores() - decode_threads)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGCLS_", env_nested_delimiter="__", extra="forbid")

    model_repo: Path = Path("models")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"  # json: one object per line, for log pipelines
    runtime: RuntimeChoice = "auto"
    device: DeviceChoice = "auto"
    # None: the cores the decode threads leave free, at least 1 (runtimes default to all cores, and
    # competing with the decode threads cost 15-40% throughput on 2 cores: docs/performance.md)
    intra_op_threads: Annotated[int, Field(ge=1)] | None = None
    decode_threads: Annotated[int, Field(ge=1)] = Field(default_factory=default_decode_threads)
    batching: BatchingSettings = BatchingSettings()
    explain: ExplainSettings = ExplainSettings()
    models: dict[str, ModelOverrides] = {}
    max_images_per_request: Annotated[int, Field(ge=1)] = 64
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    max_image_pixels: Annotated[int, Field(ge=1)] = 40_000_000
    max_json_depth: Annotated[int, Field(ge=4, le=512)] = 32  # nesting of request JSON (ours needs 4)
    warmup: bool = True  # run batch sizes 1, 2, 4, ... max_batch_size before reporting ready
    # Decode JPEG batches and preprocess them on the runtime's device (service/device_preprocess.py).
    # auto: on CUDA; on: on the CPU too (one thread decodes the batch: slower there, for tests).
    device_preprocessing: Literal["auto", "on", "off"] = "auto"
    # TorchScript input layout. auto: on CUDA, time channels-last against contiguous input at warm-up
    # and keep channels-last only where it is faster; on: always; off: never (contiguous NCHW).
    channels_last: Literal["auto", "on", "off"] = "auto"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None  # None: /metrics on the main port
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0  # on SIGTERM, how long accepted requests may take
    # ...and how long, at least, to keep answering 503 so load balancers and clients notice before the port closes
    shutdown_min_drain_s: Annotated[float, Field(ge=0)] = 1.0
    api_keys: list[str] = Field(default=[], repr=False)  # Bearer keys; empty (and no file): no auth
    api_keys_file: Path | None = None  # one key per line, e.g. a mounted Kubernetes Secret
    # Flagged mistakes (service/feedback): embedded SQLite under feedback_dir unless feedback_db_url
    # names another database (PostgreSQL for several replicas: postgresql://user:password@host/db)
    feedback_enabled: bool = True
    feedback_dir: Path = Path("feedback")
    feedback_db_url: str | None = Field(default=None, repr=False)  # may carry a password
    feedback_max_bytes_per_model: Annotated[int, Field(ge=1)] | None = 1024**3  # beyond it 507; None: no cap
    auth_health: bool = False  # also require a key for /healthz, /readyz, /v2/health/*
    auth_metrics: bool = False  # also require a key for /metrics

    @property
    def feedback_url(self) -> str:
        """The feedback database: ``feedback_db_url``, or the SQLite file under ``feedback_dir``."""
        return self.feedback_db_url or f"sqlite:///{self.feedback_dir.resolve() / 'feedback.db'}"

    def for_model(self, name: str) -> ModelSettings:
        overrides = self.models.get(name, ModelOverrides())
        changed = overrides.model_dump(exclude_none=True, exclude={"runtime", "device"})
        batching = BatchingSettings.model_validate({**self.batching.model_dump(), **changed})
        return ModelSettings(
            batching=batching,
            runtime=overrides.runtime or self.runtime,
            device=overrides.device or self.device,
            intra_op_threads=self.intra_op_threads or default_intra_op_threads(self.decode_threads),
            warmup=self.warmup,
            device_preprocessing=self.device_preprocessing,
            channels_last=self.channels_last,
        )
