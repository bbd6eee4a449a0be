"""Slide reader speed: ms per 1024^2 block, each reader as a ratio to OpenSlide in the same run.

Readers compared (all through `SlideReader.read_region`, RGB uint8 out, except the baseline):
  openslide-raw  openslide-python's `read_region` (a PIL RGBA image): OpenSlide itself, no RGB
                 conversion; the baseline of every ratio
  before         the reader as it was before issue 9: the PIL image -> numpy -> an alpha.min()
                 pass and a 3-of-4-channel copy (`_old_rgb` below, the former code verbatim)
  openslide      our OpenSlide reader now: OpenSlide's own uint32 buffer, composited in one pass
  tiffslide      tiffslide (tifffile + zarr)
  tifffile       our fast path: OpenSlide for geometry, tiles decoded by tifffile/imagecodecs
and `auto`, which reader `open_slide` picks for the file.

Slides: the generated generic pyramidal TIFF (benchmarks/tissue_slide.py's mosaic of real
tissue, JPEG q90, 256 px tiles; built and cached in .bench/ if missing), the shared Aperio SVS
and the shared pyramid TIFF. Positions: tile-aligned 1024 px blocks and random ones, the same
for every reader; readers are interleaved pass by pass so a load change hits them alike, and
the median pass is kept. The machine may be shared: compare the ratios, not the ms.

    python benchmarks/bench_readers.py                 # 16000 px mosaic, ~1 min
    python benchmarks/bench_readers.py --size 8000 --blocks 8 --passes 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH_DIR, SLIDES_DIR, log
from tissue_slide import build_slide

BLOCK = 1024
READERS = ("openslide-raw", "before", "openslide", "tiffslide", "tifffile")


def _old_rgb(rgba: np.ndarray) -> np.ndarray:
    """slide/base.py rgba_to_rgb_on_white before issue 9 (the 'before' column)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))
    return np.minimum(out, 255).astype(np.uint8)


def make_readers(path: Path) -> dict[str, Any]:
    """name -> read(x, y, level, size) for every reader that opens `path`."""
    import openslide

    from slidepress.slide import open_slide

    out: dict[str, Any] = {}
    raw = openslide.OpenSlide(str(path))
    out["openslide-raw"] = lambda x, y, lv, s: raw.read_region((x, y), lv, (s, s))
    out["before"] = lambda x, y, lv, s: _old_rgb(np.asarray(raw.read_region((x, y), lv, (s, s))))
    for name in ("openslide", "tiffslide", "tifffile"):
        try:
            r = open_slide(path, reader=name)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"  {name}: cannot open ({e})", file=sys.stderr)
            continue
        out[name] = lambda x, y, lv, s, r=r: r.read_region((x, y), lv, (s, s))
    return out


def positions(dims: tuple[int, int], n: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    w, h = dims
    aligned = [
        (x, y) for y in range(0, h - BLOCK + 1, BLOCK) for x in range(0, w - BLOCK + 1, BLOCK)
    ]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(aligned))[:n]
    rand = [
        (int(rng.integers(0, w - BLOCK + 1)), int(rng.integers(0, h - BLOCK + 1))) for _ in range(n)
    ]
    return {"aligned": [aligned[i] for i in sorted(pick)], "random": rand}


def time_pass(read: Any, pos: list[tuple[int, int]], threads: int) -> float:
    """ms per block for one pass over `pos`."""
    t0 = time.perf_counter()
    if threads == 1:
        for x, y in pos:
            read(x, y, 0, BLOCK)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda xy: read(xy[0], xy[1], 0, BLOCK), pos))
    return (time.perf_counter() - t0) / len(pos) * 1e3


def bench_slide(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from slidepress.slide import open_slide

    with open_slide(path) as s:
        auto, dims = s.info.reader, s.info.dimensions
    readers = make_readers(path)
    res: dict[str, Any] = {"slide": path.name, "dimensions": dims, "auto": auto, "ms": {}}
    for kind, pos in positions(dims, args.blocks, args.seed).items():
        for threads in sorted({1, args.threads}):
            key = f"{kind}-{threads}t"
            for read in readers.values():  # warm caches and decoders once
                read(*pos[0], 0, BLOCK)
            times: dict[str, list[float]] = {n: [] for n in readers}
            for _ in range(args.passes):
                for name, read in readers.items():
                    times[name].append(time_pass(read, pos, threads))
            res["ms"][key] = {n: statistics.median(t) for n, t in times.items()}
    return res


def print_table(results: list[dict[str, Any]]) -> None:
    cols = [c for c in READERS if any(c in r["ms"][k] for r in results for k in r["ms"])]
    print(f"\nms per {BLOCK}^2 block (median pass); in brackets: ratio to openslide-raw")
    head = f"{'slide':42} {'blocks':11} " + " ".join(f"{c:>16}" for c in cols)
    print(head + "  auto")
    print("-" * len(head) + "------")
    for r in results:
        for key, ms in r["ms"].items():
            base = ms["openslide-raw"]
            cells = []
            for c in cols:
                cells.append(f"{ms[c]:7.1f} ({ms[c] / base:4.2f}x)" if c in ms else f"{'-':>16}")
            print(f"{r['slide'][:42]:42} {key:11} " + " ".join(f"{c:>16}" for c in cells), end="")
            print(f"  {r['auto']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16000, help="generated mosaic side (px)")
    ap.add_argument("--blocks", type=int, default=12, help="blocks per position kind")
    ap.add_argument("--passes", type=int, default=5, help="passes per reader (median kept)")
    ap.add_argument("--threads", type=int, default=2, help="also time this many threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "bench_readers.json")
    args = ap.parse_args(argv)

    mosaic, _ = build_slide(args.size)
    slides = [mosaic]
    for name in ("CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid_jpeg90.tiff"):
        if (SLIDES_DIR / name).exists():
            slides.append(SLIDES_DIR / name)
        else:
            log(f"skipping {name}: shared data not found at {SLIDES_DIR}")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results = [bench_slide(p, args) for p in slides]
    print_table(results)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
