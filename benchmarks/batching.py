"""`imgcls bench batching`: what dynamic batching buys, measured on a real `imgcls serve`.

For each setting (``max_batch_size`` and ``max_queue_delay_ms``; ``1`` means batching off) the
service is started afresh over the same model repository, driven by the same closed-loop load,
and stopped. The table shows throughput, latency and the mean batch the service actually formed
(from its own ``imgcls_batch_size`` histogram), so settings can be chosen from evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from benchmarks.load import Payload, run, run_closed_loop
from benchmarks.servers import imgcls_running

__all__ = ["BatchingSetting", "mean_batch_size", "parse_settings", "run_setting"]


@dataclass(frozen=True)
class BatchingSetting:
    max_batch_size: int
    max_queue_delay_ms: float
    fixed_wait: bool = False  # Triton's wait: whether or not more images are being decoded

    @property
    def label(self) -> str:
        if self.max_batch_size == 1:
            return "off (max_batch_size=1)"
        wait = " (fixed wait)" if self.fixed_wait else ""
        return f"max_batch_size={self.max_batch_size}, max_queue_delay_ms={self.max_queue_delay_ms:g}{wait}"

    def env(self) -> dict[str, str]:
        return {
            "IMGCLS_BATCHING__MAX_BATCH_SIZE": str(self.max_batch_size),
            "IMGCLS_BATCHING__MAX_QUEUE_DELAY_MS": str(self.max_queue_delay_ms),
            "IMGCLS_BATCHING__WAIT_ONLY_FOR_INCOMING": str(not self.fixed_wait).lower(),
        }


def parse_settings(text: str) -> list[BatchingSetting]:
    """``"1,32@0,32@5,32@5fixed"`` -> settings: MAX_BATCH_SIZE[@MAX_QUEUE_DELAY_MS[fixed]] (delay 0
    when omitted; ``fixed``: wait whether or not more images are being decoded, as Triton does)."""
    settings = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:@(\d+(?:\.\d+)?)(fixed)?)?", part)
        if not match or int(match[1]) < 1:
            raise ValueError(f"{part!r} is not MAX_BATCH_SIZE[@MAX_QUEUE_DELAY_MS[fixed]], e.g. 32@2")
        settings.append(BatchingSetting(int(match[1]), float(match[2] or 0), fixed_wait=bool(match[3])))
    return settings


_BATCH_LINE = re.compile(r"^imgcls_batch_size_(sum|count)\{[^}]*\}\s+([0-9.eE+-]+)$", re.MULTILINE)


def mean_batch_size(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the ``imgcls_batch_size`` histogram across models, from /metrics text."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH_LINE.findall(metrics_text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def run_setting(
    setting: BatchingSetting,
    model_repo,
    payloads: list[Payload],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> dict:
    """Start imgcls with ``setting``, drive it, stop it; the load summary plus the mean batch formed."""
    with imgcls_running(model_repo, setting.env(), payloads[0]) as url:
        before = mean_batch_size(httpx.get(f"{url}/metrics").text)
        result = run(run_closed_loop(url, payloads, concurrency, warmup_s, duration_s))
        after = mean_batch_size(httpx.get(f"{url}/metrics").text)
    batches = after[1] - before[1]
    summary = result.summary()
    summary.update(
        setting=setting.label,
        max_batch_size=setting.max_batch_size,
        max_queue_delay_ms=setting.max_queue_delay_ms,
        mean_batch=round((after[0] - before[0]) / batches, 2) if batches else None,
    )
    return summary
