"""Conventional-codec benchmark: rate, distortion and speed of each codec and quality on real
tiles; rate-distortion plots, Bjøntegaard deltas against JPEG, and the rate each codec needs to
match JPEG q80 (the quality scanners typically ship).

Tiles: an image (PNG, JPEG, ...) is cut into non-overlapping `tile` px tiles from its top-left,
partial ones dropped (an image smaller than one tile is used whole); a slide gives tissue tiles
(tissue fraction >= 0.5) of its level-0 grid. Either is capped at `max_tiles_per_input`, drawn
with a fixed seed. Every tile is encoded and decoded once per codec and quality: rate from the
real coded byte counts, PSNR from the pooled MSE, SSIM / MS-SSIM averaged over tiles, encode
and decode wall time per tile (median of single calls, after a warm-up call per codec).

Everything is relative to the input pixels as given: most public pathology pixels already went
through JPEG once at the scanner, so "exact" means "equal to the scanner's decoded JPEG".
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs import CODECS, Codec, get_codec
from ..errors import CodecError, SlideError, SlidepressError, TissueError, UsageError
from ..metrics import RAW_BPP, bits_per_pixel, compression_ratio, score_tiles
from ..store.atomic import atomic_path
from .bdrate import bd_quality, bd_rate, overlap_fraction, rate_at_quality

DEFAULT_CODECS = ("jpeg", "jpegxl", "webp", "avif", "jpeg2000", "htj2k")
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
ANCHOR, ANCHOR_QUALITY = "jpeg", 80.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
TISSUE_THRESHOLD = 0.5  # as `slidepress encode`: a tile is tissue if at least half of it is
BD_METHODS = ("pchip", "cubic")
METRICS = {"psnr": "PSNR (dB)", "ms_ssim_db": "MS-SSIM (dB)"}  # quality axes for BD and matching
_PROBE = np.full((32, 32, 3), 128, np.uint8)

COLUMNS = (
    "input", "kind", "codec", "quality", "n_tiles", "tile_h", "tile_w", "pixels", "bytes",
    "bpp", "ratio_raw", "source_bpp", "ratio_source", "psnr", "ssim", "ms_ssim", "ms_ssim_db",
    "ms_ssim_scales", "max_abs_error", "encode_ms", "decode_ms", "threads", "threads_applied",
)  # fmt: skip


@dataclass
class BenchInput:
    """One input reduced to the tiles the benchmark codes."""

    name: str
    path: Path
    kind: str  # "image" or "slide"
    tiles: np.ndarray  # (N, h, w, 3) uint8
    source_bpp: float  # the input file's own bits per level-0 pixel
    note: str

    def describe(self) -> dict[str, Any]:
        n, h, w = self.tiles.shape[:3]
        return {
            "name": self.name, "path": str(self.path), "kind": self.kind, "n_tiles": n,
            "tile_h": h, "tile_w": w, "source_bpp": self.source_bpp, "note": self.note,
        }  # fmt: skip


@dataclass
class BenchmarkResult:
    """Rows (one per input/codec/quality), the summaries, and where they were written."""

    rows: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    mean_curve: list[dict[str, Any]]
    bd_rates: list[dict[str, Any]]
    bd_per_input: list[dict[str, Any]]
    jpeg_q80_match: list[dict[str, Any]]
    out_dir: Path
    csv_path: Path
    json_path: Path
    report_path: Path
    plots: dict[str, Path] = field(default_factory=dict)


# -- options ------------------------------------------------------------------------------------


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
            raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(CODECS))}")
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


# -- inputs -------------------------------------------------------------------------------------


def _source_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _pick(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def _load_image(path: Path, tile: int, max_tiles: int, seed: int) -> BenchInput:
    from ..slide.image_reader import load_image_rgb

    pixels, _ = load_image_rgb(path)  # bounded by limits.max_image_pixels before decoding
    h, w = pixels.shape[:2]
    ys, xs = range(0, h - tile + 1, tile), range(0, w - tile + 1, tile)
    if not len(ys) or not len(xs):
        tiles, note = pixels[None], f"whole image {w}x{h} (smaller than one {tile} px tile)"
    else:
        origins = [(y, x) for y in ys for x in xs]
        chosen = _pick(len(origins), max_tiles, np.random.default_rng(seed))
        tiles = np.stack(
            [pixels[y : y + tile, x : x + tile] for y, x in (origins[i] for i in chosen)]
        )
        note = f"{len(chosen)} of {len(origins)} full tiles of a {w}x{h} image"
        if len(chosen) < len(origins):
            note += f" (seed {seed})"
    bpp = bits_per_pixel(_source_bytes(path), w * h)
    return BenchInput(path.name, path, "image", np.ascontiguousarray(tiles), bpp, note)


def _load_slide(
    path: Path, tile: int, max_tiles: int, seed: int, mpp_override: float | None
) -> BenchInput:
    from ..slide import open_slide
    from ..slide.mpp import resolve_mpp
    from ..slide.tissue import detect_tissue
    from ..tiling import GridSpec, plan_grid

    with open_slide(path) as reader:
        mpp = resolve_mpp(reader.info, mpp_override)
        grid = plan_grid(reader, mpp, GridSpec(tile, tile, mpp))  # level 0, no resampling
        w0, h0 = reader.info.dimensions
        if grid.rows * grid.cols == 0:
            raise SlideError(f"{path.name}: {w0}x{h0} is smaller than one {tile} px tile")
        frac = detect_tissue(reader, mpp).fraction_in_boxes(grid.boxes())
        cells = np.flatnonzero(frac >= TISSUE_THRESHOLD)
        if not len(cells):
            raise TissueError(f"{path.name}: no {tile} px tile is at least half tissue")
        chosen = cells[_pick(len(cells), max_tiles, np.random.default_rng(seed))]
        tiles = np.stack(
            [
                grid.read_block(reader, r, r + 1, c, c + 1)
                for r, c in (divmod(int(i), grid.cols) for i in chosen)
            ]
        )
    note = f"{len(chosen)} of {len(cells)} tissue tiles at level 0, {mpp:.4g} um/px"
    if len(chosen) < len(cells):
        note += f" (seed {seed})"
    bpp = bits_per_pixel(_source_bytes(path), w0 * h0)  # whole file: all levels + label/macro
    return BenchInput(path.name, path, "slide", tiles, bpp, note)


def load_inputs(
    inputs: Sequence[Path],
    tile: int = 256,
    max_tiles_per_input: int = 64,
    seed: int = 0,
    mpp_override: float | None = None,
) -> list[BenchInput]:
    """Tiles of every input: images are cut into tiles, slides give tissue tiles."""
    out: list[BenchInput] = []
    seen: dict[str, int] = {}
    for p in map(Path, inputs):
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            inp = _load_image(p, tile, max_tiles_per_input, seed)
        else:
            inp = _load_slide(p, tile, max_tiles_per_input, seed, mpp_override)
        seen[inp.name] = seen.get(inp.name, 0) + 1
        if seen[inp.name] > 1:  # same file name in two folders
            inp.name = f"{inp.name} ({seen[inp.name]})"
        out.append(inp)
    return out


# -- measuring ----------------------------------------------------------------------------------


def _make_codec(name: str, quality: float, threads: int) -> tuple[Codec, bool]:
    """The codec with `numthreads=threads` where its encoder takes it (libjxl, libwebp,
    libavif, OpenJPEG), else as is; warmed up by one call each way."""
    codec = get_codec(name, quality, numthreads=threads)
    try:
        data = codec.encode(_PROBE)
        applied = True
    except TypeError:  # this encoder has no numthreads
        codec = get_codec(name, quality)
        data = codec.encode(_PROBE)
        applied = False
    codec.decode(data)
    return codec, applied


def measure(
    inp: BenchInput, codec: Codec, advance: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Encode and decode every tile of `inp` once: rate, quality, and the median time per
    tile (robust to scheduler hiccups, which dominate sub-millisecond calls)."""
    n_bytes, max_err = 0, 0
    enc_s, dec_s, decoded = [], [], []
    q = f"{codec.name} q{codec.quality:g}"
    for t in inp.tiles:
        t0 = time.perf_counter()
        try:
            data = codec.encode(t)
        except SlidepressError:
            raise
        except Exception as e:
            raise CodecError(f"{q}: cannot encode a tile of {inp.name}: {e}") from None
        t1 = time.perf_counter()
        out = codec.decode(data)
        t2 = time.perf_counter()
        if out.shape != t.shape or out.dtype != np.uint8:
            raise CodecError(f"{q}: decoded {out.shape} {out.dtype}, expected {t.shape} uint8")
        n_bytes += len(data)
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
        max_err = max(max_err, int(np.abs(out.astype(np.int16) - t).max()))
        decoded.append(out)
        if advance:
            advance(1)
    n, h, w = inp.tiles.shape[:3]
    s = score_tiles(inp.tiles, decoded).summary()
    bpp = bits_per_pixel(n_bytes, n * h * w)
    return {
        "n_tiles": n, "tile_h": h, "tile_w": w, "pixels": n * h * w, "bytes": n_bytes,
        "bpp": bpp, "ratio_raw": compression_ratio(bpp, RAW_BPP), "source_bpp": inp.source_bpp,
        "ratio_source": compression_ratio(bpp, inp.source_bpp), "psnr": s["psnr"],
        "ssim": s["ssim"], "ms_ssim": s["ms_ssim"], "ms_ssim_db": s["ms_ssim_db"],
        "ms_ssim_scales": s["ms_ssim_scales_min"], "max_abs_error": max_err,
        "encode_ms": 1e3 * float(np.median(enc_s)), "decode_ms": 1e3 * float(np.median(dec_s)),
    }  # fmt: skip


