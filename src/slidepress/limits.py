"""Explicit limits on what a user file may declare, checked before anything is allocated.

A hostile or damaged file (a TIFF declaring 10^6 x 10^6 pixels with a few KB of data, an IFD
chain that loops, a container manifest with 10,000 levels, a zip entry that inflates to GBs)
must be refused in seconds with one line, not hang or exhaust memory. Every reader and the
container check these numbers before decoding. Defaults admit any real slide (the largest
scans are ~250k x 150k px); raise one with `slidepress --limit NAME=VALUE ...`, the
environment (`SLIDEPRESS_LIMIT_MAX_PIXELS=...`), or `limits.override(...)` in code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

from .errors import UsageError

ENV_PREFIX = "SLIDEPRESS_LIMIT_"


@dataclass(frozen=True)
class Limits:
    """What a file may declare. Each bound is far above any genuine slide and far below what
    would hang or exhaust a machine; the numbers in the comments are what real files measure.
    """

    max_pixels: int = 2**36  # level-0 pixels of a slide or container (~262k x 262k)
    max_side: int = 2**19  # pixels along one side of any level
    max_levels: int = 40  # pyramid levels (a 2x pyramid of a 2^19 px side has 20)
    max_pages: int = 2048  # TIFF IFDs followed (SubIFDs included) before giving up
    max_tile_side: int = 16384  # side of one stored tile; a strip may hold this squared px
    max_image_pixels: int = 2**28  # plain images (PNG/JPEG/...) are decoded whole: 16k x 16k
    # Declared level-0 pixels per byte of file. A JPEG tile of bare glass holds ~30 px/byte
    # (the shared slides: 27-36); whole slides 1-4. A sparse "bomb" (one stored tile, the
    # rest declared empty) has 10^5-10^7.
    max_pixels_per_byte: int = 100_000
    # Pixels of the one pyramid level read whole for a thumbnail or tissue mask. A slide
    # without a small enough level (no pyramid) is read entirely for these: 2^31 px (46k x
    # 46k) takes tens of seconds, more would look like a hang.
    max_thumbnail_read_pixels: int = 2**31
    max_entry_bytes: int = 256 << 20  # one entry of a container (a coded tile, the manifest)

    def describe(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _from_env(base: Limits) -> Limits:
    changes = {}
    for f in fields(Limits):
        raw = os.environ.get(ENV_PREFIX + f.name.upper())
        if raw:
            changes[f.name] = _parse(f.name, raw)
    return replace(base, **changes)


def _parse(name: str, raw: str) -> int:
    try:
        value = int(float(raw))
    except ValueError:
        raise UsageError(f"limit {name}: {raw!r} is not a number") from None
    if value < 1:
        raise UsageError(f"limit {name} must be >= 1, got {raw}")
    return value


_current = _from_env(Limits())


def current() -> Limits:
    return _current


def names() -> list[str]:
    return [f.name for f in fields(Limits)]


def parse_assignments(items: list[str]) -> dict[str, int]:
    """`["max_pixels=1e12", ...]` -> {"max_pixels": 10**12}; unknown names are an error."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names():
            raise UsageError(f"--limit takes NAME=VALUE with NAME one of {', '.join(names())}")
        out[name] = _parse(name, raw.strip())
    return out


def configure(**changes: int) -> Limits:
    """Set limits for the rest of the process (the CLI's `--limit`)."""
    global _current
    _current = replace(_current, **changes)
    return _current


@contextmanager
def override(**changes: int) -> Iterator[Limits]:
    """Temporarily changed limits (tests, the service per request)."""
    global _current
    before = _current
    _current = replace(_current, **changes)
    try:
        yield _current
    finally:
        _current = before


def hint(name: str) -> str:
    """The end of a refusal message: how to let a genuine file through."""
    return (
        f"raise it with --limit {name}=N (or {ENV_PREFIX}{name.upper()}=N) if the file is genuine"
    )
