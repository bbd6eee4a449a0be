"""slidepress vs libvips: `slidepress compress` and `vips tiffsave` on the same slide, side by side.

Issue 9 part 7: the peer a hospital engineer would use instead of slidepress is libvips (Debian
`libvips-tools`). Both tools re-code the same generic pyramidal TIFF of real tissue (the mosaic
tissue_slide.py builds, 16000 x 16000 px by default) as 256 px JPEG q90 tiles with a pyramid:

    slidepress compress MOSAIC -o OUT.spz --codec jpeg --quality 90 --overwrite [EXTRA...]
    vips tiffsave MOSAIC OUT.tif --tile --tile-width 256 --tile-height 256 --pyramid \\
        --compression jpeg --Q 90 --bigtiff

Each is a whole process started through common.py's wait4 launcher (wall seconds, peak RSS,
CPU seconds of that process alone). `--rounds` rounds (default 3) alternate the two tools in
ABBA order (s v, v s, s v, ...) so that a drift in machine speed falls on both. The report gives
medians, the slidepress/vips ratios and PASS/FAIL against the issue's targets: time ratio <= 1.0
(at least libvips' throughput) and peak-memory ratio < 2.0. It also records the tiles each tool
wrote (slidepress: the container's zip entries per level and its manifest; vips: every tile of
every pyramid page, background included), output sizes, and the CPU load of other processes
during each run (the machine may be shared: compare only runs where that is ~0).

    python benchmarks/bench_vs_vips.py                        # 16000 x 16000, 3 rounds
    python benchmarks/bench_vs_vips.py --size 8000 --rounds 1 # quick
    python benchmarks/bench_vs_vips.py -- --workers 1         # extra args for slidepress compress
    python benchmarks/bench_vs_vips.py --pythonpath /work/base/src   # measure another checkout
    python benchmarks/bench_vs_vips.py --baseline /tmp/before/src    # + that checkout, same run

`--baseline SRC` adds a third tool, `baseline` (slidepress imported from SRC, e.g. a copy of the
source before a change), to the same rounds (the order rotates each round), so a change is
judged by before/vips and after/vips ratios measured side by side.

`vips` must be installed (`apt-get install -y libvips-tools`); the script says so and exits if
it is not. Results go to .bench/bench_vs_vips.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    TILES_DIR,
    CpuProbe,
    code_identity,
    container_tiles,
    log,
    run_measured,
    slidepress_cmd,
    slidepress_env,
    split_passthrough,
    wait_quiet,
)
from tissue_slide import build_slide

TARGET_TIME_RATIO = 1.0  # slidepress wall / vips wall: at least libvips' throughput
TARGET_MEM_RATIO = 2.0  # slidepress peak RSS / vips peak RSS: strictly under
RATIOS = {"wall": "wall_s", "cpu": "cpu_s", "peak_rss": "peak_rss_mib"}  # name -> median key


# ----------------------------------------------------------------------------------------------
# This benchmark
# ----------------------------------------------------------------------------------------------


def jpeg_chroma(data: bytes) -> str | None:
    """Chroma sampling of a JPEG stream from its SOF marker ("4:4:4", "4:2:0", ...): libvips
    turns subsampling off at Q >= 90 (and its TIFFs may hold RGB, not YCbCr, JPEG), so "the
    same codec and quality" can still differ in what is coded."""
    i = data.find(b"\xff\xc0")
    if i < 0:
        i = data.find(b"\xff\xc2")
    if i < 0 or len(data) < i + 19 or data[i + 9] != 3:
        return None
    h, v = data[i + 11] >> 4, data[i + 11] & 15  # first component (Y) sampling factors
    kind = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0"}.get((h, v), f"{h}x{v}")
    if bytes(data[i + 10 : i + 19 : 3]) == b"RGB":  # component ids R, G, B: no YCbCr transform
        kind = f"RGB {kind} (no YCbCr)"
    return kind


