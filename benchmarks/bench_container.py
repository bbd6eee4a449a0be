"""Container benchmark: compress throughput with 2 workers vs 1, region-read latency vs decoding
the same tiles straight from memory with imagecodecs, and peak RSS compressing a large slide.

Uses the synthetic pyramidal mosaic of real H&E tiles that tissue_slide.py builds (cached in
.bench/). All numbers are ratios against a baseline measured in the same run.

    python benchmarks/bench_container.py                      # 20k slide for speed, 50k for RSS
    python benchmarks/bench_container.py --size 8000 --rss-size 8000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, TILES_DIR, run_measured, slidepress_exe
from slidepress.store.container import Container
from tissue_slide import build_slide


def build(size: int, args: argparse.Namespace) -> Path:
    return build_slide(size, args.bench_dir, args.tiles_dir)[0]


def run_compress(slide: Path, out: Path, codec: str, workers: int) -> dict:
    """`slidepress compress` as a child process; its wall time and peak RSS from wait4."""
    cmd = [
        slidepress_exe(), "compress", str(slide), "-o", str(out), "--codec", codec,
        "--workers", str(workers), "--overwrite",
    ]  # fmt: skip
    rec = run_measured(cmd, None, out.with_suffix(".log"))
    if rec["rc"] != 0:
        raise SystemExit(f"compress failed (rc {rec['rc']}): {rec['output_tail']}")
    with Container(out) as c:
        stored = c.manifest["tiles"]["stored"]
    tail = rec["output_tail"].strip()
    return {
        "workers": workers,
        "codec": codec,
        "wall_s": round(rec["wall_s"], 2),
        "tiles": stored,
        "tiles_per_s": stored / rec["wall_s"],
        "peak_rss_mb": rec["peak_rss_mib"],
        "container_mb": out.stat().st_size / 1e6,
        "summary": tail.splitlines()[-1] if tail else "",
    }


def compress_in_process(slide: Path, out: Path, codec: str, workers: int) -> dict:
    """Throughput of compress_slide itself (no process start-up; whole-slide PSNR included)."""
    from slidepress.pipeline import CompressOptions, compress_slide

    opts = CompressOptions(codec=codec, workers=workers, overwrite=True)
    t0 = time.perf_counter()
    r = compress_slide(slide, out, opts)
    dt = time.perf_counter() - t0
    return {
        "workers": workers,
        "codec": codec,
        "seconds": round(dt, 2),
        "tiles": r.tiles_stored,
        "tiles_per_s": r.tiles_stored / dt,
        "bpp": r.bpp,
    }


def region_latency(spz: Path, n: int, size: int, seed: int = 0) -> dict:
    """Container.read_region vs decoding the same tiles from in-memory bytes (+ the same copy)."""
    with Container(spz) as c:
        lv = c.levels[0]
        t = c.tile
        rng = np.random.default_rng(seed)
        boxes = [
            (int(rng.integers(0, lv.width - size)), int(rng.integers(0, lv.height - size)))
            for _ in range(n)
        ]
        # baseline inputs: every needed tile's bytes, read beforehand
        needed = {
            (r, col)
            for x, y in boxes
            for r in range(y // t, (y + size - 1) // t + 1)
            for col in range(x // t, (x + size - 1) // t + 1)
        }
        blobs = {k: c.tile_bytes(0, *k) for k in needed}
        white = np.full((t, t, 3), 255, np.uint8)
        decode = c.codec.decode

        def direct(x: int, y: int) -> np.ndarray:
            out = np.empty((size, size, 3), np.uint8)
            for r in range(y // t, (y + size - 1) // t + 1):
                for col in range(x // t, (x + size - 1) // t + 1):
                    b = blobs[(r, col)]
                    tile = decode(b) if b is not None else white
                    ty0, tx0 = r * t, col * t
                    a0, a1 = max(y, ty0), min(y + size, ty0 + t)
                    b0, b1 = max(x, tx0), min(x + size, tx0 + t)
                    out[a0 - y : a1 - y, b0 - x : b1 - x] = tile[
                        a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0
                    ]
            return out

        for x, y in boxes[:3]:  # warm-up and equality check
            assert np.array_equal(direct(x, y), c.read_region(x, y, size, size))
        timings = {"container": [], "direct": []}
        for _ in range(3):  # interleave to share any machine noise
            t0 = time.perf_counter()
            for x, y in boxes:
                c.read_region(x, y, size, size)
            timings["container"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for x, y in boxes:
                direct(x, y)
            timings["direct"].append(time.perf_counter() - t0)
    cont, dire = min(timings["container"]) / n, min(timings["direct"]) / n
    return {
        "regions": n,
        "region_px": size,
        "container_ms": cont * 1e3,
        "direct_ms": dire * 1e3,
        "ratio": cont / dire,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="slide side for speed runs")
    ap.add_argument("--rss-size", type=int, default=50000, help="slide side for the RSS run")
    ap.add_argument("--codec", default="jpegxl")
    ap.add_argument("--rss-codec", default="jpeg", help="codec of the large RSS run (speed)")
    ap.add_argument("--regions", type=int, default=200)
    ap.add_argument("--region-px", type=int, default=1024)
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    slide = build(args.size, args)
    report: dict = {"slide": str(slide), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.bench_dir) as tmp:
        runs = [compress_in_process(slide, Path(tmp) / f"w{w}.spz", args.codec, w) for w in (1, 2)]
        report["compress"] = runs
        report["compress_speedup_2_vs_1"] = runs[1]["tiles_per_s"] / runs[0]["tiles_per_s"]
        report["region_read"] = region_latency(Path(tmp) / "w2.spz", args.regions, args.region_px)
        big = build(args.rss_size, args)
        report["rss_run"] = run_compress(big, Path(tmp) / "big.spz", args.rss_codec, 2)
        report["rss_run"]["slide_px"] = args.rss_size
    out = args.json or args.bench_dir / "bench_container.json"
    out.write_text(json.dumps(report, indent=2))
    c1, c2 = report["compress"]
    rr, big = report["region_read"], report["rss_run"]
    print(
        f"compress {args.codec} on {args.size}^2: 1 worker {c1['tiles_per_s']:.0f} tiles/s, "
        f"2 workers {c2['tiles_per_s']:.0f} tiles/s -> {report['compress_speedup_2_vs_1']:.2f}x"
    )
    print(
        f"region read {args.region_px}^2: container {rr['container_ms']:.1f} ms vs direct "
        f"imagecodecs {rr['direct_ms']:.1f} ms -> {rr['ratio']:.3f}x (target <= 1.2)"
    )
    print(
        f"peak RSS compressing {args.rss_size}^2 with {args.rss_codec}: "
        f"{big['peak_rss_mb']:.0f} MB (target < 1536), {big['tiles']} tiles in {big['wall_s']} s"
    )
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
