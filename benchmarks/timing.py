"""Timing that survives noisy shared machines: warm up, repeat, report the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Milliseconds per call of `fn`: median, min and max over `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1e3)
    return {
        "median_ms": round(statistics.median(runs), 2),
        "min_ms": round(min(runs), 2),
        "max_ms": round(max(runs), 2),
    }


def ratio(numerator: dict[str, float], denominator: dict[str, float]) -> float:
    return round(numerator["median_ms"] / denominator["median_ms"], 3)