def tiff_tiles(path: Path) -> dict[str, Any]:
    """Every tile of every pyramid page vips wrote (it codes background tiles too)."""
    import tifffile

    per_level = []
    with tifffile.TiffFile(str(path)) as tf:
        for level in tf.series[0].levels:
            per_level.append(sum(len(p.dataoffsets) for p in level.pages if p is not None))
        page = tf.pages[0]
        i = max(range(len(page.databytecounts)), key=lambda k: page.databytecounts[k])
        tf.filehandle.seek(page.dataoffsets[i])
        info = {
            "compression": str(page.compression.name),
            "photometric": str(page.photometric.name),
            "tile": [page.tilelength, page.tilewidth],
            "shape": list(page.shape),
            "jpeg_chroma": jpeg_chroma(tf.filehandle.read(page.databytecounts[i])),
        }
    return {"stored_per_level": per_level, "stored": sum(per_level), **info}


def vips_exe(given: str | None) -> str:
    exe = given or shutil.which("vips")
    if not exe or not Path(exe).exists():
        raise SystemExit(
            "`vips` not found: install libvips-tools (`apt-get install -y libvips-tools`) "
            "or give --vips PATH"
        )
    return exe


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main(argv: list[str] | None = None) -> int:
    ours, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` are passed to `slidepress compress`.",
    )
    ap.add_argument("--size", type=int, default=16000, help="mosaic side in px (default 16000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality for both (default 90)")
    ap.add_argument(
        "--pythonpath",
        default=None,
        help="prepend to PYTHONPATH of the slidepress child, e.g. /work/base/src",
    )
    ap.add_argument(
        "--python", default=None, help="interpreter to run `-m slidepress` with (default: this "
        "venv's `slidepress` console script)"
    )  # fmt: skip
    ap.add_argument("--vips", default=None, help="vips executable (default: `vips` on PATH)")
    ap.add_argument(
        "--baseline", default=None, help="also run slidepress from this src folder (PYTHONPATH), "
        "as the tool `baseline`, in the same rounds: before vs after a change"
    )  # fmt: skip
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run wait up to this many s for other processes to go idle",
    )
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--tiles-dir", type=Path, default=TILES_DIR)
    ap.add_argument("--json", type=Path, default=None, help="default BENCH_DIR/bench_vs_vips.json")
    ap.add_argument("--keep", action="store_true", help="keep the two outputs of the last round")
    args = ap.parse_args(ours)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    vips = vips_exe(args.vips)
    vips_version = subprocess.run([vips, "--version"], capture_output=True, text=True).stdout
    env = slidepress_env(args.pythonpath)
    ident = code_identity(args.python, env)
    log(f"slidepress under test: {ident['module']} ({ident['commit']})")

    slide, build = build_slide(args.size, args.bench_dir, args.tiles_dir)
    work = args.bench_dir / "vs_vips"
    work.mkdir(parents=True, exist_ok=True)
    spz, tif = work / "slidepress.spz", work / "vips.tif"
    q = str(args.quality)

    def compress_cmd(out: Path) -> list[str]:
        return [*slidepress_cmd(args.python), "compress", str(slide), "-o", str(out),
                "--codec", "jpeg", "--quality", q, "--overwrite", *extra]  # fmt: skip

    commands = {
        "slidepress": compress_cmd(spz),
        "vips": [
            vips, "tiffsave", str(slide), str(tif), "--tile", "--tile-width", "256",
            "--tile-height", "256", "--pyramid", "--compression", "jpeg", "--Q", q, "--bigtiff",
        ],
    }  # fmt: skip
    outputs = {"slidepress": spz, "vips": tif}
    envs = {"slidepress": env, "vips": env}
    base_ident = None
    if args.baseline:
        outputs["baseline"] = work / "baseline.spz"
        commands["baseline"] = compress_cmd(outputs["baseline"])
        envs["baseline"] = slidepress_env(args.baseline)
        base_ident = code_identity(args.python, envs["baseline"])
        log(f"baseline: {base_ident['module']} ({base_ident['commit']})")
    probe = CpuProbe(slide)
    tools = list(commands)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for rnd in range(args.rounds):
        # ABBA for two tools; with a baseline the order also rotates, so each goes first once
        order = tools[rnd % len(tools) :] + tools[: rnd % len(tools)] if args.baseline else tools
        order = order if rnd % 2 == 0 else order[::-1]
        for tool in order:
            outputs[tool].unlink(missing_ok=True)
            wait_quiet(args.quiet_wait)
            cpu_probe = probe()
            rec = run_measured(commands[tool], envs[tool], work / f"{tool}.log")
            if rec["rc"] != 0:
                raise SystemExit(f"{tool} failed (rc {rec['rc']}):\n{rec['output_tail']}")
            rec["round"] = rnd + 1
            rec["output_bytes"] = outputs[tool].stat().st_size
            rec["cpu_probe_tiles_per_s"] = cpu_probe
            runs[tool].append(rec)
            log(
                f"round {rnd + 1} {tool:<10}: {rec['wall_s']:6.1f} s, "
                f"{rec['peak_rss_mib']:6.0f} MiB peak, {rec['cpu_s']:6.1f} CPU s, "
                f"other load {rec['other_processes_cores']} cores"
            )
    tiles = {"slidepress": container_tiles(spz), "vips": tiff_tiles(tif)}
    with zipfile.ZipFile(spz) as z:  # the largest level-0 tile: a tissue tile
        big = max(
            (i for i in z.infolist() if i.filename.startswith("L0/")), key=lambda i: i.file_size
        )
        tiles["slidepress"]["jpeg_chroma"] = jpeg_chroma(z.read(big))
    summary_line = next(
        (ln for ln in reversed(runs["slidepress"][-1]["output_tail"].splitlines()) if "->" in ln),
        "",
    )
    if "baseline" in outputs:
        tiles["baseline"] = container_tiles(outputs["baseline"])
    if not args.keep:
        for path in outputs.values():
            path.unlink(missing_ok=True)

    med = {
        tool: {
            k: median([r[k] for r in rs])
            for k in ("wall_s", "peak_rss_mib", "cpu_s", "output_bytes")
        }
        for tool, rs in runs.items()
    }
    px = args.size * args.size
    for tool in med:
        med[tool]["mpx_per_s"] = round(px / 1e6 / med[tool]["wall_s"], 2)
    time_ratio = med["slidepress"]["wall_s"] / med["vips"]["wall_s"]
    mem_ratio = med["slidepress"]["peak_rss_mib"] / med["vips"]["peak_rss_mib"]
    baseline = None
    if "baseline" in med:
        b = med["baseline"]
        baseline = {
            "over_vips": {k: round(b[m] / med["vips"][m], 3) for k, m in RATIOS.items()},
            "slidepress_over_baseline": {
                k: round(med["slidepress"][m] / b[m], 3) for k, m in RATIOS.items()
            },
        }
    report = {
        "benchmark": "bench_vs_vips",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "argv": sys.argv if argv is None else argv,
        "slidepress": ident,
        "vips_version": vips_version.strip(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "slide": build,
        "commands": {k: " ".join(v) for k, v in commands.items()},
        "extra_compress_args": extra,
        "runs": runs,
        "median": med,
        "ratio_slidepress_over_vips": {
            "wall": round(time_ratio, 3),
            "peak_rss": round(mem_ratio, 3),
            "cpu": round(med["slidepress"]["cpu_s"] / med["vips"]["cpu_s"], 3),
            "output_bytes": round(
                med["slidepress"]["output_bytes"] / med["vips"]["output_bytes"], 3
            ),
            # fastest run of each: the least disturbed when the machine is shared
            "best_wall": round(
                min(r["wall_s"] for r in runs["slidepress"])
                / min(r["wall_s"] for r in runs["vips"]),
                3,
            ),
        },
        "baseline": baseline and {**baseline, "code": base_ident},
        "targets": {"wall_ratio_max": TARGET_TIME_RATIO, "peak_rss_ratio_below": TARGET_MEM_RATIO},
        "pass": {
            "time": time_ratio <= TARGET_TIME_RATIO,
            "memory": mem_ratio < TARGET_MEM_RATIO,
        },
        "tiles": tiles,
        "slidepress_summary": summary_line.strip(),
        "cpu_probe": probe.summary(),
    }
    out = args.json or args.bench_dir / "bench_vs_vips.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"JSON: {out}")
    return 0


def print_report(rep: dict[str, Any]) -> None:
    s = rep["slide"]
    print(
        f"\nslide {Path(s['path']).name}: {s['size_px']}x{s['size_px']} px, "
        f"{s['file_bytes'] / 1e6:.0f} MB; slidepress {rep['slidepress']['commit']} "
        f"({rep['slidepress']['src']}); {rep['vips_version']}; "
        f"{len(rep['runs']['vips'])} rounds, ABBA order; {rep['machine']['cpu_count']} CPUs"
    )
    if rep["extra_compress_args"]:
        print(f"extra compress args: {' '.join(rep['extra_compress_args'])}")
    print(
        f"{'tool':<11}{'wall s':>8}{'MPx/s':>8}{'peak MiB':>10}{'CPU s':>8}{'out MB':>9}"
        f"{'tiles':>8}  runs (wall s / MiB / other cores)"
    )
    for tool, m in rep["median"].items():
        runs = ", ".join(
            f"{r['wall_s']:.1f}/{r['peak_rss_mib']:.0f}/{r['other_processes_cores']:.2f}"
            for r in rep["runs"][tool]
        )
        print(
            f"{tool:<11}{m['wall_s']:>8.2f}{m['mpx_per_s']:>8.1f}{m['peak_rss_mib']:>10.0f}"
            f"{m['cpu_s']:>8.1f}{m['output_bytes'] / 1e6:>9.1f}"
            f"{rep['tiles'][tool]['stored']:>8}  {runs}"
        )
    r, t, p = rep["ratio_slidepress_over_vips"], rep["targets"], rep["pass"]
    print(
        f"slidepress/vips: wall {r['wall']:.2f}x (target <= {t['wall_ratio_max']}: "
        f"{'PASS' if p['time'] else 'FAIL'}), peak RSS {r['peak_rss']:.2f}x (target < "
        f"{t['peak_rss_ratio_below']}: {'PASS' if p['memory'] else 'FAIL'}), "
        f"CPU {r['cpu']:.2f}x, output size {r['output_bytes']:.2f}x; fastest runs' wall "
        f"{r['best_wall']:.2f}x"
    )
    if rep.get("baseline"):
        b = rep["baseline"]
        line = ", ".join(f"{k} {b['over_vips'][k]:.2f}x" for k in RATIOS)
        after = ", ".join(f"{k} {b['slidepress_over_baseline'][k]:.2f}x" for k in RATIOS)
        print(f"baseline/vips: {line}; slidepress/baseline: {after}")
    st, vt = rep["tiles"]["slidepress"], rep["tiles"]["vips"]
    print(
        f"tiles per level: slidepress {st['stored_per_level']} of {st['grid_per_level']} "
        f"(policy {(st.get('background') or {}).get('policy')}); vips {vt['stored_per_level']} "
        f"(every tile)"
    )
    print(
        f"JPEG chroma: slidepress {st.get('jpeg_chroma')} "
        f"({(st.get('codec') or {}).get('library_version')}); vips {vt['jpeg_chroma']} "
        f"({vt['compression']}, photometric {vt['photometric']})"
    )
    print(f"slidepress said: {rep['slidepress_summary']}")
    cp = rep["cpu_probe"]
    print(
        f"CPU probe: {cp['samples']} tiles/s, spread {cp['spread']:.0%}"
        + (" -- machine speed drifted: compare with care" if cp["spread"] > 0.15 else "")
    )


if __name__ == "__main__":
    raise SystemExit(main())
