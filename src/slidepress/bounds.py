"""Bounds on the numeric options that size memory or threads, checked before any work.

A typo such as `--batch-size 1000000000` must be a one-line usage error, not a MemoryError
minutes later. The bounds are generous: far above what any machine here benefits from.
"""

from __future__ import annotations

import math

from .errors import UsageError

MAX_WORKERS = 64  # threads / processes
MAX_BATCH = 4096  # patches per encoder call
MAX_PATCH = 4096  # patch / tile side in pixels
MAX_REGION_PIXELS = 2**28  # a region decoded into memory at once (16k x 16k)


def check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    """`value` within [lo, hi] (None passes: "use the default")."""
    if value is None:
        return
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UsageError(f"{name} must be within {lo:g}-{hi:g}, got {value:g}")


def check_workers(value: int, name: str = "workers") -> None:
    check_range(name, value, 1, MAX_WORKERS)
