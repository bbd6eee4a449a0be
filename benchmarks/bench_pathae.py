"""Autoencoder codecs (codecs/autoencoder, PathAE): latent sizes and quantization, our AE vs
JPEG at equal bytes, and the downstream effect of every codec.

1. Latents of held-out 256 px H&E tiles (every lossless tile in ../shared/data/tiles cut
   into 256 px tiles, + the central 1024 px of CropBreastSlide.tiff): bytes per tile as
   float32 / float16 (raw) and coded at int8 and at every K-means codebook size (entropy
   coded); feature similarity (shipped network) of each decoding to the original, and its
   drop against decoding the float32 latents.
   Target: some K-means level >= 8x smaller than float32 at <= 0.02 drop.
2. At equal bytes per tile: embedding similarity (nic-multitask, tiles taken as 0.5 um/px)
   and feature similarity of our AE (each rate level, and the fine-tuned decoder if
   --finetuned BUNDLE) vs JPEG interpolated (in log bytes) at the same size.
   Target: AE above JPEG on both.
3. `eval downstream` over jpeg, jpegxl, avif, learned and pathae (>= 4 rates each) on a PCam
   subset (--train-limit / --test-limit per class) + the sample slide's NIC grid.

    python benchmarks/bench_pathae.py                       # all (~20 min on 2 busy cores)
    python benchmarks/bench_pathae.py --skip-downstream     # parts 1-2 (~2 min)
Writes .bench/pathae/{latents.csv,ae_vs_jpeg.csv,summary.json,downstream/*}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, PCAM, SLIDES_DIR, TILES_DIR, git_commit, log

OUT = BENCH_DIR / "pathae"
JPEG_QUALITIES = [1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 75, 90]
TILE_MPP = 0.5
HELD_OUT_SLIDE = "CropBreastSlide.tiff"  # never trained on (bogus mpp tag: 0.5 given)
DOWNSTREAM = ["jpeg", "jpegxl", "avif", "learned", "pathae"]
DOWNSTREAM_Q = ["jpeg=5,10,30,60,90", "jpegxl=10,30,60,90", "avif=10,30,60,85",
                "learned=1,3,5,8", "pathae=1,2,3,4,5,6"]  # fmt: skip


def held_out_tiles(max_tiles: int) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for p in sorted(TILES_DIR.glob("*.png")):
        a = np.asarray(Image.open(p).convert("RGB"))
        for y in range(0, a.shape[0] - 255, 256):
            for x in range(0, a.shape[1] - 255, 256):
                out.append(np.ascontiguousarray(a[y : y + 256, x : x + 256]))
    slide = SLIDES_DIR / HELD_OUT_SLIDE
    if slide.exists():  # the central 1024 px of the held-out slide: 16 more tiles of tissue
        from slidepress.slide import open_slide

        with open_slide(slide, mpp_override=0.5) as r:
            w, h = r.info.dimensions
            a = r.read_region(((w - 1024) // 2, (h - 1024) // 2), 0, (1024, 1024))
        out += [np.ascontiguousarray(a[y : y + 256, x : x + 256])
                for y in range(0, 1024, 256) for x in range(0, 1024, 256)]  # fmt: skip
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(out))[:max_tiles]
    return [out[i] for i in sorted(idx)]


def sims(tiles, dec, fs_ref, fs, enc) -> dict[str, float]:
    from slidepress.metrics.embsim import embedding_similarity

    return {
        "featsim": float(fs.score(fs_ref, dec).mean.mean()),
        "embsim": float(embedding_similarity(enc, tiles, dec, tile_mpp=TILE_MPP).mean()),
        "psnr": float(np.mean([10 * np.log10(255**2 / max(1e-12, np.mean(
            (a.astype(float) - b) ** 2))) for a, b in zip(tiles, dec, strict=True)])),
    }  # fmt: skip


def ae_rows(name: str, codec_name: str, weights, tiles, fs_ref, fs, enc) -> list[dict]:
    from slidepress.codecs import get_codec
    from slidepress.codecs.autoencoder.codec import decode_latents
    from slidepress.codecs.autoencoder.loading import latents_of
    from slidepress.codecs.autoencoder.quantize import latent_bytes

    base = get_codec(codec_name, 1, **({"weights": str(weights)} if weights else {}))
    b = base.bundle
    import torch

    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    z = latents_of(b.ae, x)
    dec32 = list(decode_latents(b, z))
    raw = latent_bytes(*z.shape[1:])
    ref = {"model": name, "level": "float32", "bytes_per_tile": raw["float32"],
           **sims(tiles, dec32, fs_ref, fs, enc)}  # fmt: skip
    rows = [ref]
    for q, level in enumerate(b.quantizers.levels, start=1):
        c = get_codec(codec_name, q, **({"weights": str(weights)} if weights else {}))
        blobs = c.encode_batch(tiles)
        dec = c.decode_batch(blobs)
        rows.append({"model": name, "level": level, "quality": q,
                     "bytes_per_tile": float(np.mean([len(x) for x in blobs])),
                     **sims(tiles, dec, fs_ref, fs, enc)})  # fmt: skip
    for r in rows:
        r["x_smaller_than_float32"] = raw["float32"] / r["bytes_per_tile"]
        r["featsim_drop_vs_float32"] = ref["featsim"] - r["featsim"]
    log(f"{name}: latents {z.shape[1:]} float32 {raw['float32']} B, float16 {raw['float16']} B")
    for r in rows:
        log(f"  {r['level']:10s} {r['bytes_per_tile']:8.0f} B/tile  "
            f"x{r['x_smaller_than_float32']:5.1f}"
            f"  featsim {r['featsim']:.4f} (drop {r['featsim_drop_vs_float32']:+.4f})  embsim "
            f"{r['embsim']:.4f}  PSNR {r['psnr']:.2f}")  # fmt: skip
    return rows


def jpeg_rows(tiles, fs_ref, fs, enc) -> list[dict]:
    from slidepress.codecs import get_codec

    rows = []
    for q in JPEG_QUALITIES:
        c = get_codec("jpeg", q)
        blobs = [c.encode(t) for t in tiles]
        dec = [c.decode(b) for b in blobs]
        rows.append({"model": "jpeg", "quality": q,
                     "bytes_per_tile": float(np.mean([len(b) for b in blobs])),
                     **sims(tiles, dec, fs_ref, fs, enc)})  # fmt: skip
    return rows


def at_bytes(rows: list[dict], nbytes: float, key: str) -> float:
    """JPEG's `key` interpolated in log bytes (NaN outside JPEG's range)."""
    b = np.log([r["bytes_per_tile"] for r in rows])
    v = np.array([r[key] for r in rows])
    o = np.argsort(b)
    if not b.min() <= math.log(nbytes) <= b.max():
        return math.nan
    return float(np.interp(math.log(nbytes), b[o], v[o]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--max-tiles", type=int, default=48)
    ap.add_argument("--finetuned", type=Path, help="a fine-tuned pathae bundle to compare too")
    ap.add_argument("--skip-downstream", action="store_true")
    ap.add_argument("--train-limit", type=int, default=1000, help="PCam train patches / class")
    ap.add_argument("--test-limit", type=int, default=300, help="PCam test patches / class")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from slidepress.encoders import get_encoder
    from slidepress.metrics.featsim import shipped

    if not TILES_DIR.is_dir():
        log(f"shared tiles not found at {TILES_DIR}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tiles = held_out_tiles(args.max_tiles)
    fs, enc = shipped(), get_encoder("nic-multitask")
    fs_ref = fs.reference(tiles)
    log(f"{len(tiles)} held-out 256 px tiles")
    ae = ae_rows("pathae", "pathae", None, tiles, fs_ref, fs, enc)
    if args.finetuned:
        ae += ae_rows("pathae-ft", "pathae", args.finetuned, tiles, fs_ref, fs, enc)
    jp = jpeg_rows(tiles, fs_ref, fs, enc)
    with open(args.out / "latents.csv", "w", newline="") as f:
        w = csv.DictWriter(f, sorted({k for r in ae for k in r}))
        w.writeheader()
        w.writerows(ae)
    cmp_rows = []
    for r in ae:
        row = {"model": r["model"], "level": r["level"], "bytes_per_tile": r["bytes_per_tile"]}
        for k in ("embsim", "featsim", "psnr"):
            row[f"ae_{k}"] = r[k]
            row[f"jpeg_{k}_at_same_bytes"] = at_bytes(jp, r["bytes_per_tile"], k)
        cmp_rows.append(row)
        log(f"{r['model']:9s} {r['level']:9s} {r['bytes_per_tile']:7.0f} B: embsim AE "
            f"{r['embsim']:.4f} vs JPEG {row['jpeg_embsim_at_same_bytes']:.4f}; featsim AE "
            f"{r['featsim']:.4f} vs JPEG {row['jpeg_featsim_at_same_bytes']:.4f}; PSNR "
            f"{r['psnr']:.2f} vs {row['jpeg_psnr_at_same_bytes']:.2f}")  # fmt: skip
    small = min(jp, key=lambda r: r["bytes_per_tile"])
    log(f"JPEG's smallest (q{small['quality']}): {small['bytes_per_tile']:.0f} B/tile, embsim "
        f"{small['embsim']:.4f}, featsim {small['featsim']:.4f}, PSNR {small['psnr']:.2f} "
        "(smaller AE levels: JPEG cannot reach their size)")  # fmt: skip
    with open(args.out / "ae_vs_jpeg.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(cmp_rows[0]))
        w.writeheader()
        w.writerows(cmp_rows)
    km = [r for r in ae if r["level"].startswith("kmeans") and r["model"] == "pathae"]
    ok_km = [r for r in km if r["x_smaller_than_float32"] >= 8
             and r["featsim_drop_vs_float32"] <= 0.02]  # fmt: skip
    summary = {
        "commit": git_commit(), "tiles": len(tiles), "jpeg": jp, "ae": ae, "ae_vs_jpeg": cmp_rows,
        "target_kmeans_8x_at_0.02": {"met": bool(ok_km), "levels": [r["level"] for r in ok_km]},
    }  # fmt: skip
    log(f"K-means >= 8x smaller than float32 at <= 0.02 featsim drop: {bool(ok_km)} "
        f"({', '.join(r['level'] for r in ok_km)})")  # fmt: skip
    if not args.skip_downstream:
        from slidepress.cli.common import progress_bars
        from slidepress.eval.downstream import run_downstream

        codecs = list(DOWNSTREAM)
        quals = list(DOWNSTREAM_Q)
        if args.finetuned:
            codecs.append(f"pathae:weights={args.finetuned}")
            quals.append(f"pathae[{args.finetuned.name}]=1,2,3,4,5,6")
        with progress_bars("items") as start:
            rep = run_downstream(codecs, quals, pcam=PCAM, out_dir=args.out / "downstream",
                                 train_limit_per_class=args.train_limit,
                                 test_limit_per_class=args.test_limit, progress=start)  # fmt: skip
        summary["downstream"] = {"rows": rep["rows"], "spearman": rep["spearman_vs_auc_drop"]}
        for r in rep["rows"]:
            log(f"{r['codec']:12s} q{r['quality']} bpp {r['bpp']:.3f} AUC {r['auc']:.4f} acc "
                f"{r['accuracy']:.3f} embsim {r['embsim']:.4f} featsim {r['featsim_mean']:.4f} "
                f"grid {r['slide_grid_cosine']:.4f}")  # fmt: skip
    summary["seconds"] = time.perf_counter() - t0
    from slidepress.jsonsafe import json_safe

    (args.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    log(f"-> {args.out} in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