@contextmanager
def _single_thread_torch() -> Iterator[None]:
    """Metrics on one torch thread while codecs are timed: idle OpenMP workers would spin
    between the timed calls, and on a busy machine 2 threads ran SSIM 5x slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[str], Callable[[int], None]]]:
    if not enabled:
        yield lambda _desc: lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("tiles"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as prog:
        task = prog.add_task("codecs", total=total)

        def start(desc: str) -> Callable[[int], None]:
            prog.update(task, description=desc)
            return lambda n: prog.advance(task, n)

        yield start


# -- summaries ----------------------------------------------------------------------------------


def _finite_mean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _curve(rows: list[dict[str, Any]], inp: str, codec: str, metric: str):
    sel = [r for r in rows if r["input"] == inp and r["codec"] == codec]
    return np.array([r["bpp"] for r in sel]), np.array([r[metric] for r in sel])


def mean_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per codec and quality, the mean over inputs (each input weighs the same)."""
    keys = ("bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_db", "encode_ms", "decode_ms")
    out = []
    for codec in dict.fromkeys(r["codec"] for r in rows):
        for q in dict.fromkeys(r["quality"] for r in rows if r["codec"] == codec):
            sel = [r for r in rows if r["codec"] == codec and r["quality"] == q]
            d: dict[str, Any] = {"codec": codec, "quality": q, "n_inputs": len(sel)}
            d.update({k: float(np.mean([r[k] for r in sel])) for k in keys})
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
                s[key] = _finite_mean([d[key] for d in sel])
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
                    b = rate_at_quality(r, q, a[metric])
                except ValueError:
                    b = math.nan
                if math.isfinite(b):
                    matched.append(b)
                    ref.append(a["bpp"])
                    saving.append(100.0 * (1.0 - b / a["bpp"]))
            d[f"target_{metric}"] = _finite_mean([a[metric] for a in anchors.values()])
            d[f"bpp_{metric}"] = _finite_mean(matched)
            d[f"jpeg_q80_bpp_{metric}"] = _finite_mean(ref)
            d[f"saving_pct_{metric}"] = _finite_mean(saving)
            d[f"n_matched_{metric}"] = len(matched)
        out.append(d)
    return out


