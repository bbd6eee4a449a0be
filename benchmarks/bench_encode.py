"""Encode throughput benchmark: `slidepress encode` on a large synthetic slide of real tissue.

What it measures, per encoder, in one run:
  a. end-to-end: `slidepress encode SLIDE ...` as a subprocess (wall time, tissue cells from the
     output grid, peak RSS of that process via wait4);
  b. pure forward: `encoder.encode(batch)` on preloaded real uint8 patches (batches of 64);
  c. naive: one thread, OpenSlide `read_region` of one patch at a time, encode in batches of 64.

The slide is a mosaic of the lossless H&E tiles in ../shared/data/tiles (random crops,
rotations and flips; a smooth random tissue mask with glass background around it), written once
as a 256 px JPEG-tiled, 2x pyramidal TIFF at 0.5 um/px and cached in .bench/. It is generated
band by band, never held whole in memory; every pyramid level is rendered directly from
box-downsampled sources, exactly equal (up to uint8 rounding) to box-downsampling level 0.

    python benchmarks/bench_encode.py --size 8000        # quick
    python benchmarks/bench_encode.py                    # 50000 x 50000 (the reference run)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".bench"
TILES_DIR = REPO.parent / "shared" / "data" / "tiles"

TILE = 256  # TIFF tile side
CELL = 320  # mosaic cell side at level 0 (one source crop per cell)
QUANT = 64  # crop offsets, cells and mask pixels are multiples of this: levels stay exact
MAX_LEVEL = 6  # 2**MAX_LEVEL == QUANT
BACKGROUND = (236, 234, 240)  # glass
TISSUE_FRACTION = 0.55
MOSAIC_VERSION = 1  # bump when the rendering changes (invalidates the cache)
BATCH = 64


# `slidepress encode` is started through this small interpreter: a child's ru_maxrss starts at
# its parent's RSS high-water mark (fork/vfork + exec carry it over), so wait4 in this big
# process would report at least our own peak; from a fresh ~10 MB interpreter it is exact.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
rec = dict(rc=os.waitstatus_to_exitcode(status), wall_s=time.perf_counter() - t0,
           maxrss_kib=ru.ru_maxrss, utime=ru.ru_utime, stime=ru.ru_stime)
with open(sys.argv[1], "w") as f:
    json.dump(rec, f)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _busy_s() -> float:
    """CPU seconds all processes on this machine have used (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Cores' worth of CPU used by *other* processes while the block ran (noise indicator)."""

    def __enter__(self) -> CpuMeter:
        self.t0, self.b0, self.o0 = time.perf_counter(), _busy_s(), _own_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.perf_counter() - self.t0)
        foreign = (_busy_s() - self.b0) - (_own_s() - self.o0)
        self.foreign_cores = round(max(0.0, foreign / wall), 2)


