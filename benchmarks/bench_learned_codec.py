"""The learned codec (codecs/learned) against JPEG, JPEG-XL, WebP and AVIF on H&E it never saw
in training: RD curves (PSNR, MS-SSIM, feature similarity), BD-rate vs JPEG and vs JPEG-XL per
source, encode/decode tiles/s of every codec in the same run, model size and training time.

Inputs (held out from training, see scripts/train_codec.py): every lossless tile in
../shared/data/tiles and the slide CropBreastSlide.tiff (its mpp tag is bogus: 0.5 given).
Speed: 256 px tiles, the learned codec in batches of 32 (how the pipeline calls it), the
others one tile at a time (they have no batch mode), all with 2 threads where the library
takes a thread count; tiles/s = tiles / wall seconds over the whole batch, best of 3.

    python benchmarks/bench_learned_codec.py                 # the reference run (~10 min)
    python benchmarks/bench_learned_codec.py --max-tiles 8   # quick
Writes .bench/learned_codec/{results.csv,results.json,report.md,*.png,learned.json}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, SHARED, SLIDES_DIR, TILES_DIR, git_commit, log

OUT = BENCH_DIR / "learned_codec"
HELD_OUT_SLIDE = "CropBreastSlide.tiff"
CODECS = ("jpeg", "jpegxl", "webp", "avif", "learned")
LEARNED_QUALITIES = [1, 2, 3, 4, 5, 6, 7, 8]
METRICS = ("psnr", "ms_ssim_db", "featsim_db")
SPEED_QUALITY = {"jpeg": 80, "jpegxl": 80, "webp": 80, "avif": 60, "learned": 5}


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.1f}%"


def bd_vs(rows: list[dict], anchor: str, codec: str, inputs: list[str], metric: str) -> float:
    """Mean over `inputs` of the per-input BD-rate (pchip) of `codec` vs `anchor`."""
    from slidepress.bench.bdrate import bd_rate

    vals = []
    for inp in inputs:
        a = [r for r in rows if r["input"] == inp and r["codec"] == anchor]
        t = [r for r in rows if r["input"] == inp and r["codec"] == codec]
        try:
            v = bd_rate([r["bpp"] for r in a], [r.get(metric, math.nan) for r in a],
                        [r["bpp"] for r in t], [r.get(metric, math.nan) for r in t])  # fmt: skip
        except ValueError:
            v = math.nan
        if math.isfinite(v):
            vals.append(v)
    return float(np.mean(vals)) if vals else math.nan


def speed(tiles: np.ndarray, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Encode and decode tiles/s per codec (see the module docstring)."""
    import torch

    from slidepress.bench.codecs.measuring import make_codec

    torch.set_num_threads(2)
    batch = [np.ascontiguousarray(t) for t in tiles]
    out = {}
    for name in CODECS:
        c, _ = make_codec(name, SPEED_QUALITY[name], 2)
        c.decode_batch(c.encode_batch(batch[:2]))  # warm up (loads weights, torch)
        enc, dec = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            blobs = c.encode_batch(batch)
            enc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.decode_batch(blobs)
            dec.append(time.perf_counter() - t0)
        out[name] = {
            "quality": SPEED_QUALITY[name],
            "encode_tiles_per_s": len(batch) / min(enc),
            "decode_tiles_per_s": len(batch) / min(dec),
            "bpp": 8 * sum(map(len, blobs)) / (len(batch) * 256 * 256),
        }
        log(f"speed {name:8s} encode {out[name]['encode_tiles_per_s']:7.1f} t/s, decode "
            f"{out[name]['decode_tiles_per_s']:7.1f} t/s")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--max-tiles", type=int, default=48, help="tiles per input at most")
    ap.add_argument("--speed-tiles", type=int, default=32)
    ap.add_argument("--no-similarity", action="store_true", help="skip feature/embedding sim.")
    args = ap.parse_args(argv)

    from slidepress.bench.codecs import run_codec_benchmark
    from slidepress.cli.common import progress_bars
    from slidepress.codecs.learned.codec import WEIGHTS, load_model

    tiles = sorted(TILES_DIR.glob("*.png"))
    slide = SLIDES_DIR / HELD_OUT_SLIDE
    if not tiles or not slide.exists():
        log(f"shared data not found under {SHARED} (see README)")
        return 2
    t0 = time.perf_counter()
    quals = {"learned": LEARNED_QUALITIES}
    with progress_bars("tiles") as start:
        res = run_codec_benchmark(
            [*tiles, slide], args.out, list(CODECS), quals, tile=256, threads=1,
            max_tiles_per_input=args.max_tiles, seed=0, mpp_override=0.5,
            feature_similarity=not args.no_similarity,
            embedding_encoder=None if args.no_similarity else "nic-multitask", progress=start,
        )  # fmt: skip
    rows = res.rows
    kinds = {r["input"]: r["kind"] for r in rows}
    sources = {
        "lossless tiles (shared/data/tiles)": [i for i, k in kinds.items() if k != "slide"],
        HELD_OUT_SLIDE: [i for i, k in kinds.items() if k == "slide"],
        "all inputs": list(kinds),
    }
    bd: dict[str, dict] = {}
    for src, inputs in sources.items():
        bd[src] = {
            f"{codec} vs {anchor}": {m: bd_vs(rows, anchor, codec, inputs, m) for m in METRICS}
            for anchor in ("jpeg", "jpegxl")
            for codec in CODECS
            if codec != anchor
        }
    # speed on held-out 256 px tiles (the first input's tiles, then others as needed)
    from slidepress.bench.codecs import load_inputs

    pool = np.concatenate([i.tiles for i in load_inputs(tiles, 256, 16, 0, None)])
    sp = speed(pool[: args.speed_tiles])
    model = load_model()
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    size = sum(p.stat().st_size for p in WEIGHTS.iterdir() if p.suffix in (".npz", ".safetensors"))
    record = {
        "bd_rate_pchip": bd,
        "speed": sp,
        "model": {
            "name": model.config.name, "version": model.config.version,
            "weights_sha256": model.weights_sha256, "weights_bytes": size,
            "training": cfg.get("training"),
        },
        "git_commit": git_commit(),
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    (args.out / "learned.json").write_text(json.dumps(record, indent=1, default=float))

    print(f"\nBD-rate (pchip, mean of per-input values; negative = fewer bits), {len(rows)} rows")
    for src, table in bd.items():
        print(f"\n{src} ({len(sources[src])} inputs)")
        print(f"{'':22s} {'PSNR':>8s} {'MS-SSIM':>8s} {'featsim':>8s}")
        for k, v in table.items():
            if k.startswith("learned") or k.endswith("jpeg"):
                print(f"{k:22s} " + " ".join(f"{_pct(v[m]):>8s}" for m in METRICS))
    print("\nspeed, 256 px tiles, 2 threads: encode / decode tiles/s")
    for name, s in sp.items():
        print(f"{name:8s} q{s['quality']:<3g} {s['encode_tiles_per_s']:7.1f} / "
              f"{s['decode_tiles_per_s']:7.1f}   ({s['bpp']:.3f} bpp)")  # fmt: skip
    tr = cfg.get("training") or {}
    hours = (tr.get("wall_seconds") or 0) / 3600
    print(f"\nmodel {model.config.name} v{model.config.version}: {size / 1e6:.2f} MB weights, "
          f"trained {tr.get('steps')} steps in {hours:.2f} h")  # fmt: skip
    print(f"{res.report_path}  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
