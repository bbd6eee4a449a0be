"""What the codec benchmark sweeps: the default codecs and quality points, the JPEG q80 anchor,
and the parsing and checking of `--qualities`.

Imports no codec library (codec names come from the lazy `slidepress.codecs.CODECS`), so the
CLI can show these defaults in `--help` for free.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...codecs import CODECS, get_codec
from ...errors import UsageError

# Sweeps chosen so that every codec covers JPEG q30-q95's range on the shared data (mean PSNR
# about 27-34 dB, MS-SSIM 15-23 dB at 256 px) with some margin; low to high quality.
DEFAULT_QUALITIES: dict[str, list[float]] = {
    "jpeg": [30, 50, 70, 80, 90, 95],
    "jpegxl": [30, 50, 70, 80, 90, 95],
    "webp": [30, 50, 70, 80, 90, 95],
    "avif": [30, 45, 60, 70, 80, 90],
    "jpeg2000": [26, 28, 31, 34, 37, 40, 45],  # target PSNR, dB
    # quantisation step, smaller is better; 0.15 -> ~25 dB, 0.01 -> ~43 dB once decoding clips
    "htj2k": [0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01],
}
# The lossy codecs with a tuned sweep (the lossless `png` reference is opt-in).
DEFAULT_CODECS: tuple[str, ...] = tuple(DEFAULT_QUALITIES)
ANCHOR, ANCHOR_QUALITY = "jpeg", 80.0  # the quality scanners typically ship
# Whose embeddings `embsim` compares (any `slidepress.encoders` name; "none" skips it).
DEFAULT_EMBEDDING_ENCODER = "nic-multitask"


def parse_qualities(text: str | None) -> dict[str, list[float]]:
    """'jpeg=50,80,90;webp=60,80' -> {'jpeg': [50, 80, 90], 'webp': [60, 80]}."""
    out: dict[str, list[float]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--qualities: expected CODEC=Q1,Q2,... in {part.strip()!r}")
        try:
            qs = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--qualities: {values.strip()!r} are not numbers ({name})") from None
        if not qs:
            raise UsageError(f"--qualities: no values for {name}")
        if name in out:
            raise UsageError(f"--qualities: {name} given twice")
        out[name] = qs
    return out


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
        qs = (qualities or {}).get(name) or DEFAULT_QUALITIES.get(name) or [cls.default_quality]
        qs = sorted({float(q) for q in qs if q is not None}, reverse=not cls.higher_is_better)
        if name == ANCHOR and ANCHOR_QUALITY not in qs:
            qs = sorted({*qs, ANCHOR_QUALITY})
        for q in qs:
            get_codec(name, q)  # range check -> CodecError naming the codec and its range
        out[name] = qs
    return out
