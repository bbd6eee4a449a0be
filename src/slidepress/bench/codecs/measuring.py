"""One codec at one quality on one input's tiles: bytes, distortion and time per tile.

Every tile is encoded and decoded once: rate from the real coded byte counts, PSNR from the
pooled MSE, SSIM / MS-SSIM averaged over tiles, feature and embedding similarity (when the
`Similarity` asks for them) averaged over tiles, all scored by `metrics.similarity`; encode
and decode wall time per tile (median of single calls, after a warm-up call per codec and
quality; metrics are computed afterwards). A batched codec (`Codec.batched`: a neural
network) is called the way the pipeline calls it, `encode_batch` / `decode_batch` on blocks of
`BATCH` tiles, and its time per tile is each block's wall time over its tiles (median over
blocks): timed one tile per call it would pay the whole batch overhead per tile, and its speed
column would be understated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ...codecs import Codec, get_codec
from ...errors import CodecError, SlidepressError
from ...metrics import RAW_BPP, bits_per_pixel, compression_ratio
from ...progress import Advance
from .inputs import BenchInput
from .similarity import Similarity

_WARM_UP = np.full((32, 32, 3), 128, np.uint8)
BATCH = 32  # tiles per encode_batch / decode_batch call of a batched codec (the pipeline's)


def make_codec(name: str, quality: float, threads: int) -> tuple[Codec, bool]:
    """The codec with `numthreads=threads` where its encoder takes it (libjxl, libwebp,
    libavif, OpenJPEG), else as is; warmed up by one call each way. Returns (codec, whether
    the thread count was applied)."""
    codec = get_codec(name, quality, numthreads=threads)
    try:
        data = codec.encode(_WARM_UP)
        applied = True
    except TypeError:  # this encoder has no numthreads
        codec = get_codec(name, quality)
        data = codec.encode(_WARM_UP)
        applied = False
    codec.decode(data)
    return codec, applied


def measure(
    inp: BenchInput,
    codec: Codec,
    advance: Advance | None = None,
    similarity: Similarity | None = None,
) -> dict[str, Any]:
    """Encode and decode every tile of `inp` once: rate, quality, and the median time per
    tile (robust to scheduler hiccups, which dominate sub-millisecond calls); a batched codec
    per block of BATCH tiles, its torch on the codec's `numthreads` while it is timed."""
    n_bytes, max_err = 0, 0
    enc_s, dec_s, decoded = [], [], []
    q = f"{codec.name} q{codec.quality:g}"
    step = BATCH if codec.batched else 1
    threads = codec.params.get("numthreads") if codec.batched else None
    for i in range(0, len(inp.tiles), step):
        tiles = list(inp.tiles[i : i + step])
        with torch_threads(threads):
            t0 = time.perf_counter()
            try:
                blobs = codec.encode_batch(tiles) if codec.batched else [codec.encode(tiles[0])]
            except SlidepressError:
                raise
            except Exception as e:
                raise CodecError(f"{q}: cannot encode a tile of {inp.name}: {e}") from None
            t1 = time.perf_counter()
            outs = codec.decode_batch(blobs) if codec.batched else [codec.decode(blobs[0])]
            t2 = time.perf_counter()
        enc_s.append((t1 - t0) / len(tiles))
        dec_s.append((t2 - t1) / len(tiles))
        for t, data, out in zip(tiles, blobs, outs, strict=True):
            if out.shape != t.shape or out.dtype != np.uint8:
                raise CodecError(f"{q}: decoded {out.shape} {out.dtype}, expected {t.shape} uint8")
            n_bytes += len(data)
            max_err = max(max_err, int(np.abs(out.astype(np.int16) - t).max()))
            decoded.append(out)
        if advance:
            advance(len(tiles))
    n, h, w = inp.tiles.shape[:3]
    scores = (similarity or Similarity()).score(inp, decoded)
    assert scores.pixels is not None
    s = scores.pixels.summary()
    bpp = bits_per_pixel(n_bytes, n * h * w)
    return {
        "n_tiles": n, "tile_h": h, "tile_w": w, "pixels": n * h * w, "bytes": n_bytes,
        "bpp": bpp, "ratio_raw": compression_ratio(bpp, RAW_BPP), "source_bpp": inp.source_bpp,
        "ratio_source": compression_ratio(bpp, inp.source_bpp), "psnr": s["psnr"],
        "ssim": s["ssim"], "ms_ssim": s["ms_ssim"], "ms_ssim_db": s["ms_ssim_db"],
        "ms_ssim_scales": s["ms_ssim_scales_min"], "max_abs_error": max_err,
        "encode_ms": 1e3 * float(np.median(enc_s)), "decode_ms": 1e3 * float(np.median(dec_s)),
        "timed_batch": step,
        **Similarity.columns(scores),
    }  # fmt: skip


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch on `n` threads inside (a batched codec's encoder while it is timed); None: as
    is."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def single_thread_torch() -> Iterator[None]:
    """Metrics on one torch thread while codecs are timed: idle OpenMP workers would spin
    between the timed calls, and on a busy machine 2 threads ran SSIM 5x slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
