"""Batched decode / encode speed of the learned codec against AVIF and JPEG-XL, in one run on
the same tiles (issue 23 target 2: decode >= 150 tiles/s and >= 1/4 of AVIF's rate, encode
>= 30 tiles/s, on 2 cores).

32 held-out 256 px H&E tiles (corner crops of ../shared/data/tiles, repeated to 32); the
learned codec in one batch of 32 (how the pipeline calls it; with and without its per-tile
guard), AVIF (speed 8, the `avif` default, q60) and JPEG-XL (effort 3, q80) one tile at a
time with 2 threads; tiles/s = tiles / wall seconds of the whole batch, best of `--repeats`.
Also prints where the learned decoder's time goes (entropy decoding, hyper-synthesis,
synthesis).

    python benchmarks/bench_codec_speed.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image

from common import TILES_DIR


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from slidepress.codecs import get_codec
    from slidepress.codecs.learned import entropy
    from slidepress.synthetic import stress_tiles as stress

    torch.set_num_threads(2)
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES_DIR.glob("*.png"))]
    tiles = (stress.he_crops(imgs, per_image=4) * 8)[:32]
    n = len(tiles)
    out: dict[str, dict[str, float]] = {}
    runs = [("learned", 5, {}), ("learned", 5, {"guard": False}),
            ("avif", 60, {"numthreads": 2}), ("jpegxl", 80, {"numthreads": 2})]  # fmt: skip
    for name, q, params in runs:
        c = get_codec(name, q, **params)
        label = name + ("-noguard" if params.get("guard") is False else "")
        if c.batched:
            blobs = c.encode_batch(tiles)
            c.decode_batch(blobs)
            enc = best_rate(lambda c=c: c.encode_batch(tiles), n, max(2, args.repeats // 2))
            dec = best_rate(lambda c=c, b=blobs: c.decode_batch(b), n, args.repeats)
        else:
            blobs = [c.encode(t) for t in tiles]
            enc = best_rate(lambda c=c: [c.encode(t) for t in tiles], n, args.repeats)
            dec = best_rate(lambda c=c, b=blobs: [c.decode(x) for x in b], n, args.repeats)
        out[label] = {"encode_tiles_per_s": enc, "decode_tiles_per_s": dec,
                      "bpp": 8 * sum(map(len, blobs)) / (n * 256 * 256)}  # fmt: skip
        print(
            f"{label:16s} encode {enc:7.1f}/s  decode {dec:7.1f}/s  {out[label]['bpp']:.2f} bpp",
            flush=True,
        )
    out["learned_decode_vs_avif"] = {"ratio": out["learned"]["decode_tiles_per_s"]
                                     / out["avif"]["decode_tiles_per_s"]}  # fmt: skip
    print(f"learned decode / AVIF decode: {out['learned_decode_vs_avif']['ratio']:.3f}")

    # where the learned decoder's time goes (guard off: every tile is a learned bitstream)
    c = get_codec("learned", 5, guard=False)
    m, blobs = c.model, c.encode_batch(tiles)
    parsed = [m._parse(b) for b in blobs]
    q16, h, w = parsed[0][:3]
    parts: dict[str, float] = {}
    for _ in range(args.repeats):
        t = [time.perf_counter()]
        decs = [entropy.Decoder(m.tables, p[3]) for p in parsed]
        z = np.stack([d.z(m.config.z, h // 32, w // 32).transpose(1, 2, 0) for d in decs])
        t.append(time.perf_counter())
        mu, idx = m.entropy_params(z)
        t.append(time.perf_counter())
        syms = np.stack([d.y(idx[k].transpose(2, 0, 1)).transpose(1, 2, 0)
                         for k, d in enumerate(decs)])  # fmt: skip
        t.append(time.perf_counter())
        m.synthesize(syms.astype(np.float64), mu, q16)
        t.append(time.perf_counter())
        for k, name in enumerate(("z_entropy", "hyper_synthesis", "y_entropy", "synthesis")):
            parts[name] = min(parts.get(name, float("inf")), 1e3 * (t[k + 1] - t[k]) / n)
    out["learned_decode_ms_per_tile"] = parts
    print("learned decode, ms per tile:", {k: round(v, 2) for k, v in parts.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
