"""From measured rows to the benchmark's summaries: the mean RD curve, Bjøntegaard deltas
against JPEG, and the rate each codec needs to match JPEG q80. Pure functions of the rows.

Each input weighs the same; deltas are per input, then their mean (the JVET convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...metrics import compression_ratio
from ..bdrate import bd_quality, bd_rate, overlap_fraction, rate_at_quality
from .options import ANCHOR, ANCHOR_QUALITY
from .similarity import COLUMNS as SIMILARITY

BD_METHODS = ("pchip", "cubic")
# quality axes for BD and matching (featsim_db is NaN when the feature similarity is off)
METRICS = {
    "psnr": "PSNR (dB)",
    "ms_ssim_db": "MS-SSIM (dB)",
    "featsim_db": "feature similarity (dB)",
}


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN if there is none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _curve(rows: list[dict[str, Any]], inp: str, codec: str, metric: str):
    sel = [r for r in rows if r["input"] == inp and r["codec"] == codec]
    return np.array([r["bpp"] for r in sel]), np.array([r.get(metric, math.nan) for r in sel])


def mean_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per codec and quality, the mean over inputs (each input weighs the same)."""
    keys = ("bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_db", "encode_ms", "decode_ms")
    out = []
    for codec in dict.fromkeys(r["codec"] for r in rows):
        for q in dict.fromkeys(r["quality"] for r in rows if r["codec"] == codec):
            sel = [r for r in rows if r["codec"] == codec and r["quality"] == q]
            d: dict[str, Any] = {"codec": codec, "quality": q, "n_inputs": len(sel)}
            d.update({k: float(np.mean([r[k] for r in sel])) for k in keys})
            d.update({k: finite_mean([r.get(k, math.nan) for r in sel]) for k in SIMILARITY})
            d["ratio_raw"] = compression_ratio(d["bpp"])
            d["max_abs_error"] = max(r["max_abs_error"] for r in sel)
            out.append(d)
    return out


def bd_tables(
    rows: list[dict[str, Any]], codecs: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """BD-rate and BD-quality of each codec vs JPEG, per input and averaged over inputs
    (the JVET convention: per-sequence deltas, then their mean)."""
    if ANCHOR not in codecs:
        return [], []
    kinds = {r["input"]: r["kind"] for r in rows}
    per_input: list[dict[str, Any]] = []
    for codec in codecs:
        if codec == ANCHOR:
            continue
        for inp, kind in kinds.items():
            d: dict[str, Any] = {"codec": codec, "input": inp, "kind": kind}
            for metric in METRICS:
                ra, qa = _curve(rows, inp, ANCHOR, metric)
                rt, qt = _curve(rows, inp, codec, metric)
                d[f"overlap_{metric}"] = overlap_fraction(qa, qt)
                for m in BD_METHODS:
                    try:
                        d[f"bd_rate_{metric}_{m}"] = bd_rate(ra, qa, rt, qt, m)
                        d[f"bd_{metric}_{m}"] = bd_quality(ra, qa, rt, qt, m)
                    except ValueError:  # under 2 usable points (e.g. a lossless codec)
                        d[f"bd_rate_{metric}_{m}"] = d[f"bd_{metric}_{m}"] = math.nan
            per_input.append(d)
    summary = []
    for codec in codecs:
        if codec == ANCHOR:
            continue
        sel = [d for d in per_input if d["codec"] == codec]
        s: dict[str, Any] = {"codec": codec, "anchor": ANCHOR}
        for key in sel[0]:
            if key not in ("codec", "input", "kind"):
                s[key] = finite_mean([d[key] for d in sel])
        for metric in METRICS:
            s[f"n_inputs_{metric}"] = sum(math.isfinite(d[f"bd_rate_{metric}_pchip"]) for d in sel)
        summary.append(s)
    return summary, per_input


def match_anchor(rows: list[dict[str, Any]], codecs: Sequence[str]) -> list[dict[str, Any]]:
    """Bits per pixel each codec needs for JPEG q80's PSNR and MS-SSIM, per input by pchip
    interpolation on the codec's RD curve (no extrapolation), then averaged over inputs."""
    if ANCHOR not in codecs:
        return []
    anchors = {
        r["input"]: r for r in rows if r["codec"] == ANCHOR and r["quality"] == ANCHOR_QUALITY
    }
    out = []
    for codec in codecs:
        d: dict[str, Any] = {"codec": codec, "n_inputs": len(anchors)}
        for metric in METRICS:
            matched, ref, saving = [], [], []
            for inp, a in anchors.items():
                r, q = _curve(rows, inp, codec, metric)
                try:
                    b = rate_at_quality(r, q, a.get(metric, math.nan))
                except ValueError:
                    b = math.nan
                if math.isfinite(b):
                    matched.append(b)
                    ref.append(a["bpp"])
                    saving.append(100.0 * (1.0 - b / a["bpp"]))
            d[f"target_{metric}"] = finite_mean([a.get(metric, math.nan) for a in anchors.values()])
            d[f"bpp_{metric}"] = finite_mean(matched)
            d[f"jpeg_q80_bpp_{metric}"] = finite_mean(ref)
            d[f"saving_pct_{metric}"] = finite_mean(saving)
            d[f"n_matched_{metric}"] = len(matched)
        out.append(d)
    return out
