"""Conventional-codec benchmark: rate, distortion and speed of each codec and quality on real
tiles; rate-distortion plots, Bjøntegaard deltas against JPEG, and the rate each codec needs to
match JPEG q80 (the quality scanners typically ship).

    options.py    default codecs and sweeps, the JPEG q80 anchor, `--qualities` parsing
    inputs.py     images and slides -> the tiles every codec codes (seeded samples)
    measuring.py  one codec, one quality, one input: bytes, PSNR/SSIM/MS-SSIM, time per tile
    similarity.py the run's scorer (metrics.similarity) and its similarity columns
    summary.py    rows -> mean RD curve, BD-rates vs JPEG, rate to match JPEG q80
    report.py     results.csv / results.json / plots / report.md
    run.py        run_codec_benchmark: all of the above, in order

Everything is relative to the input pixels as given: most public pathology pixels already went
through JPEG once at the scanner, so "exact" means "equal to the scanner's decoded JPEG".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names -> submodule, imported on first access (PEP 562): the CLI reads DEFAULT_CODECS for its
# `--help` at every start, and should not pay for plotting, metrics and slide I/O then.
_EXPORTS = {
    "ANCHOR": "options",
    "ANCHOR_QUALITY": "options",
    "DEFAULT_CODECS": "options",
    "DEFAULT_EMBEDDING_ENCODER": "options",
    "DEFAULT_QUALITIES": "options",
    "parse_qualities": "options",
    "resolve_qualities": "options",
    "BenchInput": "inputs",
    "load_inputs": "inputs",
    "measure": "measuring",
    "Similarity": "similarity",
    "load_similarity": "similarity",
    "bd_tables": "summary",
    "match_anchor": "summary",
    "mean_curve": "summary",
    "BenchmarkResult": "run",
    "run_codec_benchmark": "run",
}
__all__ = [  # the names of _EXPORTS, spelled out for linters and type checkers
    "ANCHOR",
    "ANCHOR_QUALITY",
    "BenchInput",
    "BenchmarkResult",
    "DEFAULT_CODECS",
    "DEFAULT_EMBEDDING_ENCODER",
    "DEFAULT_QUALITIES",
    "Similarity",
    "bd_tables",
    "load_inputs",
    "load_similarity",
    "match_anchor",
    "mean_curve",
    "measure",
    "parse_qualities",
    "resolve_qualities",
    "run_codec_benchmark",
]

if TYPE_CHECKING:
    from .inputs import BenchInput, load_inputs
    from .measuring import measure
    from .options import (
        ANCHOR,
        ANCHOR_QUALITY,
        DEFAULT_CODECS,
        DEFAULT_EMBEDDING_ENCODER,
        DEFAULT_QUALITIES,
        parse_qualities,
        resolve_qualities,
    )
    from .run import BenchmarkResult, run_codec_benchmark
    from .similarity import Similarity, load_similarity
    from .summary import bd_tables, match_anchor, mean_curve


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
