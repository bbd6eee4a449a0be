"""Conventional-codec benchmark on the shared real H&E data: rate, PSNR/SSIM/MS-SSIM and speed
of JPEG, JPEG XL, WebP, AVIF, JPEG 2000 and HTJ2K, BD-rate vs JPEG, and the bits each codec needs
to match JPEG q80.

Inputs: every lossless tile in ../shared/data/tiles (cut into 256 px tiles) and the two CMU-1
slides (64 random tissue tiles each at most, seed 0): the original Aperio SVS (JPEG q30 tiles)
and its JPEG q90 re-encode. Results are relative to those pixels as given. Writes
.bench/codecs/{results.csv,results.json,report.md,*.png} and prints the summary tables.

    python benchmarks/bench_codecs.py                 # the reference run
    python benchmarks/bench_codecs.py --max-tiles 8   # quick
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from common import BENCH_DIR, SHARED, SLIDES_DIR, TILES_DIR, log

OUT = BENCH_DIR / "codecs"
SLIDES = ("CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid_jpeg90.tiff")


def _pct(x: float) -> str:
    return "    n/a" if not math.isfinite(x) else f"{x:+6.1f}%"


def _num(x: float, spec: str = "6.3f") -> str:
    return format(x, spec) if math.isfinite(x) else "n/a".rjust(len(format(1.0, spec)))


def _mean(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"report folder (default {OUT})")
    ap.add_argument("--codecs", default="jpeg,jpegxl,webp,avif,jpeg2000,htj2k")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="encoder threads (default 1)")
    ap.add_argument("--max-tiles", type=int, default=64, help="tiles per input at most")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from slidepress.bench.codecs import run_codec_benchmark
    from slidepress.cli.common import progress_bars

    tiles = sorted(TILES_DIR.glob("*.png"))
    slides = [SLIDES_DIR / s for s in SLIDES]
    missing = [p for p in slides if not p.exists()]
    if not tiles or missing:
        log(f"shared data not found under {SHARED} (see README)")
        return 2
    t0 = time.perf_counter()
    with progress_bars("tiles") as start:  # the bars of `slidepress bench codecs`
        res = run_codec_benchmark(
            tiles + slides, args.out, args.codecs.split(","), None, tile=args.tile,
            threads=args.threads, max_tiles_per_input=args.max_tiles, seed=args.seed,
            progress=start,
        )  # fmt: skip
    wall = time.perf_counter() - t0

    n_tiles = sum(i["n_tiles"] for i in res.inputs)
    print(f"\n{len(res.inputs)} inputs, {n_tiles} tiles of {args.tile} px, {len(res.rows)} rows")
    print("\nBD-rate vs JPEG, mean over inputs (negative = fewer bits at equal quality)")
    print(f"{'codec':10s} {'PSNR pchip':>11s} {'cubic':>8s} {'MS-SSIM pchip':>14s} {'cubic':>8s}")
    for b in res.bd_rates:
        print(
            f"{b['codec']:10s} {_pct(b['bd_rate_psnr_pchip']):>11s} "
            f"{_pct(b['bd_rate_psnr_cubic']):>8s} {_pct(b['bd_rate_ms_ssim_db_pchip']):>14s} "
            f"{_pct(b['bd_rate_ms_ssim_db_cubic']):>8s}"
            f"   (inputs {b['n_inputs_psnr']}/{b['n_inputs_ms_ssim_db']} of {len(res.inputs)})"
        )
    kinds = list(dict.fromkeys(d["kind"] for d in res.bd_per_input))
    if len(kinds) > 1:
        print("\nBD-rate vs JPEG (pchip) by input kind: PSNR / MS-SSIM")
        for b in res.bd_rates:
            parts = []
            for k in kinds:
                sel = [d for d in res.bd_per_input if d["codec"] == b["codec"] and d["kind"] == k]
                p = _mean([d["bd_rate_psnr_pchip"] for d in sel])
                m = _mean([d["bd_rate_ms_ssim_db_pchip"] for d in sel])
                parts.append(f"{k}s ({len(sel)}) {_pct(p)} / {_pct(m)}")
            print(f"{b['codec']:10s} " + "   ".join(parts))
    if res.jpeg_q80_match:
        m0 = res.jpeg_q80_match[0]
        print(
            f"\nbpp to match JPEG q80 (PSNR {m0['target_psnr']:.2f} dB, MS-SSIM "
            f"{m0['target_ms_ssim_db']:.2f} dB; means over inputs; saving vs JPEG q80)"
        )
        print(f"{'codec':10s} {'bpp@PSNR':>9s} {'saving':>8s} {'bpp@MS-SSIM':>12s} {'saving':>8s}")
        for m in res.jpeg_q80_match:
            print(
                f"{m['codec']:10s} {_num(m['bpp_psnr']):>9s} {_pct(m['saving_pct_psnr']):>8s} "
                f"{_num(m['bpp_ms_ssim_db']):>12s} {_pct(m['saving_pct_ms_ssim_db']):>8s}"
                f"   (matched {m['n_matched_psnr']}/{m['n_matched_ms_ssim_db']} of "
                f"{m['n_inputs']})"
            )
    print(f"\n{res.report_path}  ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
