"""Batched decode / encode speed of the learned codec against AVIF and JPEG-XL, in one run on
the same tiles (issue 23 target 2: decode >= 150 tiles/s and >= 1/4 of AVIF's rate, encode
>= 30 tiles/s, on 2 cores).

32 held-out 256 px H&E tiles (corner crops of ../shared/data/tiles, repeated to 32); the
learned codec in one batch of 32 (how the pipeline calls it; with and without its per-tile
guard; decoded on `runtime.decode_threads()` threads), AVIF (speed 8, the `avif` default, q60)
and JPEG-XL (effort 3, q80) one tile at a time with 2 threads; tiles/s = tiles / wall seconds
of the whole batch, best of `--repeats`. The codecs take turns within each repeat, so a burst
of load from other processes hits them alike; `foreign_cores` records how many cores' worth of
CPU other processes used while each codec was measured (0 on a quiet machine). On a shared
machine the wall rates say more about the neighbours than the codecs, so each is also given
per CPU second of this process (all its threads): `cpu_ms_per_tile` (best of the repeats)
and `tiles_per_s_2_cores` = 2000 / cpu_ms_per_tile, the rate two idle cores would give if the
codec kept both busy (an upper bound; the wall rate on a quiet machine is the real figure).

Then where the learned decoder's time goes: CPU milliseconds per tile of each stage (entropy
decoding of the hyper-latents, hyper-synthesis + scale indices, entropy decoding of the
latents, synthesis; and each layer), one tile at a time on one thread.

`--weights NAME=FOLDER` (repeatable) adds the learned codec with other weights (e.g. a
float32 re-export, codecs/learned/export.py) to the same run, as `learned[NAME]` (with and
without the guard) and in the profile, so weights compare on the same tiles and load.

    python benchmarks/bench_codec_speed.py [--repeats 5] [--json out.json]
        [--weights f64=src/slidepress/weights/codec-he-shallow]   # the default before
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from common import TILES_DIR, CpuMeter, git_commit

RUNS = (("learned", 5, {}), ("learned", 5, {"guard": False}),
        ("avif", 60, {"numthreads": 2}), ("jpegxl", 80, {"numthreads": 2}))  # fmt: skip


def label_of(name: str, params: dict) -> str:
    tag = f"[{params['tag']}]" if "tag" in params else ""
    return name + tag + ("-noguard" if params.get("guard") is False else "")


def runs_with(weights: dict[str, str]) -> tuple:
    """RUNS, with the learned codec's runs repeated for each other weights folder."""
    extra = tuple(("learned", q, {**p, "weights": folder, "tag": tag})
                  for tag, folder in weights.items()
                  for name, q, p in RUNS if name == "learned")  # fmt: skip
    return RUNS[:2] + extra + RUNS[2:]


def timed(fn) -> tuple[float, float, float]:
    """(wall seconds, this process's CPU seconds, cores' worth of CPU other processes used
    meanwhile)."""
    with CpuMeter() as meter:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, meter.foreign_cores


def speeds(
    tiles: list[np.ndarray], repeats: int, runs: tuple = RUNS
) -> dict[str, dict[str, float]]:
    from slidepress.codecs import get_codec

    n = len(tiles)
    codecs, blobs, jobs = {}, {}, []
    for name, q, params in runs:
        label = label_of(name, params)
        c = codecs[label] = get_codec(name, q, **{k: v for k, v in params.items() if k != "tag"})
        if c.batched:
            blobs[label] = b = c.encode_batch(tiles)
            c.decode_batch(b)  # warm: weights loaded, torch started
            jobs.append((label, "encode", lambda c=c: c.encode_batch(tiles)))
            jobs.append((label, "decode", lambda c=c, b=b: c.decode_batch(b)))
        else:
            blobs[label] = b = [c.encode(t) for t in tiles]
            jobs.append((label, "encode", lambda c=c: [c.encode(t) for t in tiles]))
            jobs.append((label, "decode", lambda c=c, b=b: [c.decode(x) for x in b]))
    best: dict[tuple[str, str], tuple[float, float]] = {}  # (wall, foreign) of the best
    cpu: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        for label, what, fn in jobs:
            wall, used, foreign = timed(fn)
            if (label, what) not in best or wall < best[label, what][0]:
                best[label, what] = (wall, foreign)
            cpu[label, what] = min(cpu.get((label, what), float("inf")), used)
    out: dict[str, dict[str, float]] = {}
    for label in codecs:
        row: dict[str, float] = {"bpp": 8 * sum(map(len, blobs[label])) / (n * 256 * 256)}
        for what in ("encode", "decode"):
            wall, foreign = best[label, what]
            ms = 1e3 * cpu[label, what] / n
            row[f"{what}_tiles_per_s"] = n / wall
            row[f"foreign_cores_{what}"] = foreign
            row[f"{what}_cpu_ms_per_tile"] = ms
            row[f"{what}_tiles_per_s_2_cores"] = 2e3 / ms
        out[label] = row
        print(f"{label:20s} encode {row['encode_tiles_per_s']:6.1f}/s  decode "
              f"{row['decode_tiles_per_s']:6.1f}/s  {row['bpp']:.2f} bpp  | CPU ms/tile "
              f"{row['encode_cpu_ms_per_tile']:6.2f} / {row['decode_cpu_ms_per_tile']:6.2f} "
              f"(2 idle cores: {row['encode_tiles_per_s_2_cores']:6.1f} / "
              f"{row['decode_tiles_per_s_2_cores']:6.1f}/s)  | other processes "
              f"{row['foreign_cores_encode']:.2f} / {row['foreign_cores_decode']:.2f} cores",
              flush=True)  # fmt: skip
    return out


