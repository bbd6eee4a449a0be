"""Whole-slide fidelity of compress -> decompress: is any tissue lost, and what does compress say?

Issue 9 part 1: `compress` scored only sampled *stored* tiles (PSNR 36.5 dB on CMU-1 with
JPEG-XL q90) while the restored slide, over pixels darker than glass, was at 30.5 dB, because
tiles holding tissue fragments were judged background and not stored. For every slide and
codec/quality this script runs the CLI as a user would, in child processes:

    slidepress compress SLIDE -o OUT.spz --codec C --quality Q --overwrite [EXTRA...]
    slidepress decompress OUT.spz -o OUT.tif --lossless --overwrite

then reads the restored level 0 (tiffslide) and the original level 0 (OpenSlide) block by
block (memory stays at a few blocks; the mask of lost tissue is kept only for unstored tiles)
and reports:
  - PSNR over "dark" pixels (mean RGB < --threshold, default 220, in the original: not glass),
    over all pixels, and over dark pixels split by stored / unstored tile;
  - tiles (of the container's tile size, 256 px by default) holding >= 1 and >= --min-pixels
    (50) dark pixels, and how many of those were not stored (from the container's zip entry
    names `L0/{row:05d}_{col:05d}.ext`, not from its manifest);
  - lost tissue fragments: connected components (8-connected) of the dark mask after a 3 x 3
    binary opening (single noisy pixels removed; computed with a 2 px halo so block edges do not
    matter), restricted to unstored tiles (a fragment straddling a stored tile counts only its
    lost part) and merged across tile borders; the largest in px and um^2 (container mpp);
  - the largest absolute pixel difference inside unstored tiles;
  - what `compress` printed (its summary line and any PSNR / MS-SSIM figures).

Default slides: the shared CMU-1-Small-Region.svs and its pyramid TIFF, and the 8000 px mosaic
of real tissue from tissue_slide.py (`mosaic:SIZE` builds/reuses one of another size). Default
codecs: jpegxl:90 and jpeg:90.

    python benchmarks/bench_fidelity.py
    python benchmarks/bench_fidelity.py --pythonpath /work/base/src   # the code before a change
    python benchmarks/bench_fidelity.py --slides ../shared/data/slides/CMU-1-Small-Region.svs \\
        --codecs jpegxl:90 -- --background keep                      # extra compress args

Results: a table on stdout and .bench/bench_fidelity.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    BENCH_DIR,
    SLIDES_DIR,
    TILES_DIR,
    code_identity,
    container_tiles,
    log,
    run_measured,
    slidepress_cmd,
    slidepress_env,
    split_passthrough,
)
from tissue_slide import build_slide

DEFAULT_SLIDES = [
    str(SLIDES_DIR / "CMU-1-Small-Region.svs"),
    str(SLIDES_DIR / "CMU-1-Small-Region_pyramid_jpeg90.tiff"),
    "mosaic:8000",
]
HALO = 2  # a 3x3 opening (erosion then dilation) looks 2 px beyond a block


def psnr(sse: int, n: int) -> float | None:
    """PSNR in dB from a sum of squared errors over n samples (None when n = 0)."""
    if n == 0:
        return None
    if sse == 0:
        return math.inf
    return 10 * math.log10(255.0**2 * n / sse)


def stored_l0(spz: Path) -> tuple[set[tuple[int, int]], dict[str, Any]]:
    """(row, col) of the level-0 tiles present in the container zip, and its manifest."""
    pat = re.compile(r"^L0/(\d+)_(\d+)\.[A-Za-z0-9]+$")
    with zipfile.ZipFile(spz) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json"))
    found = (pat.match(n) for n in names)
    return {(int(m.group(1)), int(m.group(2))) for m in found if m}, manifest


def lost_fragments(
    masks: dict[tuple[int, int], np.ndarray], tile: int, mpp: float | None, top: int = 5
) -> dict[str, Any]:
    """Connected components (8-connected) of the per-tile lost-tissue masks, merged across tile
    borders with a union-find over per-tile labels."""
    from scipy import ndimage

    struct = np.ones((3, 3), bool)
    labels: dict[tuple[int, int], np.ndarray] = {}
    areas: list[int] = [0]
    boxes: list[list[int]] = [[0, 0, 0, 0]]  # x0, y0, x1, y1 (level-0 px, exclusive end)
    for (r, c), m in masks.items():
        lab, n = ndimage.label(m, structure=struct)
        if n == 0:
            continue
        base = len(areas) - 1
        areas.extend(np.bincount(lab.ravel(), minlength=n + 1)[1:].tolist())
        for sl in ndimage.find_objects(lab):
            boxes.append(
                [c * tile + sl[1].start, r * tile + sl[0].start,
                 c * tile + sl[1].stop, r * tile + sl[0].stop]
            )  # fmt: skip
        labels[(r, c)] = np.where(lab > 0, lab + base, 0)
    parent = list(range(len(areas)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a: np.ndarray, b: np.ndarray) -> None:
        sel = (a > 0) & (b > 0)
        for x, y in set(zip(a[sel].tolist(), b[sel].tolist(), strict=True)):
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)

    def join_edges(a: np.ndarray, b: np.ndarray) -> None:
        """Two touching edges of equal length: pixel i meets i-1, i, i+1 (8-connectivity)."""
        n = len(a)
        join(a, b)
        join(a[: n - 1], b[1:])
        join(a[1:], b[: n - 1])

    for (r, c), lab in labels.items():
        if (right := labels.get((r, c + 1))) is not None:
            join_edges(lab[:, -1], right[:, 0])
        if (down := labels.get((r + 1, c))) is not None:
            join_edges(lab[-1, :], down[0, :])
        if (dr := labels.get((r + 1, c + 1))) is not None:
            join(lab[-1:, -1], dr[:1, 0])
        if (dl := labels.get((r + 1, c - 1))) is not None:
            join(lab[-1:, 0], dl[:1, -1])

    frags: dict[int, dict[str, Any]] = {}
    for i in range(1, len(areas)):
        root = find(i)
        f = frags.setdefault(root, {"area_px": 0, "bbox_xyxy": list(boxes[i])})
        f["area_px"] += areas[i]
        b = f["bbox_xyxy"]
        b[:] = [min(b[0], boxes[i][0]), min(b[1], boxes[i][1]),
                max(b[2], boxes[i][2]), max(b[3], boxes[i][3])]  # fmt: skip
    ranked = sorted(frags.values(), key=lambda f: -f["area_px"])
    for f in ranked:
        x0, y0, x1, y1 = f["bbox_xyxy"]
        f["tiles_rc"] = [y0 // tile, x0 // tile, (y1 - 1) // tile, (x1 - 1) // tile]
        if mpp:
            f["area_um2"] = round(f["area_px"] * mpp * mpp, 1)
            f["extent_um"] = round(max(x1 - x0, y1 - y0) * mpp, 1)
    um2 = (mpp or 0) ** 2
    return {
        "count": len(ranked),
        "count_ge_100um2": sum(1 for f in ranked if f["area_px"] * um2 >= 100) if mpp else None,
        "lost_px": int(sum(f["area_px"] for f in ranked)),
        "largest": ranked[0] if ranked else None,
        "top": ranked[:top],
    }


def compare(
    original: Path, restored: Path, spz: Path, threshold: int, min_pixels: int
) -> dict[str, Any]:
    """Block-wise comparison of the restored level 0 with the original level 0."""
    import openslide
    import tiffslide
    from scipy import ndimage

    stored, manifest = stored_l0(spz)
    tile = int(manifest["tile_size"])
    src = manifest.get("source", {})
    if float(src.get("level0_px_per_px", 1.0)) != 1.0 or src.get("source_level", 0) != 0:
        return {"error": "container level 0 is not the source's level 0 (resampled): skipped"}
    mpp = manifest.get("mpp")
    block = 4 * tile
    sse = {"all": 0, "dark": 0, "dark_stored": 0, "dark_unstored": 0}
    cnt = {"all": 0, "dark": 0, "dark_stored": 0, "dark_unstored": 0}
    dark_tiles: dict[tuple[int, int], int] = {}
    lost_masks: dict[tuple[int, int], np.ndarray] = {}
    max_diff_unstored = 0
    struct = np.ones((3, 3), bool)
    with openslide.OpenSlide(str(original)) as o, tiffslide.TiffSlide(str(restored)) as t:
        width, height = o.dimensions
        rw, rh = t.dimensions
        if mpp is None:
            mpp = float(o.properties.get("openslide.mpp-x", "nan")) or None
        w, h = min(width, rw), min(height, rh)
        for y0 in range(0, h, block):
            for x0 in range(0, w, block):
                x1, y1 = min(w, x0 + block), min(h, y0 + block)
                hx0, hy0 = max(0, x0 - HALO), max(0, y0 - HALO)
                hx1, hy1 = min(w, x1 + HALO), min(h, y1 + HALO)
                rgba = o.read_region((hx0, hy0), 0, (hx1 - hx0, hy1 - hy0))
                orig_h = np.asarray(rgba)[..., :3]
                dark_h = orig_h.sum(axis=2, dtype=np.uint16) < 3 * threshold  # mean < threshold
                opened = ndimage.binary_opening(dark_h, structure=struct)
                inner = (slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0))
                orig, dark, opened = orig_h[inner], dark_h[inner], opened[inner]
                rest = np.asarray(t.read_region((x0, y0), 0, (x1 - x0, y1 - y0), as_array=True))
                rest = rest[..., :3]
                diff = orig.astype(np.int32) - rest.astype(np.int32)
                sq = (diff * diff).sum(axis=2)
                sse["all"] += int(sq.sum(dtype=np.int64))
                cnt["all"] += sq.size * 3
                for ty in range(y0 // tile, -(-y1 // tile)):
                    for tx in range(x0 // tile, -(-x1 // tile)):
                        sl = (
                            slice(ty * tile - y0, min(y1, (ty + 1) * tile) - y0),
                            slice(tx * tile - x0, min(x1, (tx + 1) * tile) - x0),
                        )
                        d = dark[sl]
                        nd = int(d.sum())
                        key = "dark_stored" if (ty, tx) in stored else "dark_unstored"
                        if (ty, tx) not in stored:
                            max_diff_unstored = max(max_diff_unstored, int(np.abs(diff[sl]).max()))
                        if not nd:
                            continue
                        dark_tiles[(ty, tx)] = dark_tiles.get((ty, tx), 0) + nd
                        e = int(sq[sl][d].sum(dtype=np.int64))
                        for k in ("dark", key):
                            sse[k] += e
                            cnt[k] += nd * 3
                        if key == "dark_unstored" and opened[sl].any():
                            lost_masks[(ty, tx)] = opened[sl].copy()
    unstored = {k: v for k, v in dark_tiles.items() if k not in stored}
    frags = lost_fragments(lost_masks, tile, mpp)
    return {
        "size_original": [width, height],
        "size_restored": [rw, rh],
        "compared": [w, h],
        "mpp": mpp,
        "tile": tile,
        "threshold_mean_rgb": threshold,
        "dark_fraction": round(cnt["dark"] / max(1, cnt["all"]), 4),
        "psnr_dark": psnr(sse["dark"], cnt["dark"]),
        "psnr_all": psnr(sse["all"], cnt["all"]),
        "psnr_dark_stored_tiles": psnr(sse["dark_stored"], cnt["dark_stored"]),
        "psnr_dark_unstored_tiles": psnr(sse["dark_unstored"], cnt["dark_unstored"]),
        "l0_tiles_stored": len(stored),
        "tiles_with_dark": len(dark_tiles),
        "tiles_with_dark_unstored": len(unstored),
        f"tiles_with_{min_pixels}_dark": sum(v >= min_pixels for v in dark_tiles.values()),
        f"tiles_with_{min_pixels}_dark_unstored": sum(v >= min_pixels for v in unstored.values()),
        "dark_px_unstored": int(sum(unstored.values())),
        "unstored_dark_tiles_top": [
            {"row": r, "col": c, "dark_px": n}
            for (r, c), n in sorted(unstored.items(), key=lambda kv: -kv[1])[:10]
        ],
        "max_abs_diff_unstored": max_diff_unstored,
        "lost_fragments": frags,
    }


def compress_said(text: str) -> dict[str, Any]:
    """What `compress` printed: its summary line (the one with "->"), every line but progress
    bars, and every PSNR / MS-SSIM figure in them."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "━" not in ln]
    summary = next((ln for ln in reversed(lines) if "->" in ln), "")
    return {
        "summary": summary,
        "lines": lines[-20:],  # everything it printed but progress bars
        "psnr_db": [float(x) for x in re.findall(r"PSNR[^\d-]*([\d.]+)\s*dB", text)],
        "ms_ssim": [float(x) for x in re.findall(r"MS-SSIM[^\d]*([\d.]+)", text)],
    }