# -- outputs ------------------------------------------------------------------------------------


def _json_safe(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_cell(r[c]) for c in COLUMNS])


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _plots(out_dir: Path, curve: list[dict[str, Any]], codecs: Sequence[str]) -> dict[str, Path]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    paths: dict[str, Path] = {}
    for metric, label in METRICS.items():
        fig = Figure(figsize=(7, 5), layout="tight")
        ax = fig.subplots()
        for codec in codecs:
            pts = [
                (c["bpp"], c[metric], c["quality"])
                for c in curve
                if c["codec"] == codec and math.isfinite(c[metric])
            ]
            if not pts:
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=codec)
            if codec == ANCHOR:
                q80 = [p for p in pts if p[2] == ANCHOR_QUALITY]
                if q80:
                    ax.plot(q80[0][0], q80[0][1], "k*", ms=12, label="JPEG q80")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel(label + (" = -10 log10(1 - MS-SSIM)" if metric == "ms_ssim_db" else ""))
        ax.set_title(f"Rate-distortion, mean over inputs: {label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        p = out_dir / f"rd_{metric.replace('_db', '')}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        paths[f"rd_{metric}"] = p
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    x = np.arange(len(codecs))
    for i, (key, label) in enumerate((("encode_ms", "encode"), ("decode_ms", "decode"))):
        means, lo, hi = [], [], []
        for codec in codecs:
            v = [c[key] for c in curve if c["codec"] == codec]
            means.append(float(np.mean(v)))
            lo.append(means[-1] - min(v))
            hi.append(max(v) - means[-1])
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(x, list(codecs))
    ax.set_yscale("log")
    ax.set_ylabel("ms per tile (log scale)")
    ax.set_title("Median time per tile, mean over qualities and inputs (bars: min-max)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    p = out_dir / "timing.png"
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    paths["timing"] = p
    return paths


def _fmt(x: Any, spec: str = ".2f", pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = format(x, spec)
    return f"{'+' if x > 0 else ''}{s} %" if pct else s


def _table(header: Sequence[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _report(
    config: dict[str, Any],
    env: dict[str, Any],
    inputs: list[BenchInput],
    curve: list[dict[str, Any]],
    bd: list[dict[str, Any]],
    bd_in: list[dict[str, Any]],
    match: list[dict[str, Any]],
    plots: dict[str, Path],
    codecs: Sequence[str],
) -> str:
    md = ["# Conventional codec benchmark", ""]
    md += [
        f"{env['date']} · slidepress {env['slidepress']} · {env['platform']} · "
        f"{env['cpu_count']} CPUs · tile {config['tile']} px · encoder threads "
        f"{config['threads']} · seed {config['seed']}",
        "",
        "> **Relative to the input as given.** Almost all public pathology pixels went through "
        "JPEG once at the scanner (CMU-1-Small-Region.svs holds Aperio JPEG q30 tiles; the "
        "`_pyramid_jpeg90` file is those pixels JPEG-coded again at q90). Distortion here is "
        "measured against those decoded pixels, not against the glass, and a JPEG re-encode "
        "on the scanner's 8x8 grid is favoured on such inputs.",
        "",
        "## Inputs",
        "",
    ]
    md.append(
        _table(
            ["input", "kind", "tiles", "source bpp", "note"],
            [[i.name, i.kind, str(len(i.tiles)), _fmt(i.source_bpp), i.note] for i in inputs],
        )
    )
    md += [
        "",
        "Source bpp: the input file's size over its level-0 pixels (for slides this includes "
        "the pyramid and label/macro images, so it overstates level 0's own rate).",
        "",
    ]
    if bd:
        md += [f"## BD-rate vs {ANCHOR.upper()} (mean over inputs, pchip)", ""]
        md.append(
            _table(
                ["codec", "BD-rate PSNR", "BD-rate MS-SSIM", "BD-PSNR (dB)", "BD-MS-SSIM (dB)",
                 "inputs"],
                [
                    [
                        b["codec"],
                        _fmt(b["bd_rate_psnr_pchip"], ".1f", pct=True),
                        _fmt(b["bd_rate_ms_ssim_db_pchip"], ".1f", pct=True),
                        _fmt(b["bd_psnr_pchip"], "+.2f"),
                        _fmt(b["bd_ms_ssim_db_pchip"], "+.2f"),
                        f"{b['n_inputs_psnr']}/{b['n_inputs_ms_ssim_db']}",
                    ]
                    for b in bd
                ],
            )
        )  # fmt: skip
        md += [
            "",
            "Negative BD-rate = fewer bits than JPEG for the same quality, averaged over the "
            "quality range both curves cover (per input, then the mean over inputs; `inputs` "
            "counts those with overlapping PSNR / MS-SSIM ranges). MS-SSIM is used in dB, "
            "-10 log10(1 - MS-SSIM), as in learned-compression papers. Only each curve's RD "
            "envelope enters BD-rate and matching: a point that does not beat a cheaper point "
            "of the same codec is left out (e.g. JPEG q95 after q90 on pixels that were JPEG "
            "q90 already).",
            "",
            "The same with the original cubic-polynomial fit (VCEG-M33):",
            "",
        ]
        md.append(
            _table(
                ["codec", "BD-rate PSNR (cubic)", "BD-rate MS-SSIM (cubic)", "PSNR overlap"],
                [
                    [
                        b["codec"],
                        _fmt(b["bd_rate_psnr_cubic"], ".1f", pct=True),
                        _fmt(b["bd_rate_ms_ssim_db_cubic"], ".1f", pct=True),
                        _fmt(b["overlap_psnr"], ".0%"),
                    ]
                    for b in bd
                ],
            )
        )
        md += [""]
    if match:
        md += [f"## Rate to match {ANCHOR.upper()} q{ANCHOR_QUALITY:g} (the clinical default)", ""]
        m0 = match[0]
        md += [
            f"JPEG q80 reaches {_fmt(m0['target_psnr'])} dB PSNR and "
            f"{_fmt(m0['target_ms_ssim_db'])} dB MS-SSIM (means over inputs). Each codec's bpp "
            "at the same quality is interpolated on its RD curve per input (pchip on "
            "log-rate; no extrapolation), then averaged over the inputs where it reaches it.",
            "",
        ]
        md.append(
            _table(
                ["codec", "bpp @ PSNR", "saving", "bpp @ MS-SSIM", "saving", "inputs matched"],
                [
                    [
                        d["codec"],
                        _fmt(d["bpp_psnr"], ".3f"),
                        _fmt(d["saving_pct_psnr"], ".1f", pct=True),
                        _fmt(d["bpp_ms_ssim_db"], ".3f"),
                        _fmt(d["saving_pct_ms_ssim_db"], ".1f", pct=True),
                        f"{d['n_matched_psnr']}/{d['n_matched_ms_ssim_db']} of {d['n_inputs']}",
                    ]
                    for d in match
                ],
            )
        )
        md += ["", "Saving: mean over inputs of 1 - bpp / bpp(JPEG q80); positive = smaller.", ""]
    md += ["## Rate-distortion (mean over inputs)", ""]
    for key in ("rd_psnr", "rd_ms_ssim_db"):
        if key in plots:
            md += [f"![{key}]({plots[key].name})", ""]
    md.append(
        _table(
            ["codec", "quality", "bpp", "x vs raw", "PSNR", "SSIM", "MS-SSIM", "MS-SSIM dB",
             "enc ms", "dec ms", "max err"],
            [
                [
                    c["codec"], f"{c['quality']:g}", _fmt(c["bpp"], ".3f"),
                    _fmt(c["ratio_raw"], ".1f"), _fmt(c["psnr"]), _fmt(c["ssim"], ".4f"),
                    _fmt(c["ms_ssim"], ".4f"), _fmt(c["ms_ssim_db"]), _fmt(c["encode_ms"], ".1f"),
                    _fmt(c["decode_ms"], ".1f"), str(c["max_abs_error"]),
                ]
                for c in curve
            ],
        )
    )  # fmt: skip
    md += [
        "",
        "`max err`: largest absolute pixel error over all tiles and inputs; 255 or close to it "
        "on a lossy codec at high quality points to wrapped (not clipped) decoder output.",
        "",
        "## Speed",
        "",
        f"![timing]({plots['timing'].name})" if "timing" in plots else "",
        "",
        "Median wall time of single-tile calls on this machine (one warm-up call per codec "
        f"and quality first); encoders with numthreads={config['threads']} where they take it "
        f"({', '.join(config['threads_applied']) or 'none'}), decoders at imagecodecs' default "
        "(the codec interface has no decoder-thread setting). Metrics ran between the timed "
        "calls on one torch thread.",
        "",
    ]
    if bd_in:
        md += ["## BD-rate vs JPEG per input (pchip, PSNR / MS-SSIM)", ""]
        others = [c for c in codecs if c != ANCHOR]
        kinds = list(dict.fromkeys(d["kind"] for d in bd_in))
        if len(kinds) > 1:
            md += [
                "Lossless images and slides (JPEG-coded at the scanner) behave differently, "
                "so here is the mean over each kind before the per-input values:",
                "",
            ]
            body = []
            for c in others:
                row = [c]
                for k in kinds:
                    sel = [d for d in bd_in if d["codec"] == c and d["kind"] == k]
                    row.append(
                        f"{_fmt(_finite_mean([d['bd_rate_psnr_pchip'] for d in sel]), '.1f')} / "
                        f"{_fmt(_finite_mean([d['bd_rate_ms_ssim_db_pchip'] for d in sel]), '.1f')}"
                    )
                body.append(row)
            md += [_table(["codec", *[f"{k}s (%)" for k in kinds]], body), ""]
        names = list(dict.fromkeys(d["input"] for d in bd_in))
        body = []
        for name in names:
            row = [name]
            for c in others:
                d = next(x for x in bd_in if x["input"] == name and x["codec"] == c)
                row.append(
                    f"{_fmt(d['bd_rate_psnr_pchip'], '.1f')} / "
                    f"{_fmt(d['bd_rate_ms_ssim_db_pchip'], '.1f')}"
                )
            body.append(row)
        md.append(_table(["input", *[f"{c} (%)" for c in others]], body))
        md += [""]
    md += [
        "## Settings",
        "",
        "```json",
        json.dumps(_json_safe({"config": config, "environment": env}), indent=2),
        "```",
        "",
        "Full rows: `results.csv` / `results.json` (one row per input, codec and quality).",
        "",
    ]
    return "\n".join(md)


def _environment(codecs: Sequence[str], threads: int) -> dict[str, Any]:
    import imagecodecs

    from .. import __version__

    libs = {}
    for name in codecs:
        try:
            libs[name] = get_codec(name).describe()
        except SlidepressError:
            pass
    try:
        from importlib.metadata import version

        msssim = version("pytorch-msssim")
    except Exception:
        msssim = "?"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "slidepress": __version__,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "imagecodecs": imagecodecs.__version__,
        "pytorch_msssim": msssim,
        "codecs": libs,
    }


# -- entry point --------------------------------------------------------------------------------


def run_codec_benchmark(
    inputs: list[Path],
    out_dir: Path,
    codecs: list[str],
    qualities: dict[str, list[float]] | None = None,
    tile: int = 256,
    threads: int = 1,
    max_tiles_per_input: int = 64,
    seed: int = 0,
    mpp_override: float | None = None,
    *,
    progress: bool = False,
) -> BenchmarkResult:
    """Benchmark `codecs` on the tiles of `inputs`; write results.csv, results.json, RD and
    timing plots and report.md into `out_dir` (created; earlier results there replaced)."""
    if not inputs:
        raise UsageError("no inputs to benchmark")
    if not 16 <= tile <= 4096:
        raise UsageError(f"tile must be within 16-4096 px, got {tile}")
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if max_tiles_per_input < 1:
        raise UsageError(f"max tiles per input must be >= 1, got {max_tiles_per_input}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder")
    codecs = list(codecs)
    sweep = resolve_qualities(codecs, qualities)
    from importlib.util import find_spec

    if find_spec("torch") is None or find_spec("pytorch_msssim") is None:
        raise UsageError("SSIM/MS-SSIM need torch and pytorch-msssim: pip install -e '.[torch]'")
    loaded = load_inputs(inputs, tile, max_tiles_per_input, seed, mpp_override)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    applied: dict[str, bool] = {}
    total = sum(len(i.tiles) for i in loaded) * sum(len(q) for q in sweep.values())
    with _progress(progress, total) as start, _single_thread_torch():
        for inp in loaded:
            for name in codecs:
                for q in sweep[name]:
                    codec, applied[name] = _make_codec(name, q, threads)
                    advance = start(f"{inp.name[:24]} {name} q{q:g}")
                    m = measure(inp, codec, advance)
                    rows.append(
                        {"input": inp.name, "kind": inp.kind, "codec": name, "quality": q, **m,
                         "threads": threads, "threads_applied": applied[name]}
                    )  # fmt: skip

    curve = mean_curve(rows)
    bd, bd_in = bd_tables(rows, codecs)
    match = match_anchor(rows, codecs)
    config = {
        "inputs": [str(p) for p in inputs], "codecs": codecs, "qualities": sweep, "tile": tile,
        "threads": threads, "threads_applied": [c for c in codecs if applied.get(c)],
        "max_tiles_per_input": max_tiles_per_input, "seed": seed, "mpp_override": mpp_override,
        "tissue_threshold": TISSUE_THRESHOLD, "anchor": f"{ANCHOR} q{ANCHOR_QUALITY:g}",
        "bd_methods": list(BD_METHODS),
    }  # fmt: skip
    env = _environment(codecs, threads)
    plots = _plots(out_dir, curve, codecs)
    csv_path, json_path, report_path = (
        out_dir / "results.csv", out_dir / "results.json", out_dir / "report.md"
    )  # fmt: skip
    _write_csv(csv_path, rows)
    doc = {
        "config": config, "environment": env, "inputs": [i.describe() for i in loaded],
        "rows": rows, "mean_curve": curve, "bd_rate": bd, "bd_rate_per_input": bd_in,
        "jpeg_q80_match": match,
        "notes": "non-finite numbers (inf PSNR of exact tiles, n/a deltas) are written as null",
    }  # fmt: skip
    _write_text(json_path, json.dumps(_json_safe(doc), indent=1) + "\n")
    _write_text(report_path, _report(config, env, loaded, curve, bd, bd_in, match, plots, codecs))
    return BenchmarkResult(
        rows=rows, inputs=[i.describe() for i in loaded], mean_curve=curve, bd_rates=bd,
        bd_per_input=bd_in, jpeg_q80_match=match, out_dir=out_dir, csv_path=csv_path,
        json_path=json_path, report_path=report_path, plots=plots,
    )  # fmt: skip
