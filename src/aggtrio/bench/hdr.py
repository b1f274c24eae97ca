"""Latency histograms (HdrHistogram, microseconds), shipped between processes as text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

# 1 µs to 60 s at 3 significant digits: a recorded value is within 0.1 % of the truth.
LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


def new_histogram() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record(histogram: Any, microseconds: int) -> None:
    histogram.record_value(min(max(microseconds, LOWEST_US), HIGHEST_US))


def encode(histogram: Any) -> str:
    encoded: bytes = histogram.encode()
    return encoded.decode("ascii")


def merge(encoded: Iterable[str]) -> Any:
    """One histogram holding every value of the encoded ones."""
    merged = new_histogram()
    for text in encoded:
        merged.decode_and_add(text.encode("ascii"))
    return merged


def combine(histograms: Iterable[Any]) -> Any:
    """One histogram holding every value of the given ones."""
    combined = new_histogram()
    for histogram in histograms:
        combined.add(histogram)
    return combined


def summarize(histogram: Any) -> dict[str, int]:
    """Sample count, percentiles and max, in µs (all 0 for an empty histogram)."""
    count: int = histogram.get_total_count()
    stats = {"samples": count}
    for name, percentile in PERCENTILES.items():
        stats[name] = int(histogram.get_value_at_percentile(percentile)) if count else 0
    stats["max"] = int(histogram.get_max_value()) if count else 0
    return stats
