"""What every benchmark prints and stores: timestamped progress lines and latency percentiles."""

from __future__ import annotations

import statistics
import sys
from datetime import datetime

import numpy as np


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50 and p95 of `values` (milliseconds), rounded to 0.1."""
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }
