"""Issue 23's comparison table in the style of Fischer et al. (baselines for WSI compression):
every codec at matched quality on held-out H&E, its speed, and what it costs a downstream probe.

For every codec setting (the shipped `jpegxl` is libjxl effort 3 and `avif` libavif speed 8;
`jpegxl:effort=7` and `avif:speed=4` are the libraries' slower, better settings) the quality
sweep of `bench codecs` is run on each input, and the rate each needs to reach a target is
interpolated on its RD curve pooled over every tile of every input (tiles weigh the same; PSNR
from the pooled MSE; `bench.bdrate.rate_at_quality`, monotone envelope; n/a outside the sweep):
bpp at PSNR 35 and 38 dB, at MS-SSIM 0.98 and 0.99, at feature similarity 0.995 (the shipped
featsim network). Speed: median encode / decode time per 256 px tile over the sweep (batched
codecs per batch of 16 tiles, on `--threads` threads), as tiles/s. Downstream: `eval
downstream`'s PCam probe (nic-multitask codes, MLP probe on originals, scored on decoded
patches) at the sweep point of each codec nearest to PSNR 38 dB on the held-out tiles: its
AUC drop vs the originals.

Inputs, none seen by the learned codec's training (scripts/train_codec.py): every lossless
tile image in ../shared/data/tiles (each an input, cut in 256 px tiles) and tissue tiles of
the slide CropBreastSlide.tiff (its mpp tag is bogus: 0.5 given).

    python benchmarks/bench_codec_table.py              # the reference run
    python benchmarks/bench_codec_table.py --quick      # smoke (few tiles, no downstream)

Writes .bench/codec_table/{rows.json,table.md} and prints table.md (docs/codec_comparison.md
holds a copy of the reference run).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, PCAM, SLIDES_DIR, TILES_DIR, git_commit, log

OUT = BENCH_DIR / "codec_table"
HELD_OUT_SLIDE = "CropBreastSlide.tiff"
SPECS = ("jpeg", "jpegxl", "jpegxl:effort=7", "webp", "avif", "avif:speed=4", "jpeg2000",
         "htj2k", "learned")  # fmt: skip
# (column, metric key, target): rate needed to reach the target
TARGETS = (("PSNR 35 dB", "psnr", 35.0), ("PSNR 38 dB", "psnr", 38.0),
           ("MS-SSIM 0.98", "ms_ssim", 0.98), ("MS-SSIM 0.99", "ms_ssim", 0.99),
           ("featsim 0.995", "featsim_mean", 0.995))  # fmt: skip
DOWNSTREAM_PSNR = 38.0


def parse_spec(spec: str) -> tuple[str, dict[str, int | float | str]]:
    name, _, rest = spec.partition(":")
    params: dict[str, int | float | str] = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        params[k] = int(v) if v.lstrip("-").isdigit() else v
    return name, params


def make(name: str, params: dict, quality: float, threads: int):
    from slidepress.codecs import get_codec

    warm = np.zeros((16, 16, 3), np.uint8)
    codec = get_codec(name, quality, numthreads=threads, **params)
    try:
        codec.decode(codec.encode(warm))
    except TypeError:  # an encoder without a thread count (bench codecs' make_codec rule)
        codec = get_codec(name, quality, **params)
        codec.decode(codec.encode(warm))
    return codec


def sweep_rows(specs, inputs, threads: int) -> list[dict]:
    from slidepress.bench.codecs.measuring import measure, single_thread_torch
    from slidepress.bench.codecs.options import resolve_qualities

    rows = []
    with single_thread_torch():
        for spec in specs:
            name, params = parse_spec(spec)
            for q in resolve_qualities([name], None)[name]:
                codec = make(name, params, q, threads)
                for inp in inputs:
                    m = measure(inp[0], codec, None, inp[1])
                    rows.append({"codec": spec, "quality": q, "input": inp[0].name, **m})
                log(
                    f"  {spec} q{q:g}: "
                    + ", ".join(
                        f"{r['bpp']:.2f} bpp {r['psnr']:.1f} dB" for r in rows[-len(inputs) :]
                    )
                )
    return rows


def pooled(rows: list[dict], spec: str) -> list[dict]:
    """One RD point per quality over every tile of every input (tiles weigh the same): bpp =
    all bits / all pixels, PSNR from the pooled MSE, MS-SSIM and featsim pixel/tile means."""
    out = []
    for q in sorted({r["quality"] for r in rows if r["codec"] == spec}):
        rs = [r for r in rows if r["codec"] == spec and r["quality"] == q]
        px = np.array([r["pixels"] for r in rs], float)
        nt = np.array([r["n_tiles"] for r in rs], float)
        mse = np.array([255.0**2 * 10 ** (-r["psnr"] / 10) for r in rs])
        mean_mse = float((mse * px).sum() / px.sum())
        out.append({
            "quality": q,
            "bpp": 8 * sum(r["bytes"] for r in rs) / px.sum(),
            "psnr": 10 * math.log10(255.0**2 / mean_mse) if mean_mse > 0 else math.inf,
            "ms_ssim": float((np.array([r["ms_ssim"] for r in rs]) * px).sum() / px.sum()),
            "featsim_mean": float((np.array([r["featsim_mean"] for r in rs]) * nt).sum()
                                  / nt.sum()),
        })  # fmt: skip
    return out


def matched(rows: list[dict], spec: str, key: str, target: float) -> float:
    """The bpp `spec` needs to reach `target` on its pooled RD curve (n/a outside it)."""
    from slidepress.bench.bdrate import rate_at_quality

    pts = pooled(rows, spec)
    try:
        return rate_at_quality([p["bpp"] for p in pts], [p[key] for p in pts], target)
    except ValueError:
        return math.nan


def downstream_points(rows: list[dict], specs) -> dict[str, float]:
    """Each codec's sweep quality whose pooled PSNR is nearest to 38 dB."""
    return {spec: min(pooled(rows, spec), key=lambda p: abs(p["psnr"] - DOWNSTREAM_PSNR))["quality"]
            for spec in specs}  # fmt: skip


