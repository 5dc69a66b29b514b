"""Response times to three significant digits, so sub-millisecond percentiles stay visible.

Locust's own histogram rounds to whole milliseconds below 100 ms: a 0.4 ms model reads
``p99 0 ms``. This one counts every request event in the process that runs the users; workers
send their counts with each report and the master adds them up, as Locust does for its stats
(``_step`` hooks these functions to Locust's events; this module does not import Locust).
"""

from __future__ import annotations

import math
from collections import Counter

# Cumulative count per rounded response time (ms) in this process (on a master: of all workers).
counts: Counter[float] = Counter()


def bucket(response_time_ms: float) -> float:
    """The response time to three significant digits: 0.4213 -> 0.421, 1234.5 -> 1230."""
    return float(f"{response_time_ms:.3g}")


def record(response_time_ms: float | None) -> None:
    if response_time_ms is not None:
        counts[bucket(response_time_ms)] += 1


def take_report() -> list[tuple[float, int]]:
    """A worker's counts since its last report (msgpack wants pairs, not float keys)."""
    pairs = list(counts.items())
    counts.clear()
    return pairs


def add_report(pairs: list[tuple[float, int]]) -> None:
    """On the master: a worker's report joins the counts."""
    for response_time, count in pairs:
        counts[float(response_time)] += int(count)


def percentile(histogram: dict[float, int], fraction: float) -> float | None:
    """Nearest rank: the smallest bucket with ``fraction`` of the requests at or below it."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(round(total * fraction, 6)))
    seen = 0
    for response_time in sorted(histogram):
        seen += histogram[response_time]
        if seen >= rank:
            return response_time
    return None  # pragma: no cover - the last bucket always reaches the total