class CpuProbe:
    """Single-thread JPEG decode rate of 200 fixed level-0 tiles (best of 3): a yardstick of
    this machine's speed right now. A VM can slow down with no busy process in sight (host
    contention), so each measurement records the probe taken just before it."""

    def __init__(self, slide: Path, n: int = 200):
        import tifffile

        self.tf = tifffile.TiffFile(str(slide))
        page = self.tf.pages[0]
        ntx = -(-page.imagewidth // TILE)
        nty = -(-page.imagelength // TILE)
        self.page = page
        self.items = []
        fh = self.tf.filehandle
        for k in range(n):  # a diagonal band through the middle: tissue and glass
            ty = (nty // 3 + k // 20) % nty
            tx = (ntx // 3 + k % 20 * 3) % ntx
            i = ty * ntx + tx
            fh.seek(page.dataoffsets[i])
            self.items.append((i, fh.read(page.databytecounts[i])))
        self.samples: list[float] = []

    def __call__(self, passes: int = 3) -> float:
        """Best of `passes` decodes of the tiles (robust to a short interruption)."""
        best = 0.0
        for _ in range(passes):
            t0 = time.perf_counter()
            for i, data in self.items:
                self.page.decode(data, i, jpegtables=self.page.jpegtables)
            best = max(best, len(self.items) / (time.perf_counter() - t0))
        self.samples.append(best)
        return round(best)


def wait_quiet(max_wait: float, limit: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use < `limit` cores; return their load."""
    deadline = time.perf_counter() + max_wait
    while True:
        with CpuMeter() as m:
            time.sleep(1.0)
        if m.foreign_cores < limit or time.perf_counter() >= deadline:
            if m.foreign_cores >= limit:
                log(f"  note: machine busy ({m.foreign_cores} cores used by other processes)")
            return m.foreign_cores


# ----------------------------------------------------------------------------------------------
# Synthetic slide
# ----------------------------------------------------------------------------------------------


def load_sources(tiles_dir: Path) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for p in sorted(tiles_dir.glob("*.png")):
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= CELL:
            out.append(a)
    if not out:
        raise SystemExit(f"no PNG tiles of at least {CELL} px in {tiles_dir}")
    return out


def level_count(size: int) -> int:
    """Pyramid levels: halve until the top is ~512-1024 px, at most MAX_LEVEL halvings."""
    n = 1
    while n <= MAX_LEVEL and (size >> n) >= 512:
        n += 1
    return n


def box_reduce(a: np.ndarray, f: int) -> np.ndarray:
    """Box-average by an integer factor (partial edge boxes dropped)."""
    if f == 1:
        return a
    h, w = a.shape[0] // f, a.shape[1] // f
    v = a[: h * f, : w * f].reshape(h, f, w, f, 3).astype(np.float32).mean(axis=(1, 3))
    return np.round(v).astype(np.uint8)


class Mosaic:
    """A size x size slide: cells of CELL px, each a dihedral transform of a source crop."""

    def __init__(self, size: int, sources: list[np.ndarray], seed: int = 0):
        from scipy import ndimage

        self.size = size
        self.n_levels = n = level_count(size)
        self.sources = [[box_reduce(s, 1 << lv) for s in sources] for lv in range(n)]
        rng = np.random.default_rng(seed)
        nc = math.ceil(size / CELL)
        self.cell_src = rng.integers(0, len(sources), (nc, nc))
        self.cell_off = np.zeros((nc, nc, 2), np.int64)
        for s, src in enumerate(sources):
            sel = self.cell_src == s
            max_y, max_x = (src.shape[0] - CELL) // QUANT, (src.shape[1] - CELL) // QUANT
            self.cell_off[sel, 0] = rng.integers(0, max_y + 1, sel.sum()) * QUANT
            self.cell_off[sel, 1] = rng.integers(0, max_x + 1, sel.sum()) * QUANT
        self.cell_k = rng.integers(0, 8, (nc, nc))
        # Tissue: smooth random field thresholded to TISSUE_FRACTION, glass margin at the edges.
        m = math.ceil(size / QUANT)
        field = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma=max(2.0, 0.05 * m))
        border = max(1, round(0.03 * m))
        inner = field[border:-border, border:-border]
        thr = np.quantile(inner, 1 - TISSUE_FRACTION / (1 - 2 * 0.03) ** 2)
        self.mask = np.zeros((m, m), bool)
        self.mask[border:-border, border:-border] = inner > thr
        cpq = CELL // QUANT
        pad = nc * cpq - m
        mp = np.pad(self.mask, ((0, pad), (0, pad)))
        self.cell_any = mp.reshape(nc, cpq, nc, cpq).any(axis=(1, 3))

    def level_shape(self, level: int) -> tuple[int, int]:
        s = max(1, self.size >> level)
        return s, s

    def render(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) of `level` (outside the slide: background)."""
        h, w = y1 - y0, x1 - x0
        cs, q = CELL >> level, QUANT >> level
        canvas = np.empty((h, w, 3), np.uint8)
        nc = self.cell_src.shape[0]
        for i in range(y0 // cs, min(nc, -(-y1 // cs))):
            for j in range(x0 // cs, min(nc, -(-x1 // cs))):
                if not self.cell_any[i, j]:
                    continue
                oy, ox = (self.cell_off[i, j] >> level).tolist()
                crop = self.sources[level][self.cell_src[i, j]][oy : oy + cs, ox : ox + cs]
                k = int(self.cell_k[i, j])
                crop = np.rot90(crop, k % 4)
                if k >= 4:
                    crop = crop[:, ::-1]
                cy0, cx0 = i * cs, j * cs
                a0, a1 = max(y0, cy0), min(y1, cy0 + cs)
                b0, b1 = max(x0, cx0), min(x1, cx0 + cs)
                canvas[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = crop[
                    a0 - cy0 : a1 - cy0, b0 - cx0 : b1 - cx0
                ]
        my0, my1 = y0 // q, -(-y1 // q)
        mx0, mx1 = x0 // q, -(-x1 // q)
        mreg = np.zeros((my1 - my0, mx1 - mx0), bool)
        sub = self.mask[my0:my1, mx0:mx1]
        mreg[: sub.shape[0], : sub.shape[1]] = sub
        mup = mreg.repeat(q, 0).repeat(q, 1)[y0 - my0 * q :][:h, x0 - mx0 * q :][:, :w]
        lh, lw = self.level_shape(level)
        mup[max(0, lh - y0) :, :] = False
        mup[:, max(0, lw - x0) :] = False
        return np.where(mup[..., None], canvas, np.array(BACKGROUND, np.uint8))

    def tiles(self, level: int) -> Iterator[np.ndarray]:
        """Level tiles in TIFF (row-major) order, full TILE x TILE (edges padded)."""
        lh, lw = self.level_shape(level)
        nty, ntx = -(-lh // TILE), -(-lw // TILE)
        for ty in range(nty):
            band = self.render(level, ty * TILE, (ty + 1) * TILE, 0, ntx * TILE)
            for tx in range(ntx):
                yield np.ascontiguousarray(band[:, tx * TILE : (tx + 1) * TILE])


def build_slide(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The cached mosaic TIFF for these settings (built if missing) and its build record."""
    import tifffile

    name = f"mosaic_{args.size}_q{args.quality}_s{args.seed}_v{MOSAIC_VERSION}"
    path = args.bench_dir / f"{name}.tiff"
    record_path = args.bench_dir / f"{name}.build.json"
    if path.exists() and record_path.exists() and not args.rebuild:
        record = json.loads(record_path.read_text())
        record["cached"] = True
        log(f"slide: cached {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path, record
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mosaic = Mosaic(args.size, load_sources(args.tiles_dir), seed=args.seed)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    log(f"slide: building {args.size}x{args.size}, {mosaic.n_levels} levels -> {path}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for level in range(mosaic.n_levels):
                tl = time.perf_counter()
                lh, lw = mosaic.level_shape(level)
                res = 20000.0 / (1 << level)  # px per cm: 0.5 um/px at level 0
                tw.write(
                    mosaic.tiles(level),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": args.quality},
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    description=(
                        f"slidepress benchmark mosaic of real H&E tiles, level {level}, "
                        f"downsample {1 << level}"
                    ),
                    metadata=None,
                    software="slidepress benchmarks/bench_encode.py",
                    maxworkers=os.cpu_count(),
                )
                log(f"  level {level}: {lw}x{lh} in {time.perf_counter() - tl:.1f} s")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = {
        "path": str(path),
        "size_px": args.size,
        "levels": mosaic.n_levels,
        "jpeg_quality": args.quality,
        "tissue_fraction_design": float(mosaic.mask.mean()),
        "build_s": round(time.perf_counter() - t0, 2),
        "file_bytes": path.stat().st_size,
    }
    record_path.write_text(json.dumps(record, indent=2))
    record["cached"] = False
    log(f"slide: built in {record['build_s']:.1f} s, {record['file_bytes'] / 1e6:.0f} MB")
    return path, record


def check_slide(path: Path, size: int, levels: int) -> dict[str, Any]:
    """OpenSlide must open it with the right size, levels and mpp; `slidepress info` too."""
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        mpp_x = float(s.properties.get("openslide.mpp-x", "nan"))
        mpp_y = float(s.properties.get("openslide.mpp-y", "nan"))
        info = {
            "openslide_vendor": s.properties.get("openslide.vendor"),
            "dimensions": list(s.dimensions),
            "level_count": s.level_count,
            "level_downsamples": [round(d, 3) for d in s.level_downsamples],
            "mpp": [mpp_x, mpp_y],
        }
    problems = []
    if tuple(info["dimensions"]) != (size, size):
        problems.append(f"dimensions {info['dimensions']} != {size}x{size}")
    if info["level_count"] != levels or levels < 2:
        problems.append(f"{info['level_count']} levels (wrote {levels})")
    if not (abs(mpp_x - 0.5) < 1e-3 and abs(mpp_y - 0.5) < 1e-3):
        problems.append(f"mpp {mpp_x}, {mpp_y} != 0.5")
    r = subprocess.run(
        [slidepress_exe(), "info", str(path), "--json"], capture_output=True, text=True
    )
    if r.returncode != 0:
        problems.append(f"`slidepress info` failed (rc {r.returncode}): {r.stderr.strip()}")
    else:
        d = json.loads(r.stdout)
        info["slidepress_reader"] = d["reader"]
        if tuple(d["dimensions"]) != (size, size) or not d.get("mpp_plausible"):
            problems.append(f"`slidepress info` disagrees: {d}")
    if problems:
        raise SystemExit(f"{path.name}: bad benchmark slide: " + "; ".join(problems))
    return info


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------


def make_small_cnn(bench_dir: Path) -> Path:
    """4 strided 3x3 convs (16-32-64-64) + global average pool, C = 64, 128 px, TorchScript."""
    import torch
    from torch import nn

    path = bench_dir / "small_cnn.pt"
    sidecar = path.with_name(path.name + ".json")
    if path.exists() and sidecar.exists():
        return path

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            chans = [3, 16, 32, 64, 64]
            for a, b in zip(chans, chans[1:], strict=False):
                layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    scripted = torch.jit.script(SmallCNN().eval())
    bench_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    scripted.save(str(tmp))
    os.replace(tmp, path)
    meta = {
        "name": "bench-small-cnn",
        "version": "1",
        "patch_size": 128,
        "mpp": 0.5,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    sidecar.write_text(json.dumps(meta, indent=2))
    return path


def encoder_spec(name: str, bench_dir: Path) -> str:
    if name == "small-cnn":
        return f"torchscript:{make_small_cnn(bench_dir)}"
    return name  # mean-rgb, torchscript:PATH, timm:MODEL@WEIGHTS ...


def slidepress_exe() -> str:
    cand = Path(sys.executable).parent / "slidepress"
    if cand.exists():
        return str(cand)
    found = shutil.which("slidepress")
    if not found:
        raise SystemExit("the `slidepress` console script is not installed in this environment")
    return found


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def run_end_to_end(
    slide: Path, spec: str, out_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """`slidepress encode` as a child process; its own peak RSS comes from wait4."""
    from slidepress.store import read_grid

    cmd = [
        slidepress_exe(), "encode", str(slide), "-o", str(out_dir), "--encoder", spec,
        "--tissue-threshold", "0.5", "--overwrite",
        "--workers", str(args.workers), "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    if args.reader:
        cmd += ["--reader", args.reader]
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path, rec_path = out_dir / "encode.log", out_dir / "encode.rusage.json"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the child
    runs = []
    for i in range(max(1, args.repeat)):
        if i:
            wait_quiet(args.quiet_wait)
        with open(log_path, "w") as logf, CpuMeter() as meter:
            r = subprocess.run(
                [sys.executable, "-c", LAUNCHER, str(rec_path), *cmd],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
            )
        text = log_path.read_text()
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {"rc": r.returncode}
        if r.returncode != 0 or rec["rc"] != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed (rc {rec['rc']}):\n{text[-3000:]}")
        m = re.search(r"(\d+)\s+tissue\s+cells,\s+([\d.]+)\s+s", text)
        rec["in_cli_s"] = float(m.group(2)) if m else None
        rec["other"] = meter.foreign_cores
        runs.append(rec)
        log(f"  run {i + 1}: {rec['wall_s']:.1f} s, other processes {meter.foreign_cores} cores")
    rec = min(runs, key=lambda x: x["wall_s"])  # best of --repeat: least disturbed
    wall, in_cli = rec["wall_s"], rec["in_cli_s"]
    grid = read_grid(out_dir / f"{slide.stem}.zarr")
    cells = int(grid.mask.sum())
    g = grid.metadata["grid"]
    return {
        "command": " ".join(cmd),
        "wall_s": round(wall, 3),
        "encode_slide_s": in_cli,  # the CLI's own timing: without interpreter/import/encoder load
        "cells": cells,
        "grid_shape": list(grid.shape),
        "tiles_per_s": cells / wall,
        "tiles_per_s_in_cli": cells / in_cli if in_cli else None,
        "peak_rss_mb": rec["maxrss_kib"] / 1024,  # Linux: KiB
        "cpu_user_s": round(rec["utime"], 2),
        "cpu_sys_s": round(rec["stime"], 2),
        "other_processes_cores": rec["other"],
        "runs": [
            {
                "wall_s": round(x["wall_s"], 2),
                "peak_rss_mb": round(x["maxrss_kib"] / 1024),
                "other_processes_cores": x["other"],
            }
            for x in runs
        ],  # fmt: skip
        "level": g["level"],
        "resampled": g["resampled"],
        "patch_size": g["patch_size"],
        "read_amplification": read_amplification(slide, grid.mask, g["patch_size"]),
        "_grid": grid,
    }


def read_amplification(slide: Path, mask: np.ndarray, patch: int) -> dict[str, float]:
    """What slidepress's own block plan decodes per kept cell: cells, and level-0 JPEG tile
    pixels (blocks that do not start on a tile boundary decode partial tiles too)."""
    from slidepress.slide import open_slide
    from slidepress.tiling import GridSpec, plan_grid

    with open_slide(slide) as r:
        grid = plan_grid(r, 0.5, GridSpec(patch_size=patch, stride=patch, mpp=0.5))
    if grid.shape != mask.shape or grid.level != 0:
        return {}
    cells = tiles = blocks = 0
    for r0, r1, c0, c1 in grid.blocks(mask, 8):
        blocks += 1
        cells += (r1 - r0) * (c1 - c0)
        ty = -(-(r1 * patch) // TILE) - (r0 * patch) // TILE
        tx = -(-(c1 * patch) // TILE) - (c0 * patch) // TILE
        tiles += ty * tx
    kept = max(1, int(mask.sum()))
    return {
        "blocks": blocks,
        "cells_per_kept_cell": round(float(cells / kept), 3),
        "decoded_px_per_kept_px": round(float(tiles * TILE * TILE / (kept * patch * patch)), 3),
    }


def tissue_cells(grid: Any) -> np.ndarray:
    """Level-0 (x, y) of kept cells, row-major."""
    return grid.coords[grid.mask]


def load_patches(slide: Path, xy: np.ndarray, patch: int) -> np.ndarray:
    import openslide

    out = np.empty((len(xy), patch, patch, 3), np.uint8)
    with openslide.OpenSlide(str(slide)) as s:
        for i, (x, y) in enumerate(xy.tolist()):
            out[i] = np.asarray(s.read_region((x, y), 0, (patch, patch)).convert("RGB"))
    return out


def pure_forward(encoder: Any, pool: np.ndarray, seconds: float) -> dict[str, Any]:
    """encoder.encode on preloaded batches of BATCH patches, for at least `seconds`."""
    batches = [pool[i : i + BATCH] for i in range(0, len(pool) - BATCH + 1, BATCH)]
    for b in batches[:2]:
        encoder.encode(b)  # warm-up
    n = 0
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        while True:
            for b in batches:
                encoder.encode(b)
                n += len(b)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
    return {
        "tiles_per_s": n / dt,
        "patches": n,
        "seconds": round(dt, 3),
        "other_processes_cores": meter.foreign_cores,
    }


def naive_loop(slide: Path, encoder: Any, xy: np.ndarray, patch: int) -> dict[str, Any]:
    """What a first script does: open, read one patch, convert, encode every 64. One thread."""
    import openslide

    with CpuMeter() as meter:
        t0 = time.perf_counter()
        s = openslide.OpenSlide(str(slide))
        batch: list[np.ndarray] = []
        for x, y in xy.tolist():
            batch.append(np.asarray(s.read_region((x, y), 0, (patch, patch)).convert("RGB")))
            if len(batch) == BATCH:
                encoder.encode(np.stack(batch))
                batch.clear()
        if batch:
            encoder.encode(np.stack(batch))
        s.close()
        dt = time.perf_counter() - t0
    return {
        "tiles_per_s": len(xy) / dt,
        "patches": len(xy),
        "seconds": round(dt, 3),
        "other_processes_cores": meter.foreign_cores,
    }


def profile_in_process(slide: Path, spec: str, out_dir: Path, args: argparse.Namespace) -> str:
    """cProfile of encode_slide in this process (main thread only: readers show as waits)."""
    from slidepress.encoders import get_encoder
    from slidepress.pipeline import EncodeOptions, encode_slide

    enc = get_encoder(spec)
    opts = EncodeOptions(
        tissue_threshold=0.5,
        overwrite=True,
        workers=args.workers,
        batch_size=args.batch_size,
        reader=args.reader,
    )
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    encode_slide(slide, out_dir, enc, opts)
    prof.disable()
    dt = time.perf_counter() - t0
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    buf.write(f"encode_slide in-process: {dt:.1f} s\n")
    st.sort_stats("tottime").print_stats(18)
    st.sort_stats("cumulative").print_stats(25)
    return buf.getvalue()


def git_commit(src: Path | None = None) -> str | None:
    """HEAD of the checkout measured, '+dirty' when its src/ has local changes."""
    src = src or REPO / "src"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def set_torch_threads(n: int | None) -> None:
    if n is None:
        return
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def measure_encoder(
    name: str, slide: Path, args: argparse.Namespace, threads: int | None, probe: CpuProbe
) -> dict[str, Any]:
    from slidepress.encoders import get_encoder

    spec = encoder_spec(name, args.bench_dir)
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    wait_quiet(args.quiet_wait)
    probes = {"end_to_end": probe()}
    log(f"[{name}] end-to-end: slidepress encode ...")
    e2e = run_end_to_end(slide, spec, args.bench_dir / f"out_{key}", args)
    grid = e2e.pop("_grid")
    log(
        f"[{name}]   {e2e['cells']} cells in {e2e['wall_s']:.1f} s "
        f"({e2e['tiles_per_s']:.0f} tiles/s; encode_slide {e2e['encode_slide_s']} s), "
        f"peak RSS {e2e['peak_rss_mb']:.0f} MB, other load {e2e['other_processes_cores']}"
    )
    if e2e["level"] != 0 or e2e["resampled"]:
        log(f"[{name}] warning: grid at level {e2e['level']}, resampled={e2e['resampled']}")
    patch = e2e["patch_size"]
    xy = tissue_cells(grid)
    rng = np.random.default_rng(args.seed)
    pool_xy = xy[rng.choice(len(xy), size=min(args.pool, len(xy)), replace=False)]
    pool = load_patches(slide, pool_xy, patch)
    encoder = get_encoder(spec)
    is_torch = hasattr(encoder, "module")

    set_torch_threads(threads)
    wait_quiet(args.quiet_wait)
    probes["pure_forward"] = probe()
    log(f"[{name}] pure forward on {len(pool)} preloaded patches ...")
    fwd = pure_forward(encoder, pool, args.forward_seconds)
    fwd1 = None
    if is_torch and threads != 1:
        set_torch_threads(1)
        wait_quiet(args.quiet_wait)
        fwd1 = pure_forward(encoder, pool, args.forward_seconds)
    naive_xy = xy[: args.naive_cells]
    log(f"[{name}] naive loop on the first {len(naive_xy)} tissue cells ...")
    set_torch_threads(1)
    wait_quiet(args.quiet_wait)
    probes["naive_1thread"] = probe()
    naive1 = naive_loop(slide, encoder, naive_xy, patch)
    naive_t = None
    if is_torch and threads != 1:
        set_torch_threads(threads)
        wait_quiet(args.quiet_wait)
        naive_t = naive_loop(slide, encoder, naive_xy, patch)
    set_torch_threads(threads)
    res: dict[str, Any] = {
        "encoder_spec": spec,
        "encoder": encoder.describe(),
        "torch_threads": threads if is_torch else None,
        "cpu_probe_tiles_per_s": probes,
        "end_to_end": e2e,
        "pure_forward": fwd,
        "pure_forward_1thread": fwd1,
        "naive_1thread": naive1,
        "naive_same_threads": naive_t,
        "ratio_e2e_over_forward": e2e["tiles_per_s"] / fwd["tiles_per_s"],
        "ratio_e2e_over_forward_1thread": (
            e2e["tiles_per_s"] / fwd1["tiles_per_s"] if fwd1 else None
        ),
        "ratio_e2e_over_naive": e2e["tiles_per_s"] / naive1["tiles_per_s"],
    }
    if e2e["tiles_per_s_in_cli"]:
        res["ratio_in_cli_over_forward"] = e2e["tiles_per_s_in_cli"] / fwd["tiles_per_s"]
        res["ratio_in_cli_over_naive"] = e2e["tiles_per_s_in_cli"] / naive1["tiles_per_s"]
    if args.profile:
        log(f"[{name}] cProfile of encode_slide in-process ...")
        res["profile"] = profile_in_process(slide, spec, args.bench_dir / f"prof_{key}", args)
        print(res["profile"])
    log(f"[{name}] done")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=50000, help="slide side in px (default 50000)")
    ap.add_argument(
        "--encoders",
        default="small-cnn,mean-rgb",
        help="comma list: small-cnn, mean-rgb, or any slidepress encoder spec",
    )
    ap.add_argument("--workers", type=int, default=2, help="slidepress --workers (default 2)")
    ap.add_argument("--batch-size", type=int, default=BATCH, help="slidepress --batch-size")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for fwd/naive-nt here, and OMP_NUM_THREADS in the child "
        "(default: torch's own, = cores; the pipeline may set its own count)",
    )
    ap.add_argument(
        "--reader", default=None, help="slidepress --reader (default: its own choice, OpenSlide)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="end-to-end runs per encoder; the fastest is kept"
    )
    ap.add_argument("--naive-cells", type=int, default=2000, help="cells in the naive loop")
    ap.add_argument("--forward-seconds", type=float, default=5.0, help="pure-forward duration")
    ap.add_argument("--pool", type=int, default=1024, help="preloaded patches for the forward")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each measurement wait up to this many s for other processes to go idle",
    )
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the slide")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached slide")
    ap.add_argument("--profile", action="store_true", help="also cProfile encode_slide")
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    ap.add_argument("--json", type=Path, default=None, help="default: BENCH_DIR/bench_encode.json")
    args = ap.parse_args(argv)
    if args.size < 1024:
        ap.error("--size must be >= 1024")
    json_path = args.json or args.bench_dir / "bench_encode.json"
    t_start = time.perf_counter()

    slide, build = build_slide(args)
    slide_info = check_slide(slide, args.size, level_count(args.size))
    log(
        f"slide ok: {slide_info['dimensions']}, {slide_info['level_count']} levels, "
        f"mpp {slide_info['mpp'][0]:.3f}, reader {slide_info.get('slidepress_reader')}"
    )
    threads = args.threads or torch_threads()
    probe = CpuProbe(slide)
    results = {}
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        results[name] = measure_encoder(name, slide, args, threads, probe)
    spread = (max(probe.samples) / min(probe.samples) - 1) if probe.samples else 0.0

    report = {
        "benchmark": "bench_encode",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "slidepress_commit": git_commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": threads,
        },
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
        },
        "slide": {**build, **slide_info},
        "targets": {"e2e_over_forward": 0.8, "e2e_over_naive": 1.8, "peak_rss_mb": 1536},
        "results": results,
        "cpu_probe": {
            "what": "single-thread JPEG decode of 200 fixed 256 px tiles, best of 3, tiles/s",
            "samples": [round(x) for x in probe.samples],
            "spread": round(spread, 3),
        },
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"\nJSON: {json_path}")
    return 0


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(rep: dict[str, Any]) -> None:
    s = rep["slide"]
    print(
        f"\nslide {Path(s['path']).name}: {s['size_px']}x{s['size_px']} px, {s['levels']} levels, "
        f"{s['file_bytes'] / 1e6:.0f} MB, built in {s['build_s']:.1f} s"
        f"{' (cached)' if s.get('cached') else ''}"
    )
    print(
        f"{rep['machine']['cpu_count']} CPUs, torch threads {rep['machine']['torch_threads']}, "
        f"slidepress --workers {rep['config']['workers']} --batch-size "
        f"{rep['config']['batch_size']}; all rates in tiles (cells) per second"
    )
    cols = [
        ("encoder", 10), ("cells", 7), ("e2e", 6), ("in-cli", 6), ("fwd", 6), ("fwd-1t", 6),
        ("naive-1t", 8), ("naive-nt", 8), ("e2e/fwd", 7), ("/fwd-1t", 7), ("e2e/naive", 9),
        ("RSS MB", 6),
        ("wall s", 6), ("other", 5),
    ]  # fmt: skip
    hdr = " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(cols))
    print(hdr)
    print("-" * len(hdr))
    for name, r in rep["results"].items():
        e = r["end_to_end"]
        f1, nt = r["pure_forward_1thread"], r["naive_same_threads"]
        vals = [
            name, str(e["cells"]), _fmt(e["tiles_per_s"]), _fmt(e["tiles_per_s_in_cli"]),
            _fmt(r["pure_forward"]["tiles_per_s"]), _fmt(f1 and f1["tiles_per_s"]),
            _fmt(r["naive_1thread"]["tiles_per_s"]), _fmt(nt and nt["tiles_per_s"]),
            _fmt(r["ratio_e2e_over_forward"], ".2f"),
            _fmt(r.get("ratio_e2e_over_forward_1thread"), ".2f"),
            _fmt(r["ratio_e2e_over_naive"], ".2f"),
            _fmt(e["peak_rss_mb"]), _fmt(e["wall_s"], ".1f"),
            _fmt(e["other_processes_cores"], ".2f"),
        ]  # fmt: skip
        print(
            " ".join(
                f"{v:<{w}}" if i == 0 else f"{v:>{w}}"
                for i, (v, (_, w)) in enumerate(zip(vals, cols, strict=True))
            )
        )
    t = rep["targets"]
    print(
        f"targets: e2e/fwd >= {t['e2e_over_forward']} (small CNN), e2e/naive >= "
        f"{t['e2e_over_naive']}, peak RSS < {t['peak_rss_mb']} MB\n"
        "e2e = cells / wall time of the `slidepress encode` process; in-cli = cells / the time the "
        "CLI reports for the slide (no interpreter start, imports, encoder load); fwd = "
        "encoder.encode on preloaded batches (torch default or --threads), fwd-1t = with 1 torch "
        "thread (/fwd-1t = e2e/fwd-1t); "
        "naive-1t = one thread, read_region per patch, encode per 64; naive-nt = same with the "
        "torch threads of fwd; other = cores used by other processes during the e2e run"
    )
    for name, r in rep["results"].items():
        e = r["end_to_end"]
        ra = e["read_amplification"]
        print(
            f"{name}: grid {'x'.join(map(str, e['grid_shape']))}, {ra.get('blocks')} blocks read, "
            f"{ra.get('cells_per_kept_cell')} cells and {ra.get('decoded_px_per_kept_px')} px "
            f"decoded per kept cell/px, child CPU "
            f"{e['cpu_user_s']} s user + {e['cpu_sys_s']} s sys in {e['wall_s']} s wall"
        )
    cp = rep["cpu_probe"]
    print(
        f"CPU probe ({cp['what']}): {cp['samples']}, spread {cp['spread']:.0%}"
        + (" -- machine speed drifted during the run: compare ratios with care" if
           cp["spread"] > 0.15 else "")
    )  # fmt: skip
    print(f"total benchmark time {rep['total_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
