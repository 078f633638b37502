"""Timing a call: repeat it for a while after warm-up calls, and sum the times up as mean and percentiles."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.stats import percentile

__all__ = ["Timing", "time_calls"]


@dataclass(frozen=True)
class Timing:
    calls: int
    mean_ms: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ordered = sorted(seconds)
        return cls(
            calls=len(ordered),
            mean_ms=1e3 * statistics.fmean(ordered),
            p50_ms=1e3 * percentile(ordered, 0.50),
            p99_ms=1e3 * percentile(ordered, 0.99),
        )


def time_calls(
    fn: Callable[[], object], seconds: float, *, warmup_calls: int = 3, min_calls: int = 5
) -> Timing:
    """Call ``fn`` repeatedly for about ``seconds`` (at least ``min_calls`` times) and time each call."""
    for _ in range(warmup_calls):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return Timing.of(samples)