def run_downstream_points(points: dict[str, float], out: Path, threads: int) -> dict[str, dict]:
    from slidepress.eval.downstream import run_downstream

    res = {}
    for spec, q in points.items():
        name, params = parse_spec(spec)
        spec_str = name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        rep = run_downstream([spec_str], f"{name}={q:g}", pcam=PCAM,
                             out_dir=out / "downstream" / spec.replace(":", "_"),
                             slide=None, featsim=False)  # fmt: skip
        row = rep["rows"][-1]
        res[spec] = {"quality": q, "bpp": row["bpp"], "auc": row["auc"],
                     "auc_drop": row["auc_drop"]}  # fmt: skip
    return res


def fmt(v: float, spec: str = ".2f") -> str:
    return "n/a" if not math.isfinite(v) else format(v, spec)


def render(rows, specs, down, config) -> str:
    head = ["codec", *[f"bpp @ {c}" for c, _, _ in TARGETS], "encode tiles/s",
            "decode tiles/s"] + (["PCam AUC drop @ ~38 dB (bpp)"] if down else [])  # fmt: skip
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for spec in specs:
        cells = [f"`{spec}`"]
        for _, key, target in TARGETS:
            cells.append(fmt(matched(rows, spec, key, target)))
        rs = [r for r in rows if r["codec"] == spec]
        for key in ("encode_ms", "decode_ms"):
            rate = 1e3 / np.median([r[key] for r in rs])
            cells.append(f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}")
        if down:
            d = down[spec]
            cells.append(f"{d['auc_drop']:+.4f} ({d['bpp']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Conditions: {json.dumps(config)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--codecs", default=",".join(SPECS), help="specs, e.g. avif:speed=4")
    ap.add_argument("--max-tiles", type=int, default=48, help="tiles per input at most")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-downstream", action="store_true")
    ap.add_argument("--quick", action="store_true", help="8 tiles per input, no downstream")
    ap.add_argument("--render", action="store_true", help="re-render OUT/table.md from rows.json")
    ap.add_argument(
        "--downstream-only",
        action="store_true",
        help="add the downstream column to OUT/rows.json's sweep (no new sweep)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.max_tiles, args.no_downstream = 8, True
    if args.downstream_only:
        saved = json.loads((args.out / "rows.json").read_text())
        specs = list(dict.fromkeys(r["codec"] for r in saved["rows"]))
        saved["downstream"] = run_downstream_points(
            downstream_points(saved["rows"], specs), args.out, args.threads
        )
        (args.out / "rows.json").write_text(json.dumps(saved, default=float, indent=1))
        args.render = True
    if args.render:
        saved = json.loads((args.out / "rows.json").read_text())
        specs = list(dict.fromkeys(r["codec"] for r in saved["rows"]))
        table = render(saved["rows"], specs, saved["downstream"], saved["config"])
        (args.out / "table.md").write_text(table)
        print(table)
        return 0
    slide = SLIDES_DIR / HELD_OUT_SLIDE
    if not TILES_DIR.is_dir() or not slide.is_file():
        log(f"held-out data not found ({TILES_DIR}, {slide}; see README)")
        return 2
    from slidepress.bench.codecs.inputs import load_inputs
    from slidepress.bench.codecs.similarity import load_similarity

    t0 = time.perf_counter()
    specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    inputs_paths = [*sorted(TILES_DIR.glob("*.png")), slide]
    loaded = load_inputs(inputs_paths, 256, args.max_tiles, 0, mpp_override=0.5)  # bogus tag
    similarity = load_similarity(True, None)
    inputs = [(i, similarity) for i in loaded]
    log(f"inputs: {', '.join(f'{i.name} ({len(i.tiles)} tiles)' for i in loaded)}")
    rows = sweep_rows(specs, inputs, args.threads)
    down = {}
    if not args.no_downstream:
        points = downstream_points(rows, specs)
        down = run_downstream_points(points, args.out, args.threads)
    config = {"inputs": [i.name for i in loaded], "tiles": [len(i.tiles) for i in loaded],
              "threads": args.threads, "commit": git_commit(),
              "seconds": round(time.perf_counter() - t0)}  # fmt: skip
    table = render(rows, specs, down, config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(
        json.dumps({"config": config, "rows": rows, "downstream": down}, default=float, indent=1)
    )
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