def resolve_slides(specs: list[str], args: argparse.Namespace) -> list[Path]:
    out = []
    for s in specs:
        if s.startswith("mosaic:"):
            size = int(s.split(":", 1)[1])
            out.append(build_slide(size, args.bench_dir, args.tiles_dir)[0])
        else:
            p = Path(s)
            if not p.exists():
                raise SystemExit(f"{p}: no such slide (the shared data lives in {SLIDES_DIR})")
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ours, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` are passed to `slidepress compress`.",
    )
    ap.add_argument(
        "--slides", nargs="+", default=DEFAULT_SLIDES, help="slide paths or mosaic:SIZE"
    )
    ap.add_argument("--codecs", default="jpegxl:90,jpeg:90", help="comma list of codec:quality")
    ap.add_argument("--threshold", type=int, default=220, help="dark = mean RGB below this")
    ap.add_argument("--min-pixels", type=int, default=50, help="second tile-count threshold")
    ap.add_argument(
        "--pythonpath", default=None, help="prepend to the children's PYTHONPATH (/work/base/src)"
    )
    ap.add_argument("--python", default=None, help="interpreter to run `-m slidepress` with")
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    ap.add_argument("--json", type=Path, default=None, help="default BENCH_DIR/bench_fidelity.json")
    ap.add_argument("--keep", action="store_true", help="keep containers and restored TIFFs")
    args = ap.parse_args(ours)
    codecs = []
    for item in args.codecs.split(","):
        name, _, q = item.strip().partition(":")
        codecs.append((name, q or None))
    env = slidepress_env(args.pythonpath)
    ident = code_identity(args.python, env)
    log(f"slidepress under test: {ident['module']} ({ident['commit']})")
    sp = slidepress_cmd(args.python)
    slides = resolve_slides(args.slides, args)
    work = args.bench_dir / "fidelity"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t_start = time.perf_counter()
    for slide in slides:
        for name, q in codecs:
            tag = f"{slide.stem}_{name}" + (f"_q{q}" if q else "")
            spz, tif = work / f"{tag}.spz", work / f"{tag}.tif"
            cmd = [*sp, "compress", str(slide), "-o", str(spz), "--codec", name, "--overwrite"]
            cmd += (["--quality", q] if q else []) + extra
            log(f"[{tag}] compress ...")
            comp = run_measured(cmd, env, work / f"{tag}.compress.log")
            rec: dict[str, Any] = {
                "slide": str(slide),
                "codec": name,
                "quality": q,
                "compress_command": " ".join(cmd),
                "compress": {k: comp[k] for k in ("rc", "wall_s", "peak_rss_mib", "cpu_s")},
            }
            text = (work / f"{tag}.compress.log").read_text(errors="replace")
            rec["compress_said"] = compress_said(text)
            if comp["rc"] != 0:
                rec["error"] = f"compress failed (rc {comp['rc']}): {text.strip()[-500:]}"
                log(f"[{tag}] {rec['error']}")
                results.append(rec)
                continue
            rec["container_bytes"] = spz.stat().st_size
            rec["container_tiles"] = container_tiles(spz)
            dcmd = [*sp, "decompress", str(spz), "-o", str(tif), "--lossless", "--overwrite"]
            log(f"[{tag}] decompress --lossless ...")
            dec = run_measured(dcmd, env, work / f"{tag}.decompress.log")
            rec["decompress"] = {k: dec[k] for k in ("rc", "wall_s", "peak_rss_mib", "cpu_s")}
            if dec["rc"] != 0:
                rec["error"] = f"decompress failed (rc {dec['rc']}): {dec['output_tail'][-500:]}"
                log(f"[{tag}] {rec['error']}")
                results.append(rec)
                continue
            log(f"[{tag}] comparing level 0 ...")
            t0 = time.perf_counter()
            rec["fidelity"] = compare(slide, tif, spz, args.threshold, args.min_pixels)
            rec["compare_s"] = round(time.perf_counter() - t0, 1)
            results.append(rec)
            if not args.keep:
                spz.unlink(missing_ok=True)
                tif.unlink(missing_ok=True)
    report = {
        "benchmark": "bench_fidelity",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "argv": sys.argv if argv is None else argv,
        "slidepress": ident,
        "extra_compress_args": extra,
        "threshold_mean_rgb": args.threshold,
        "min_pixels": args.min_pixels,
        "results": results,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    out = args.json or args.bench_dir / "bench_fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"JSON: {out}")
    return 0


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(rep: dict[str, Any]) -> None:
    mp = rep["min_pixels"]
    print(
        f"\nslidepress {rep['slidepress']['commit']} ({rep['slidepress']['src']}); dark = mean "
        f"RGB < {rep['threshold_mean_rgb']} in the original; extra compress args: "
        f"{' '.join(rep['extra_compress_args']) or '-'}"
    )
    cols = [
        ("slide", 38), ("codec", 9), ("dark%", 6), ("PSNR dk", 8), ("all", 6), ("dk st", 6),
        ("dk un", 6), ("dk tiles", 8), ("unst>=1", 8), (f"unst>={mp}", 8), ("lost frag um2", 13),
        ("said PSNR", 9), ("MB", 6),
    ]  # fmt: skip
    hdr = " ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(cols))
    print(hdr)
    print("-" * len(hdr))
    for r in rep["results"]:
        codec = r["codec"] + (f":{r['quality']}" if r["quality"] else "")
        said = r["compress_said"]["psnr_db"]
        fid = r.get("fidelity")
        if fid is None or "error" in fid:
            err = (fid or {}).get("error") or r.get("error", "")
            print(f"{Path(r['slide']).name[:38]:<38} {codec:<9} {err[:120]}")
            continue
        lf = fid["lost_fragments"]["largest"]
        frag = "-" if lf is None else f"{lf.get('area_um2', lf['area_px']):.0f}"
        vals = [
            Path(r["slide"]).name[:38], codec, _f(100 * fid["dark_fraction"], ".1f"),
            _f(fid["psnr_dark"]), _f(fid["psnr_all"], ".1f"),
            _f(fid["psnr_dark_stored_tiles"], ".1f"), _f(fid["psnr_dark_unstored_tiles"], ".1f"),
            str(fid["tiles_with_dark"]), str(fid["tiles_with_dark_unstored"]),
            str(fid[f"tiles_with_{mp}_dark_unstored"]), frag,
            " ".join(f"{x:.1f}" for x in said) or "-", _f(r["container_bytes"] / 1e6, ".1f"),
        ]  # fmt: skip
        print(
            " ".join(
                f"{v:<{w}}" if i < 2 else f"{v:>{w}}"
                for i, (v, (_, w)) in enumerate(zip(vals, cols, strict=True))
            )
        )
    print(
        "PSNR dk = over dark pixels; all = over all pixels; dk st / dk un = dark pixels in stored /"
        " unstored tiles; dk tiles = tiles with >= 1 dark pixel; unst>=N = of those, not stored "
        "(with >= N dark px); lost frag = largest lost tissue fragment (3x3-opened dark mask in "
        "unstored tiles); said PSNR = what `compress` printed"
    )
    for r in rep["results"]:
        fid = r.get("fidelity") or {}
        lf = (fid.get("lost_fragments") or {}).get("largest")
        if lf:
            print(
                f"{Path(r['slide']).name} {r['codec']}: {fid['lost_fragments']['count']} lost "
                f"fragments ({fid['lost_fragments']['lost_px']} px); largest {lf['area_px']} px"
                f" = {lf.get('area_um2')} um^2, extent {lf.get('extent_um')} um, bbox x0,y0,x1,y1 "
                f"{lf['bbox_xyxy']}, tiles r0,c0,r1,c1 {lf['tiles_rc']}; max |diff| in unstored "
                f"tiles {fid['max_abs_diff_unstored']}"
            )
        for i, ln in enumerate(r["compress_said"]["lines"]):
            print(f"  {'compress said:' if i == 0 else '              '} {ln}")
    print(f"total {rep['total_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
