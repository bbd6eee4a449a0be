"""Export benchmark: `export` (coded tiles copied into TIFF / DICOM) vs today's `decompress`
(every tile decoded and re-encoded as JPEG q95), on the same JPEG container, in one run.

Uses the synthetic pyramidal mosaic of real H&E tiles that tissue_slide.py builds (cached in
.bench/), compressed once with the jpeg codec. Reported: seconds of each, the ratio
decompress / export, output sizes, and whether the copied tiles decode to the container's pixels.

    python benchmarks/bench_export.py                 # 12k slide
    python benchmarks/bench_export.py --size 8000     # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, TILES_DIR, log
from tissue_slide import build_slide


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12000, help="slide side in px (8k-16k)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each timing")
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    from slidepress.pipeline import CompressOptions, compress_slide, decompress_container
    from slidepress.pipeline.export import export_container
    from slidepress.store.container import Container

    slide = build_slide(args.size, args.bench_dir, args.tiles_dir)[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        spz = tmp / "s.spz"
        t0 = time.perf_counter()
        compress_slide(slide, spz, CompressOptions(codec="jpeg", quality=90))
        log(f"container: {spz.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
        w = args.workers
        outs = {"decompress": tmp / "d.tiff", "tiff": tmp / "e.tiff", "dicom": tmp / "dcm"}
        runs = {
            "decompress": lambda: decompress_container(
                spz, outs["decompress"], workers=w, overwrite=True
            ),
            "tiff": lambda: export_container(spz, outs["tiff"], workers=w, overwrite=True),
            "dicom": lambda: export_container(
                spz, outs["dicom"], format="dicom", workers=w, overwrite=True
            ),
        }
        seconds = {k: _best(fn, args.repeats) for k, fn in runs.items()}
        exact = _check(spz, outs["tiff"], Container)
        result = {
            "slide_px": args.size,
            "workers": w,
            "seconds": seconds,
            "ratio_decompress_over_export_tiff": seconds["decompress"] / seconds["tiff"],
            "ratio_decompress_over_export_dicom": seconds["decompress"] / seconds["dicom"],
            "bytes": {k: _size(p) for k, p in outs.items()} | {"container": _size(spz)},
            "export_tiff_level0_exact": exact,
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(spz: Path, tiff: Path, Container) -> bool:
    """A 2048 px region of level 0 through OpenSlide equals the container's pixels."""
    import openslide

    with Container(spz) as c:
        lv = c.levels[0]
        x, y = lv.width // 3, lv.height // 3
        want = c.read_region(x, y, 2048, 2048)
    got = np.asarray(openslide.OpenSlide(tiff).read_region((x, y), 0, (2048, 2048)))[..., :3]
    return bool(np.array_equal(got, want))


if __name__ == "__main__":
    main()
