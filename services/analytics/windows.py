"""Window and histogram arithmetic shared by the faust tables and the recount.

Both the running service (faust's tumbling and hopping tables) and a recount from the
start of the topic (`MemoryStore`) place an observation with these same functions, so the
two agree to the cent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from faust.windows import HoppingWindow, TumblingWindow


@dataclass(frozen=True)
class WindowSpec:
    name: str
    size_s: int
    step_s: int
    description: str

    def faust_window(self, expires_s: int) -> HoppingWindow:
        if self.size_s == self.step_s:
            return TumblingWindow(self.size_s, expires=expires_s)
        return HoppingWindow(self.size_s, self.step_s, expires=expires_s)

    @cached_property
    def _ranges(self) -> HoppingWindow:
        return self.faust_window(self.size_s)

    def starts(self, ts: float) -> list[float]:
        """Start of every window of this spec that covers `ts` (event time, epoch s)."""
        return [r[0] for r in self._ranges.ranges(ts)]


MINUTE = WindowSpec("minute", 60, 60, "tumbling, one minute")
HOUR = WindowSpec("hour", 3600, 900, "hopping, one hour every 15 minutes")
WINDOWS: dict[str, WindowSpec] = {MINUTE.name: MINUTE, HOUR.name: HOUR}

SECONDS_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1,
    2,
    5,
    10,
    20,
    30,
    45,
    60,
    120,
    300,
    600,
    1800,
)
"""Upper bounds of the latency histograms (time to first image, duration, queue wait)."""
SCORE_BUCKETS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
BUCKETS: dict[str, tuple[float, ...]] = {
    "time_to_first_image": SECONDS_BUCKETS,
    "image_duration": SECONDS_BUCKETS,
    "queue_wait": SECONDS_BUCKETS,
    "consistency_score": SCORE_BUCKETS,
}


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """The first bucket whose upper bound holds `value` (len(bounds): +Inf)."""
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def encode(metric: str, labels: Mapping[str, str], part: str = "") -> str:
    """A table key: `metric{k=v,...}` plus `|part` for a histogram's bucket, sum or count."""
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{metric}{{{inner}}}" + (f"|{part}" if part else "")


def decode(key: str) -> tuple[str, dict[str, str], str]:
    head, _, part = key.partition("|")
    metric, _, inner = head.partition("{")
    labels = dict(pair.split("=", 1) for pair in inner.rstrip("}").split(",") if pair)
    return metric, labels, part


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile of a bucketed distribution, linear within a bucket (as Prometheus's
    histogram_quantile); the +Inf bucket answers its lower bound. None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = bounds[i - 1] if i > 0 else 0.0
            if i >= len(bounds):
                return lower
            return lower + (bounds[i] - lower) * ((rank - seen) / count)
        seen += count
    return bounds[-1]


def sum_values(values: Iterable[float]) -> float:
    """A sum rounded to micro-units, so float addition order never shows in a comparison."""
    return round(math.fsum(values), 6)
