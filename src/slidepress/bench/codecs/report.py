"""The benchmark's report folder: results.csv / results.json (one row per input, codec and
quality), RD and timing plots, and report.md with the BD-rate and JPEG q80 tables.

Formatting and writing only (through `store.atomic`, so an interrupted run leaves no half
file); the numbers come from `measure` and `summary`.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...codecs import get_codec
from ...errors import SlidepressError
from ...jsonsafe import json_safe
from ...store.atomic import save_figure, write_csv, write_text
from .inputs import BenchInput
from .options import ANCHOR, ANCHOR_QUALITY
from .similarity import COLUMNS as SIMILARITY
from .summary import finite_mean

COLUMNS = (
    "input", "kind", "codec", "quality", "n_tiles", "tile_h", "tile_w", "pixels", "bytes",
    "bpp", "ratio_raw", "source_bpp", "ratio_source", "psnr", "ssim", "ms_ssim", "ms_ssim_db",
    "ms_ssim_scales", "max_abs_error", "encode_ms", "decode_ms", "threads", "threads_applied",
    *SIMILARITY,
)  # fmt: skip
# RD plots: metric -> (file, y label); the similarity plots only when they were measured
PLOTS = {
    "psnr": ("rd_psnr.png", "PSNR (dB)"),
    "ms_ssim_db": ("rd_ms_ssim.png", "MS-SSIM (dB) = -10 log10(1 - MS-SSIM)"),
    "featsim_mean": ("rd_featsim.png", "feature similarity (cosine, mean of 6 depths)"),
    "embsim": ("rd_embsim.png", "embedding similarity (cosine)"),
}


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def write_results_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """COLUMNS of every row, floats to 6 significant digits."""
    return write_csv(path, [{c: _cell(r.get(c, math.nan)) for c in COLUMNS} for r in rows])


def write_results_json(path: Path, doc: dict[str, Any]) -> Path:
    """Everything measured and summarised; non-finite numbers as null."""
    return write_text(path, json.dumps(json_safe(doc), indent=1) + "\n")


def write_plots(
    out_dir: Path, curve: list[dict[str, Any]], codecs: Sequence[str]
) -> dict[str, Path]:
    """rd_psnr.png, rd_ms_ssim.png, rd_featsim.png and rd_embsim.png (mean curves, JPEG q80
    starred; the last two when measured) and timing.png."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    paths: dict[str, Path] = {}
    for metric, (file, label) in PLOTS.items():
        if not any(math.isfinite(c.get(metric, math.nan)) for c in curve):
            continue
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
        ax.set_ylabel(label)
        ax.set_title(f"Rate-distortion, mean over inputs: {label.split(' = ')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        paths[f"rd_{metric}"] = save_figure(fig, out_dir / file)
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
    paths["timing"] = save_figure(fig, p)
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


def render_report(
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
    """report.md: inputs, BD-rate and JPEG q80 tables, RD curve, speed, per-input deltas and
    the settings, with the caveat that everything is relative to the input as given."""
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
    has_fs = any(math.isfinite(c.get("featsim_mean", math.nan)) for c in curve)
    if bd:
        md += [f"## BD-rate vs {ANCHOR.upper()} (mean over inputs, pchip)", ""]
        fs_head = ["BD-rate feature sim."] if has_fs else []
        md.append(
            _table(
                ["codec", "BD-rate PSNR", "BD-rate MS-SSIM", *fs_head, "BD-PSNR (dB)",
                 "BD-MS-SSIM (dB)", "inputs"],
                [
                    [
                        b["codec"],
                        _fmt(b["bd_rate_psnr_pchip"], ".1f", pct=True),
                        _fmt(b["bd_rate_ms_ssim_db_pchip"], ".1f", pct=True),
                        *([_fmt(b.get("bd_rate_featsim_db_pchip"), ".1f", pct=True)]
                          if has_fs else []),
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
            "q90 already)."
            + (
                " Feature similarity enters BD-rate in dB too, -10 log10(1 - mean similarity)."
                if has_fs
                else ""
            ),
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
    ]
    md += _similarity_section(config, curve, plots)
    md += [
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
                        f"{_fmt(finite_mean([d['bd_rate_psnr_pchip'] for d in sel]), '.1f')} / "
                        f"{_fmt(finite_mean([d['bd_rate_ms_ssim_db_pchip'] for d in sel]), '.1f')}"
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
        json.dumps(json_safe({"config": config, "environment": env}), indent=2),
        "```",
        "",
        "Full rows: `results.csv` / `results.json` (one row per input, codec and quality).",
        "",
    ]
    return "\n".join(md)


def _similarity_section(
    config: dict[str, Any], curve: list[dict[str, Any]], plots: dict[str, Path]
) -> list[str]:
    """Feature and embedding similarity per codec and quality (nothing when neither ran)."""
    if not any(k in plots for k in ("rd_featsim_mean", "rd_embsim")):
        return []
    sim = config.get("similarity") or {}
    fs, enc = sim.get("feature_similarity"), sim.get("embedding_encoder")
    md = ["## Feature and embedding similarity (mean over tiles, then inputs)", ""]
    md += [f"![{k}]({plots[k].name})" for k in ("rd_featsim_mean", "rd_embsim") if k in plots]
    md += [
        "",
        "Feature similarity (Fischer et al., J Pathol Inform 2025): cosine similarity of the "
        "original's and the decoded tile's flattened feature maps of a ResNet18 trained on "
        "pathology, at six depths (stem, layer1-4, pooled), and their mean; 1 = identical "
        + (f"(weights {fs['name']} @{str(fs['weights_hash'])[:12]}). " if fs else ". ")
        + "Embedding similarity: mean cosine similarity of the "
        + (f"`{enc['name']}`" if enc else "encoder's")
        + " patch embeddings of original and decoded tiles (how far compression moves the "
        "NIC grid). See `slidepress.metrics.featsim` / `embsim` for the exact definitions.",
        "",
    ]
    depths = [k.removeprefix("featsim_") for k in SIMILARITY if k.startswith("featsim_")]
    depths = [d for d in depths if d not in ("mean", "db")]
    body = [
        [c["codec"], f"{c['quality']:g}", _fmt(c["bpp"], ".3f"),
         *[_fmt(c.get(f"featsim_{d}"), ".4f") for d in (*depths, "mean")],
         _fmt(c.get("embsim"), ".5f")]
        for c in curve
    ]  # fmt: skip
    md += [_table(["codec", "quality", "bpp", *depths, "mean", "embsim"], body), ""]
    return md


def environment(codecs: Sequence[str]) -> dict[str, Any]:
    """Machine, library versions and each codec's own description, for the record."""
    import imagecodecs

    from ... import __version__

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
