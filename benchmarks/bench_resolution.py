"""Reading at the encoder's resolution (issue 19): the level choice and resampling of
`slidepress.tiling`, the rule before issue 19 (`LEGACY_RULE`) against the current one, in one run.

The slide: a size x size JPEG-tiled (256 px, q90) pyramidal TIFF of real tissue at 0.25 um/px
with levels of downsample 1/4/16/64, i.e. 0.25/1.0/4.0/16.0 um/px, rendered by the mosaic of
tissue_slide.py (levels 0, 2, 4, 6 of it) and cached in .bench/. The encoder `nic-multitask`
wants 64 px at 0.97 um/px: 3 % finer than level 1, which the legacy rule (2.5 % snapping)
missed, reading level 0 and resampling 3.88x with Lanczos.

Measured (the encode loop is `encode_rows` of a plan made once per rule: no tissue detection,
hashing or writing; `--repeat` rounds of all five, every other round in reverse order; medians,
and encode / (read + forward) as the median of the rounds' ratios):
  read      the loop with mean-rgb at 0.97 um/px, 64 px (reading + cutting, a trivial encoder),
            legacy rule vs new rule (target: new >= 2x faster); and, snapping off, level 0
            resampled 3.88x by reduce 2 + Lanczos 1.94 (`read_resampler`: the resampler alone
            against the legacy one Lanczos pass, same pixels read)
  forward   nic-multitask `encode` on the new grid's kept patches, preloaded, batches of 64
  encode    the loop with nic-multitask, new rule (target: <= 1.1 x (read new + forward))
  cli       `slidepress encode SLIDE --encoder nic-multitask` as a child process (not --quick)
Quality, nic-multitask features and PSNR per kept cell, against EXACT_RULE (level 0, one Lanczos
pass) on the same cells:
  snapped     the new grid (level 1 as stored, 1.0 um/px) vs Lanczos from level 0 (target:
              mean cosine >= 0.995)
  resampler   0.97 um/px without snapping (level 0, reduce 2 + Lanczos 1.94) vs one Lanczos pass
  finer-level 1.5 um/px (level 1, Lanczos 1.5x) vs Lanczos 6x from level 0
  scale       the new grid's patches (1.0 um/px) vs exact 0.97 um/px patches with the same centres
              (a sample of cells): what snapping 3 % does to the embeddings

    python benchmarks/bench_resolution.py            # 16384 px slide, 5 rounds, ~3 min
    python benchmarks/bench_resolution.py --quick    # 8192 px, 1 round, no CLI run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    BENCH_DIR,
    TILES_DIR,
    CpuMeter,
    CpuProbe,
    git_commit,
    log,
    run_measured,
    slidepress_exe,
    wait_quiet,
)
from tissue_slide import Mosaic, box_reduce, load_sources, write_pyramid

MPP = 0.25  # level-0 resolution of the slide
LEVELS = (0, 2, 4, 6)  # mosaic levels written: downsamples 1, 4, 16, 64
SLIDE_VERSION = 1  # bump when the slide changes (invalidates the cache)
TARGET_MPP = 0.97  # nic-multitask's resolution
PATCH = 64
BATCH = 64
ENCODER = "nic-multitask"


# ----------------------------------------------------------------------------------------------
# The slide
# ----------------------------------------------------------------------------------------------


def build_slide(
    size: int, bench_dir: Path, tiles_dir: Path, quality: int = 90, rebuild: bool = False
) -> tuple[Path, dict[str, Any]]:
    """The cached 4x-pyramid TIFF at 0.25 um/px (built if missing) and its build record."""

    name = f"resolution_{size}_q{quality}_v{SLIDE_VERSION}"
    path, record_path = bench_dir / f"{name}.tiff", bench_dir / f"{name}.build.json"
    if path.exists() and record_path.exists() and not rebuild:
        log(f"slide: cached {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path, json.loads(record_path.read_text()) | {"cached": True}
    if size % (1 << LEVELS[-1]) or size < 4096:
        raise SystemExit(f"--size must be a multiple of {1 << LEVELS[-1]} and >= 4096")
    bench_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources = load_sources(tiles_dir)
    mosaic = Mosaic(size, sources, seed=0)
    # the mosaic renders the levels it has box-reduced sources for: add the missing ones
    while len(mosaic.sources) <= LEVELS[-1]:
        mosaic.sources.append([box_reduce(s, 1 << len(mosaic.sources)) for s in sources])
    log(f"slide: building {size}x{size} at {MPP} um/px, downsamples 1/4/16/64 -> {path}")
    write_pyramid(
        path, mosaic, list(LEVELS), quality=quality, mpp=MPP, what="bench_resolution slide",
        software="benchmarks/bench_resolution.py",
    )  # fmt: skip
    record = {
        "path": str(path),
        "size_px": size,
        "mpp": MPP,
        "downsamples": [1 << lv for lv in LEVELS],
        "jpeg_quality": quality,
        "tissue_fraction_design": float(mosaic.mask.mean()),
        "build_s": round(time.perf_counter() - t0, 1),
        "file_bytes": path.stat().st_size,
    }
    record_path.write_text(json.dumps(record, indent=2))
    log(f"slide: built in {record['build_s']} s, {record['file_bytes'] / 1e6:.0f} MB")
    return path, record | {"cached": False}


def check_slide(path: Path, size: int) -> dict[str, Any]:
    from slidepress.slide import open_slide

    with open_slide(path) as s:
        info = {
            "reader": type(s).__name__,
            "dimensions": list(s.info.dimensions),
            "level_downsamples": [round(d, 4) for d in s.info.level_downsamples],
            "mpp": s.require_mpp(),
        }
    ok = (
        info["dimensions"] == [size, size]
        and np.allclose(info["level_downsamples"], [1 << lv for lv in LEVELS], rtol=1e-3)
        and abs(info["mpp"] - MPP) < 1e-3
    )
    if not ok:
        raise SystemExit(f"{path.name}: not the slide intended: {info}")
    return info


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def options(workers: int):
    from slidepress.pipeline import EncodeOptions

    return EncodeOptions(
        patch_size=PATCH, stride=PATCH, mpp=TARGET_MPP, tissue_threshold=0.5, fmt="npz",
        overwrite=True, workers=workers, batch_size=BATCH, previews=False,
    )  # fmt: skip


def make_plan(slide: Path, out: Path, rule: Any, opts: Any, sha: str) -> Any:
    """The encode plan (grid, kept cells) of `slide` under `rule` (via tiling.use_rule: the
    pipeline calls plan_grid with its default)."""
    from slidepress.encoders import get_encoder
    from slidepress.pipeline.encode import plan_encode
    from slidepress.tiling import use_rule

    with use_rule(rule):
        return plan_encode(slide, out, get_encoder("mean-rgb"), opts, sha256=sha)


def timed_loop(plan: Any, encoder: Any, opts: Any) -> tuple[float, np.ndarray, float]:
    """(seconds, features (rows, cols, C), other processes' cores) of the encode loop."""
    from slidepress.pipeline.encode import encode_rows

    with CpuMeter() as m:
        t0 = time.perf_counter()
        feats = encode_rows(plan, encoder, opts)
        dt = time.perf_counter() - t0
    return dt, feats[0], m.foreign_cores


def kept_patches(slide: Path, grid: Any, keep: np.ndarray) -> np.ndarray:
    """(n, P, P, 3) pixels of the kept cells in row-major order, read as encode reads them."""
    from slidepress.slide import open_slide

    out = np.empty((int(keep.sum()), *(grid.spec.patch_size,) * 2, 3), np.uint8)
    index = np.full(keep.shape, -1, np.int64)
    index[keep] = np.arange(len(out))
    with open_slide(slide) as reader:
        for r0, r1, c0, c1 in grid.blocks(keep, 8):
            patches = grid.cut_patches(grid.read_block(reader, r0, r1, c0, c1), r0, r1, c0, c1)
            ii, jj = np.nonzero(keep[r0:r1, c0:c1])
            out[index[ii + r0, jj + c0]] = patches[ii, jj]
    return out


def forward(encoder: Any, patches: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(features, seconds, other cores) of encoder.encode over batches of BATCH (as encode)."""
    encoder.encode(patches[:BATCH])  # warm-up
    feats = []
    with CpuMeter() as m:
        t0 = time.perf_counter()
        for i in range(0, len(patches), BATCH):
            feats.append(encoder.encode(patches[i : i + BATCH]))
        dt = time.perf_counter() - t0
    return np.concatenate(feats), dt, m.foreign_cores


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def compare(
    name: str, slide: Path, grid: Any, ref_grid: Any, keep: np.ndarray, encoder: Any,
    feats: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """nic-multitask cosine and PSNR per kept cell: `grid` vs `ref_grid` (same cells)."""
    assert grid.shape == ref_grid.shape and (grid.origins() == ref_grid.origins()).all()
    a = kept_patches(slide, grid, keep)
    b = kept_patches(slide, ref_grid, keep)
    fa = feats if feats is not None else forward(encoder, a)[0]
    fb = forward(encoder, b)[0]
    cos = cosine(fa, fb)
    res = {
        "grid": describe_grid(grid),
        "reference": describe_grid(ref_grid),
        "cells": len(cos),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "cosine_p01": float(np.quantile(cos, 0.01)),
        "psnr_db": psnr(a, b),
    }
    log(f"  {name}: cosine mean {res['cosine_mean']:.4f} min {res['cosine_min']:.4f}, "
        f"PSNR {res['psnr_db']:.1f} dB over {len(cos)} cells")  # fmt: skip
    return res


def scale_effect(
    slide: Path, grid: Any, keep: np.ndarray, feats: np.ndarray, encoder: Any, n: int, seed: int
) -> dict[str, Any]:
    """The snapped grid's patches vs exact TARGET_MPP patches with the same centres (Lanczos
    from level 0, one patch at a time), on a sample of n kept cells."""
    from PIL import Image

    from slidepress.slide import open_slide

    rows, cols = np.nonzero(keep)
    pick = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    pick.sort()
    f = TARGET_MPP / grid.slide_mpp
    side = round(PATCH * f)
    half_new, half_exact = PATCH * grid.scale / 2, side / 2
    exact = np.empty((len(pick), PATCH, PATCH, 3), np.uint8)
    o = grid.origins()
    with open_slide(slide) as reader:
        for k, i in enumerate(pick):
            x, y = o[rows[i], cols[i]] + half_new - half_exact
            px = reader.read_region((round(x), round(y)), 0, (side, side))
            img = Image.fromarray(px).resize((PATCH, PATCH), Image.Resampling.LANCZOS)
            exact[k] = np.asarray(img)
    cos = cosine(feats[pick], forward(encoder, exact)[0])
    res = {
        "cells": len(cos),
        "new_mpp": grid.effective_mpp,
        "exact_mpp": TARGET_MPP,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }
    log(f"  scale ({grid.effective_mpp:.3f} vs {TARGET_MPP} um/px, same centres): cosine mean "
        f"{res['cosine_mean']:.4f} min {res['cosine_min']:.4f} over {len(cos)} cells")  # fmt: skip
    return res


def describe_grid(g: Any) -> dict[str, Any]:
    return {
        "level": g.level, "level_downsample": g.level_downsample, "resampled": g.resample,
        "reducing_gap": g.reducing_gap if g.resample else None,
        "mpp_effective": round(g.effective_mpp, 4), "read_scale": round(g.read_scale, 4),
        "shape": list(g.shape),
    }  # fmt: skip


def run_cli(slide: Path, out: Path) -> dict[str, Any]:
    """`slidepress encode` with nic-multitask as a child; the CLI's own loop time too."""
    cmd = [slidepress_exe(), "encode", str(slide), "-o", str(out), "--encoder", ENCODER,
           "--tissue-threshold", "0.5", "--overwrite", "--format", "npz"]  # fmt: skip
    rec = run_measured(cmd, dict(os.environ), out / "encode.log")
    if rec["rc"] != 0:  # reported, not fatal: the in-process numbers stand without it
        log(f"`{' '.join(cmd)}` failed (rc {rec['rc']}):\n{rec['output_tail'][-600:]}")
        return {"command": " ".join(cmd), "error": rec["output_tail"][-600:]}
    m = re.search(r"(\d+)\s+tissue\s+cells[,;]\s+([\d.]+)\s+s", rec["output_tail"])
    return {
        "command": " ".join(cmd),
        "wall_s": rec["wall_s"],
        "in_cli_s": float(m.group(2)) if m else None,
        "cells": int(m.group(1)) if m else None,
        "peak_rss_mib": rec["peak_rss_mib"],
        "other_processes_cores": rec["other_processes_cores"],
    }


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="slide side (multiple of 64)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the timed loops")
    ap.add_argument("--workers", type=int, default=2, help="encode reader threads")
    ap.add_argument("--scale-cells", type=int, default=512, help="cells of the scale check")
    ap.add_argument("--quick", action="store_true", help="8192 px, 1 round, no CLI run")
    ap.add_argument("--skip-cli", action="store_true", help="no `slidepress encode` child run")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="wait for an idle machine")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached slide")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.repeat, args.skip_cli, args.scale_cells = 8192, 1, True, 256
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    t_start = time.perf_counter()

    import torch

    from slidepress.encoders import get_encoder
    from slidepress.pipeline.provenance import content_sha256
    from slidepress.slide import open_slide
    from slidepress.tiling import EXACT_RULE, LEGACY_RULE, RULE, GridSpec, LevelRule, plan_grid

    slide, build = build_slide(args.size, args.bench_dir, args.tiles_dir, rebuild=args.rebuild)
    info = check_slide(slide, args.size)
    out = args.bench_dir / "resolution"
    out.mkdir(parents=True, exist_ok=True)
    sha = content_sha256(slide)
    opts = options(args.workers)
    plans = {
        "legacy": make_plan(slide, out, LEGACY_RULE, opts, sha),
        "new": make_plan(slide, out, RULE, opts, sha),
        "resampler": make_plan(slide, out, LevelRule(snap_tolerance=0.0), opts, sha),
    }
    for k, p in plans.items():
        log(f"plan {k}: {describe_grid(p.grid)}, {p.cells_kept} cells kept")
    mean_rgb, nic = get_encoder("mean-rgb"), get_encoder(ENCODER)
    probe = CpuProbe(slide)

    # -- timings: rounds of the reads, forward and encode; every other round reversed -------
    new = plans["new"]
    patches = kept_patches(slide, new.grid, new.keep)
    names = ("read_legacy", "read_new", "read_resampler", "forward", "encode")
    times: dict[str, list[float]] = {k: [] for k in names}
    other: dict[str, list[float]] = {k: [] for k in names}
    encode_feats = np.zeros((0, 0))

    def step(name: str) -> None:
        nonlocal encode_feats
        if name.startswith("read_"):
            dt, _, oc = timed_loop(plans[name[5:]], mean_rgb, opts)
        elif name == "forward":
            _, dt, oc = forward(nic, patches)
        else:
            dt, feats, oc = timed_loop(new, nic, opts)
            encode_feats = feats[new.keep]
        times[name].append(dt)
        other[name].append(oc)

    timed_loop(new, mean_rgb, opts)  # warm-up: page cache, decoders
    for r in range(args.repeat):
        wait_quiet(args.quiet_wait)
        probe()
        for name in names if r % 2 == 0 else names[::-1]:
            step(name)
        log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [  # forward and encode run back to back: the least disturbed by load changes
        e / (rd + f)
        for e, rd, f in zip(times["encode"], times["read_new"], times["forward"], strict=True)
    ]
    ratios = {
        "read_legacy_over_new": med["read_legacy"] / med["read_new"],
        "read_legacy_over_resampler": med["read_legacy"] / med["read_resampler"],
        "encode_over_read_plus_forward": statistics.median(per_round),
        "encode_over_read_plus_forward_of_medians": med["encode"]
        / (med["read_new"] + med["forward"]),
        "encode_over_max_read_forward": med["encode"] / max(med["read_new"], med["forward"]),
    }
    cli = None if args.skip_cli else run_cli(slide, out / "cli")

    # -- quality: nic-multitask features and PSNR against one Lanczos pass from level 0 -----
    log("quality (nic-multitask, per kept cell, vs Lanczos from level 0 on the same cells):")
    quality: dict[str, Any] = {}
    with open_slide(slide) as reader:
        mpp = reader.require_mpp()

        def exact(target: float) -> Any:
            return plan_grid(reader, mpp, GridSpec(PATCH, PATCH, target), EXACT_RULE)

        g_new = new.grid
        quality["snapped"] = compare(
            "snapped", slide, g_new, exact(g_new.effective_mpp), new.keep, nic, encode_feats
        )
        leg = plans["legacy"]  # 0.97 um/px at level 0: the legacy grid is the exact one
        g_res = plans["resampler"].grid  # level 0, reduce 2 + Lanczos 1.94
        quality["resampler"] = compare("resampler", slide, g_res, leg.grid, leg.keep, nic)
        g_fin = plan_grid(reader, mpp, GridSpec(PATCH, PATCH, 1.5))
        keep_fin = leg.tissue.fraction_in_boxes(g_fin.boxes()).reshape(g_fin.shape) >= 0.5
        quality["finer_level"] = compare("finer-level", slide, g_fin, exact(1.5), keep_fin, nic)
    quality["scale"] = scale_effect(
        slide, g_new, new.keep, encode_feats, nic, args.scale_cells, args.seed
    )

    report = {
        "benchmark": "bench_resolution",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "slidepress_commit": git_commit(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "slide": {**build, **info},
        "grids": {
            k: describe_grid(p.grid) | {"cells_kept": p.cells_kept} for k, p in plans.items()
        },
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "other_processes_cores": other,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {
            "read_legacy_over_new": ">= 2",
            "encode_over_read_plus_forward": "<= 1.1",
            "snapped_cosine_mean": ">= 0.995",
        },
        "cli": cli,
        "quality": quality,
        "cpu_probe": probe.summary(),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    path = out / "bench_resolution.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"\nJSON: {path}")
    return 0


def print_report(rep: dict[str, Any]) -> None:
    s, g, m, r = rep["slide"], rep["grids"], rep["median_s"], rep["ratios"]
    print(
        f"\nslide {Path(s['path']).name}: {s['size_px']} px, {s['mpp']} um/px, downsamples "
        f"{s['downsamples']}, reader {s['reader']}; {rep['machine']['cpu_count']} CPUs, torch "
        f"threads {rep['machine']['torch_threads']}; median of {len(rep['seconds']['forward'])}"
    )
    for k in ("legacy", "new", "resampler"):
        x = g[k]
        how = (f"resampled {x['read_scale']}x (reducing_gap {x['reducing_gap']})"
               if x["resampled"] else "as stored")  # fmt: skip
        print(
            f"  grid {k:9}: level {x['level']}, {how}, {x['mpp_effective']} um/px, "
            f"{x['shape'][0]}x{x['shape'][1]} cells, {x['cells_kept']} kept"
        )
    q = rep["quality"]
    ok = [r["read_legacy_over_new"] >= 2, r["encode_over_read_plus_forward"] <= 1.1,
          q["snapped"]["cosine_mean"] >= 0.995]  # fmt: skip
    mark = ["PASS" if x else "FAIL" for x in ok]
    print(
        f"read (mean-rgb loop)  legacy {m['read_legacy']:.2f} s, new {m['read_new']:.2f} s: "
        f"{r['read_legacy_over_new']:.2f}x faster (>= 2: {mark[0]})"
    )
    print(
        f"read, snapping off (level 0, 3.88x): one Lanczos pass {m['read_legacy']:.2f} s, "
        f"reduce + Lanczos {m['read_resampler']:.2f} s: "
        f"{r['read_legacy_over_resampler']:.2f}x faster"
    )
    print(f"forward ({ENCODER}, {g['new']['cells_kept']} patches) {m['forward']:.2f} s")
    print(
        f"encode loop ({ENCODER}, new) {m['encode']:.2f} s: "
        f"{r['encode_over_read_plus_forward']:.2f} x (read + forward) (median per round; "
        f"<= 1.1: {mark[1]}; of the medians {r['encode_over_read_plus_forward_of_medians']:.2f}"
        f"), {r['encode_over_max_read_forward']:.2f} x max(read, forward)"
    )
    if rep["cli"] and "error" in rep["cli"]:
        print("cli: `slidepress encode` failed (see the JSON)")
    elif rep["cli"]:
        c = rep["cli"]
        print(
            f"cli: `slidepress encode --encoder {ENCODER}` {c['wall_s']:.1f} s wall, "
            f"{c['in_cli_s']} s reported, {c['cells']} cells"
        )
    for k in ("snapped", "resampler", "finer_level"):
        x = q[k]
        print(
            f"quality {k:11}: cosine mean {x['cosine_mean']:.4f} min {x['cosine_min']:.4f}, "
            f"PSNR {x['psnr_db']:.1f} dB ({x['cells']} cells)"
            + (f" (>= 0.995: {mark[2]})" if k == "snapped" else "")
        )
    x = q["scale"]
    print(
        f"quality scale      : {x['new_mpp']:.3f} vs {x['exact_mpp']} um/px, same centres: "
        f"cosine mean {x['cosine_mean']:.4f} min {x['cosine_min']:.4f} ({x['cells']} cells)"
    )
    oc = {k: max(v) for k, v in rep["other_processes_cores"].items()}
    print(
        f"other processes (max cores): {oc}; CPU probe {rep['cpu_probe']['samples']} tiles/s; "
        f"total {rep['total_s']:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
