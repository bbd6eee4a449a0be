"""What the codec benchmark sweeps: the default codecs and quality points (each declared on
its codec class, `Codec.sweeps`), the JPEG q80 anchor, and the checking of `--qualities` (its
syntax is parsed by `slidepress.jobs.qualities`, the same for `eval downstream`).

Imports no codec library (codec names come from the lazy `slidepress.codecs.CODECS`; the
sweeps are read from the classes on first use), so the CLI can show these defaults in
`--help` for free.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...codecs import CODECS, get_codec
from ...errors import UsageError
from ...jobs.qualities import parse_qualities

__all__ = [
    "ANCHOR", "ANCHOR_QUALITY", "DEFAULT_CODECS", "DEFAULT_EMBEDDING_ENCODER",
    "DEFAULT_QUALITIES",  # noqa: F822 - from the codec classes, on first use (__getattr__)
    "default_sweep", "parse_qualities", "resolve_qualities",
]  # fmt: skip

# The lossy codecs with a tuned sweep (each class's `sweeps["bench"]`, codecs/base.py; the
# lossless `png` reference is opt-in); `learned` is slidepress's own (its 8 rate levels).
DEFAULT_CODECS: tuple[str, ...] = (
    "jpeg", "jpegxl", "webp", "avif", "jpeg2000", "htj2k", "learned",
)  # fmt: skip
ANCHOR, ANCHOR_QUALITY = "jpeg", 80.0  # the quality scanners typically ship
# Whose embeddings `embsim` compares (any `slidepress.encoders` name; "none" skips it).
DEFAULT_EMBEDDING_ENCODER = "nic-multitask"


def resolve_qualities(
    codecs: Sequence[str], qualities: dict[str, list[float]] | None
) -> dict[str, list[float]]:
    """Each codec's sweep (given, else default), validated, ordered from low to high quality;
    JPEG always includes q80 because the summaries are anchored on it."""
    if not codecs:
        raise UsageError("no codecs to benchmark")
    for name in codecs:
        if name not in CODECS:
            raise CODECS.unknown(name)
    if len(set(codecs)) != len(codecs):
        raise UsageError(f"codec listed twice in {', '.join(codecs)}")
    extra = set(qualities or {}) - set(codecs)
    if extra:
        raise UsageError(f"qualities given for {', '.join(sorted(extra))}, not among the codecs")
    out: dict[str, list[float]] = {}
    for name in codecs:
        cls = CODECS[name]
        qs = (qualities or {}).get(name) or default_sweep(name) or [cls.default_quality]
        qs = sorted({float(q) for q in qs if q is not None}, reverse=not cls.higher_is_better)
        if name == ANCHOR and ANCHOR_QUALITY not in qs:
            qs = sorted({*qs, ANCHOR_QUALITY})
        for q in qs:
            get_codec(name, q)  # range check -> CodecError naming the codec and its range
        out[name] = qs
    return out


def default_sweep(name: str) -> list[float]:
    """A codec's default sweep (its class's `sweeps["bench"]`; empty: none), low to high."""
    return list(CODECS[name].sweeps.get("bench", ()))


def __getattr__(name: str) -> dict[str, list[float]]:
    # DEFAULT_QUALITIES is read from the codec classes (imagecodecs) on first use only, so
    # the CLI's --help, which reads DEFAULT_CODECS, imports no codec library
    if name == "DEFAULT_QUALITIES":
        return {c: default_sweep(c) for c in DEFAULT_CODECS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
