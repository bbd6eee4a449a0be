"""One codec at one quality on one input's tiles: bytes, distortion and time per tile.

Every tile is encoded and decoded once: rate from the real coded byte counts, PSNR from the
pooled MSE, SSIM / MS-SSIM averaged over tiles, feature and embedding similarity (when the
`Similarity` asks for them) averaged over tiles, all scored by `metrics.similarity`; encode
and decode wall time per tile (median of single calls, after a warm-up call per codec and
quality; metrics are computed afterwards).
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
    tile (robust to scheduler hiccups, which dominate sub-millisecond calls)."""
    n_bytes, max_err = 0, 0
    enc_s, dec_s, decoded = [], [], []
    q = f"{codec.name} q{codec.quality:g}"
    for t in inp.tiles:
        t0 = time.perf_counter()
        try:
            data = codec.encode(t)
        except SlidepressError:
            raise
        except Exception as e:
            raise CodecError(f"{q}: cannot encode a tile of {inp.name}: {e}") from None
        t1 = time.perf_counter()
        out = codec.decode(data)
        t2 = time.perf_counter()
        if out.shape != t.shape or out.dtype != np.uint8:
            raise CodecError(f"{q}: decoded {out.shape} {out.dtype}, expected {t.shape} uint8")
        n_bytes += len(data)
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
        max_err = max(max_err, int(np.abs(out.astype(np.int16) - t).max()))
        decoded.append(out)
        if advance:
            advance(1)
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
        **Similarity.columns(scores),
    }  # fmt: skip


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
