"""What each codec does to the NIC grid of whole slides: `compare` after `compress`.

Every ready codec at two qualities (a high and a low setting of its own knob), the learned
and pathae codecs included, on the shared slides: CMU-1-Small-Region (Aperio, 0.499 um/px),
its JPEG q90 pyramid, and CropBreastSlide (a second tissue; its mpp tag is bogus, 0.5 um/px
given as the override, as bench_codec_table.py does). Per run: bits per pixel of the
container, PSNR over tissue (whole slide, from compress) and, from `compare` on the
nic-multitask grid: mean / 5th percentile / worst cell cosine and the PSNR over tissue at the
grid's resolution. Target (issue 22): mean cell cosine >= 0.995 at jpegxl q90 and learned q5.

    python benchmarks/bench_compare.py                      # table -> .bench/compare/report.md
    python benchmarks/bench_compare.py --codecs jpeg,learned --slides CMU-1-Small-Region.svs

The learned codecs run on the CPU unless torch sees a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from slidepress.codecs import CODECS
from slidepress.pipeline import CompressOptions, compress_slide
from slidepress.pipeline.compare import compare_grids
from slidepress.pipeline.items import SlideItem

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides"
# slide -> level-0 um/px override (None: the file's)
SLIDES = {
    "CMU-1-Small-Region.svs": None,
    "CMU-1-Small-Region_pyramid_jpeg90.tiff": None,
    "CropBreastSlide.tiff": 0.5,
}
# a high and a low setting per codec (htj2k: lower is better)
QUALITIES = {
    "jpeg": (90, 50), "jpegxl": (90, 60), "webp": (90, 60), "avif": (75, 40),
    "jpeg2000": (50, 30), "htj2k": (0.01, 0.05), "png": (6,), "learned": (5, 2),
    "pathae": (4, 2),
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", default=",".join(SLIDES))
    ap.add_argument("--codecs", default=",".join(QUALITIES))
    ap.add_argument("--encoder", default="nic-multitask")
    ap.add_argument("--out", type=Path, default=Path(".bench/compare"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for slide in args.slides.split(","):
        path, mpp = SHARED / slide, SLIDES.get(slide)
        for codec in args.codecs.split(","):
            if codec not in CODECS or not CODECS.get(codec).ready():
                print(f"skip {codec}: not ready")
                continue
            for q in QUALITIES[codec]:
                with tempfile.TemporaryDirectory() as tmp:
                    spz = Path(tmp) / "x.spz"
                    t0 = time.perf_counter()
                    item = SlideItem(path, mpp)
                    c = compress_slide(item, spz, CompressOptions(codec=codec, quality=q))
                    r = compare_grids(path, spz, None, encoder=args.encoder, original_mpp=mpp)
                row = {"slide": slide, "codec": codec, "quality": q, "bpp": c.bpp,
                       "psnr_slide": c.psnr, "cos_mean": r.mean, "cos_p5": r.p5,
                       "cos_min": r.min, "psnr_grid": r.psnr_tissue, "cells": r.cells,
                       "target": r.mean >= 0.995,
                       "seconds": time.perf_counter() - t0}  # fmt: skip
                rows.append(row)
                print(json.dumps(row))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| slide | codec | q | bpp | PSNR slide | PSNR grid | cells | cos mean | cos p5 | "
        "cos worst |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['slide']} | {r['codec']} | {r['quality']:g} | {r['bpp']:.3f} | "
            f"{r['psnr_slide']:.2f} | {r['psnr_grid']:.2f} | {r['cells']} | {r['cos_mean']:.5f} | "
            f"{r['cos_p5']:.5f} | {r['cos_min']:.5f} |"
        )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
