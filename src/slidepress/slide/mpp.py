"""Which resolution a slide really has: the file's claim, checked, or the user's override."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import MppError, UsageError
from .base import SlideInfo, plausible_mpp

HOW_TO_OVERRIDE = "pass --mpp-override UM_PER_PX or --mpp-csv FILE (columns: slide,mpp)"


def load_mpp_csv(path: str | Path) -> dict[str, float]:
    """Per-slide overrides keyed by file name, stem and full path (all accepted in the CSV)."""
    from .. import remote

    shown = remote.public(str(path)) if remote.is_url(path) else Path(path)
    p = remote.localize(path)  # a URL is staged (StorageError when it cannot be read)
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageError(f"cannot read mpp CSV {shown}: {e.strerror}") from None
    p = shown
    if not rows or not {"slide", "mpp"} <= set(rows[0]):
        raise UsageError(f"mpp CSV {p} needs a header with columns 'slide' and 'mpp'")
    out: dict[str, float] = {}
    for i, row in enumerate(rows, start=2):
        try:
            value = float(row["mpp"])
        except (TypeError, ValueError):
            raise UsageError(f"mpp CSV {p} line {i}: mpp {row['mpp']!r} is not a number") from None
        if not plausible_mpp(value):
            raise UsageError(f"mpp CSV {p} line {i}: mpp {value} outside 0.1-20 um/px")
        out[row["slide"].strip()] = value
    return out


def lookup_override(slide_path: str | Path, table: dict[str, float]) -> float | None:
    """The override for a slide (a path or a URL) by full name, file name or stem."""
    full = str(slide_path)
    name = full.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for key in (full, name, stem):
        if key in table:
            return table[key]
    return None


def check_override(path: Path, override: float) -> float:
    if not plausible_mpp(override):
        raise MppError(f"{Path(path).name}: mpp override {override} outside 0.1-20 um/px")
    return float(override)


def file_mpp(info: SlideInfo) -> float:
    """The file's own level-0 mpp if present and plausible, else MppError with the hint."""
    name = Path(info.path).name
    if info.mpp is None:
        raise MppError(f"{name}: the file gives no resolution (mpp); {HOW_TO_OVERRIDE}")
    mx, my = info.mpp
    if not (plausible_mpp(mx) and plausible_mpp(my)):
        raise MppError(
            f"{name}: implausible resolution {mx:.4g} x {my:.4g} um/px (expected 0.1-20); "
            f"{HOW_TO_OVERRIDE}"
        )
    if abs(mx - my) / max(mx, my) > 0.05:
        raise MppError(f"{name}: non-square pixels ({mx:.4g} x {my:.4g} um/px) unsupported")
    return (mx + my) / 2.0