def decoder_profile(
    tiles: list[np.ndarray], repeats: int, weights: str | None = None
) -> dict[str, float]:
    """CPU ms per tile of each decoding stage, one tile at a time on one thread (median)."""
    from slidepress.codecs import get_codec
    from slidepress.codecs.learned import entropy
    from slidepress.codecs.learned.runtime import ALIGN, single_threaded_blas

    c = get_codec("learned", 5, guard=False, **({"weights": weights} if weights else {}))
    m = c.model
    parsed = [m._parse(b) for b in c.encode_batch(tiles)]
    clock = time.thread_time
    samples: dict[str, list[float]] = {}
    with single_threaded_blas():
        for _ in range(max(1, repeats // 2)):
            for q16, h, w, words in parsed:
                t = [clock()]
                dec = entropy.Decoder(m.tables, words)
                z = dec.z(m.config.z, h // ALIGN, w // ALIGN).transpose(1, 2, 0)[None]
                t.append(clock())
                mu, idx = m.entropy_params(z)
                t.append(clock())
                sym = np.ascontiguousarray(dec.y(idx[0].transpose(2, 0, 1)).transpose(1, 2, 0))
                sym = sym[None]
                t.append(clock())
                m.synthesize(sym, mu, q16)
                t.append(clock())
                for k, name in enumerate(("z_entropy", "hyper_synthesis", "y_entropy",
                                          "synthesis")):  # fmt: skip
                    samples.setdefault(name, []).append(t[k + 1] - t[k])
                x = z
                for i, layer in enumerate(m.hyper_fast):
                    t0 = clock()
                    x = layer(x)
                    samples.setdefault(f"  hyper.{i} ({layer.dtype})", []).append(clock() - t0)
        x = np.zeros((1, 32, 32, m.config.m))
        # the layers' cost does not depend on the values (kept within the input's clip)
        x[..., ::3] = np.broadcast_to(np.minimum(3000.0, m.synth_in_bound), x.shape[-1:])[::3]
        for _ in range(repeats):
            y = x
            for i, layer in enumerate(m.synth_fast):
                t0 = clock()
                y = layer(y)
                samples.setdefault(f"  synth.{i} ({layer.dtype})", []).append(clock() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-profile", action="store_true", help="speeds only (older code too)")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=FOLDER",
                    help="also time the learned codec with these weights")  # fmt: skip
    args = ap.parse_args()
    weights = dict(w.split("=", 1) for w in args.weights)

    import torch

    from slidepress.codecs.learned import runtime
    from slidepress.synthetic import stress_tiles as stress

    torch.set_num_threads(2)
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES_DIR.glob("*.png"))]
    tiles = (stress.he_crops(imgs, per_image=4) * 8)[:32]
    threads = runtime.decode_threads() if hasattr(runtime, "decode_threads") else None
    print(f"{len(tiles)} tiles of 256 px, {os.cpu_count()} CPUs, learned decode on "
          f"{threads or 'BLAS'} threads, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    out: dict = {"commit": git_commit(), "cpus": os.cpu_count(), "decode_threads": threads}
    out["weights"] = weights
    out |= speeds(tiles, args.repeats, runs_with(weights))
    avif = out["avif"]
    for label in ["learned", *(f"learned[{t}]" for t in weights)]:
        lrn = out[label]
        r = out[f"{label}_decode_vs_avif"] = {
            "ratio": lrn["decode_tiles_per_s"] / avif["decode_tiles_per_s"],
            "ratio_cpu": avif["decode_cpu_ms_per_tile"] / lrn["decode_cpu_ms_per_tile"],
        }
        print(f"{label} decode / AVIF decode: {r['ratio']:.3f} (wall), {r['ratio_cpu']:.3f} "
              "(CPU)")  # fmt: skip
    if not args.no_profile:
        for tag, folder in {"": None, **weights}.items():
            label = f"learned[{tag}]" if tag else "learned"
            parts = decoder_profile(tiles[:8], args.repeats, folder)
            out[f"{label}_decode_cpu_ms_per_tile"] = parts
            print(f"{label} decode, CPU ms per tile on one thread:")
            for k, v in parts.items():
                print(f"  {k:28s} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
