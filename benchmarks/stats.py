"""The statistics every benchmark reports, defined once: nearest-rank percentiles and Poisson arrivals."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

__all__ = ["percentile", "poisson_arrivals"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of an already sorted sequence: a value that was observed."""
    if not ordered:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in 0..1, got {q}")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def poisson_arrivals(rate: float, seed: int = 0) -> Iterator[float]:
    """Send times, in seconds from the start, of a Poisson process of ``rate`` arrivals per second.

    Exponential gaps make arrivals independent of one another, as real users' are: an open-loop load
    keeps sending on this schedule however slow the server gets, so queueing shows in the latencies.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        yield at
