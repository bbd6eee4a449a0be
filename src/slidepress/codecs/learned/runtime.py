"""Encoding and decoding tiles with a shipped learned-codec weights folder.

Bitstream of one tile (little-endian):
    b"SL" | version u8 | quality u16 (in 1/16 levels) | height u16 | width u16 | ANS words u32...
The tile is padded (edge-replicated) to a multiple of 32 px for the transforms and cropped
back after decoding, so any tile size works (container edge tiles, odd sizes).

Decoding uses only integers and shipped tables (exact.py, entropy.py) read from the weights
folder by weights_folder.py: the same bytes give the same pixels on every machine, process and
thread count, and a base install (numpy + constriction, no torch) decodes. Encoding runs the
float analysis in torch (imported only to encode); tiles are processed in batches for speed.

Speed: the layers run as exact float32/float64 matrix products (exact.FastLayer, bounds proven
when the weights load). A batch is decoded a tile at a time on `decode_threads()` threads, each
tile from entropy decoding to pixels (its working arrays stay in the core's cache), with
numpy's BLAS held to one thread meanwhile (the tiles are the parallelism: a BLAS thread pool
spinning next to the tile threads oversubscribes the cores). Thread counts change the speed,
never a pixel.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from ... import zoo
from ...errors import CodecError
from . import entropy
from .exact import run_fast
from .weights_folder import (
    ENCODER_FILE,
    FORMAT,
    GAIN_FRAC,
    QUALITY_STEPS,
    IntDecoder,
    config_of,
)

MAGIC, VERSION = b"SL", 1
HEADER = struct.Struct("<2sBHHH")
ALIGN = 32  # total stride of analysis + hyper-analysis
DECODE_THREADS_ENV = "SLIDEPRESS_DECODE_THREADS"
T = TypeVar("T")
R = TypeVar("R")


class LearnedModel:
    """A weights folder, loaded once: integer decoder always, torch encoder on first encode."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        missing = [f for f in FORMAT.needs if not (folder / f).is_file()]
        if missing:
            raise CodecError(f"{folder}: not a learned-codec weights folder (missing {missing})")
        self.folder = folder
        self.config = config_of(folder)
        self.weights_sha256 = zoo.weights_sha256(folder, FORMAT)
        dec = IntDecoder.load(folder)
        self.hyper, self.synth = dec.hyper, dec.synth
        self.mu_frac, self.synth_in_frac = dec.mu_frac, dec.synth_in_frac
        self.thresholds = dec.scale_thresholds
        self.inv_gain = dec.inv_gain  # (levels, M) at 2^-GAIN_FRAC
        self.tables = dec.tables
        self.z_bound = dec.z_bound
        self.synth_in_bound = dec.synth_in_bound  # the synthesis input's clip
        try:  # the fast exact layers, their exactness proven here from the weights
            self.hyper_fast, self.synth_fast = dec.fast_layers()
        except ValueError as e:
            raise CodecError(f"{folder}: decoder layers are not exact ({e})") from None
        self._encoder = None
        self._lut: tuple[int, np.ndarray] | None = None

    @property
    def levels(self) -> int:
        return self.inv_gain.shape[0]

    # -- shared by encoder and decoder (integers only) ---------------------------------------
    def quality_step(self, quality: float) -> int:
        q = int(round(float(quality) * QUALITY_STEPS))
        return int(np.clip(q, QUALITY_STEPS, self.levels * QUALITY_STEPS))

    def inverse_gain(self, q16: int) -> np.ndarray:
        """Per-channel inverse gain at 2^-(GAIN_FRAC + 4), interpolated in integers."""
        lo, t = divmod(q16 - QUALITY_STEPS, QUALITY_STEPS)
        hi = min(lo + 1, self.levels - 1)
        return self.inv_gain[lo] * (QUALITY_STEPS - t) + self.inv_gain[hi] * t

    def entropy_params(self, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z (N, h, w, Z) integers -> mu (fixed point, 2^-mu_frac) and scale indices,
        (N, H, W, M) each; exact."""
        if z_hat.size and np.abs(z_hat).max() > self.z_bound:  # the tables' range
            raise ValueError("hyper-latents outside the entropy tables' range")
        out = run_fast(self.hyper_fast, z_hat)
        mu, log_scale = np.split(out, 2, axis=3)
        # log_scale holds integers: a lookup table gives searchsorted(thresholds, v, "right")
        # exactly, as uint8 (3x faster here, and uint8 makes the symbol grouping a radix sort)
        lo, lut = self._scale_lut()
        v = np.clip(log_scale, lo, lo + len(lut) - 1).astype(np.int64) - lo
        return mu, lut[v]

    def _scale_lut(self) -> tuple[int, np.ndarray]:
        if self._lut is None:
            lo, hi = int(self.thresholds[0]) - 1, int(self.thresholds[-1]) + 1
            values = np.arange(lo, hi + 1, dtype=np.float64)
            idx = np.searchsorted(self.thresholds, values, side="right").astype(np.uint8)
            self._lut = (lo, idx)
        return self._lut

    def synthesis_input(self, y_sym: np.ndarray, mu: np.ndarray, q16: int) -> np.ndarray:
        """Symbols + means -> the synthesis input (integers at 2^-synth_in_frac, clipped to
        +-synth_in_bound), exact."""
        # x = floor((y_sym * 2^mu_frac + mu) * ig * 2^-shift + 1/2): each product below
        # is an integer times a power of two under 2^53, so the sum is exact as written
        ig = self.inverse_gain(q16)  # 2^-(GAIN_FRAC + 4)
        shift = self.mu_frac + GAIN_FRAC + 4 - self.synth_in_frac
        g = ig * 2.0**-shift
        x = np.multiply(y_sym, g * 2.0**self.mu_frac, dtype=np.float64)
        x += mu * g
        x += 0.5
        np.floor(x, out=x)
        return np.clip(x, -self.synth_in_bound, self.synth_in_bound, out=x)

    def synthesize(
        self, y_sym: np.ndarray, mu: np.ndarray, q16: int, threads: int | None = None
    ) -> np.ndarray:
        """Symbols (N, H, W, M) + means -> pixels (N, sH, sW, 3) uint8 (s: the latent stride);
        exact (tiles on `threads` threads, as `map_tiles`)."""
        x = self.synthesis_input(y_sym, mu, q16)
        if len(x) == 1:
            return np.ascontiguousarray(run_fast(self.synth_fast, x))
        # a tile at a time (the result is the same for any grouping), on several threads
        tiles = map_tiles(lambda t: run_fast(self.synth_fast, t[None])[0], list(x), threads)
        return np.stack(tiles)

    # -- encoder -------------------------------------------------------------------------------
    def _torch_encoder(self):
        if self._encoder is None:
            import torch
            from safetensors.torch import load_file

            from .model import CodecNet

            net = CodecNet(self.config)
            state = {k: v.float() for k, v in load_file(str(self.folder / ENCODER_FILE)).items()}
            missing = net.load_state_dict(state, strict=False)
            bad = [k for k in missing.missing_keys if k.startswith(("analysis", "hyper_analysis"))]
            if bad:
                raise CodecError(f"{self.folder}: encoder weights incomplete ({bad[:3]})")
            net.eval()
            self._encoder = (torch, net)
        return self._encoder

    def encode_batch(self, tiles: list[np.ndarray], quality: float) -> list[bytes]:
        """Tiles of one size (H, W, 3) uint8 -> one bitstream each."""
        return self.encode_batch_pixels(tiles, quality, pixels=False)[0]

    def encode_batch_pixels(
        self, tiles: list[np.ndarray], quality: float, pixels: bool = True
    ) -> tuple[list[bytes], list[np.ndarray] | None]:
        """Bitstreams and (with `pixels`) the pixels a decoder will give for them: the exact
        integer synthesis of the (table-clipped) symbols the bitstream carries, so equal to
        `decode_batch(bitstreams)` without entropy-decoding them (the per-tile guard's
        distortion)."""
        if not tiles:
            return [], []
        h, w = tiles[0].shape[:2]
        if any(t.shape != tiles[0].shape for t in tiles):
            raise ValueError("encode_batch takes tiles of one size")
        torch, net = self._torch_encoder()
        q16 = self.quality_step(quality)
        ig = self.inverse_gain(q16)
        gain = torch.from_numpy(2.0 ** (GAIN_FRAC + 4) / ig).float()[None, :, None, None]
        batch = np.stack([_pad(t) for t in tiles])
        with torch.inference_mode():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
            y = net.analysis(x) * gain
            z = net.hyper_analysis(y).round()
        z_sym = z.permute(0, 2, 3, 1).numpy().astype(np.int64)
        rz = self.tables.z_radius
        z_sym = np.clip(z_sym, -rz, rz)
        y_g = y.permute(0, 2, 3, 1).double().numpy()
        header = HEADER.pack(MAGIC, VERSION, q16, h, w)

        def one(i: int) -> tuple[bytes, np.ndarray | None]:
            """The integer side of tile i (as the decoder will compute it): its entropy
            parameters, symbols, bitstream and, with `pixels`, its synthesis."""
            mu, idx = self.entropy_params(z_sym[i : i + 1])
            y_sym = np.round(y_g[i : i + 1] - mu * 2.0**-self.mu_frac).astype(np.int64)
            words, _ = entropy.encode(
                self.tables, z_sym[i].transpose(2, 0, 1), y_sym[0].transpose(2, 0, 1),
                idx[0].transpose(2, 0, 1),
            )  # fmt: skip
            blob = header + words.astype("<u4").tobytes()
            if not pixels:
                return blob, None
            r = self.tables.y_radius[idx]  # what entropy.encode clips to, and a decoder reads
            rec = self.synthesize(np.clip(y_sym, -r, r), mu, q16)
            return blob, np.ascontiguousarray(rec[0, :h, :w])

        done = map_tiles(one, list(range(len(tiles))))
        blobs = [b for b, _ in done]
        return blobs, ([p for _, p in done] if pixels else None)  # type: ignore[misc]

    # -- decoder -------------------------------------------------------------------------------
    def decode_batch(self, blobs: list[bytes], threads: int | None = None) -> list[np.ndarray]:
        """Bitstreams -> tiles, each decoded on its own (from the entropy decoder to pixels) on
        `threads` threads (default `decode_threads()`); the pixels do not depend on it."""
        parsed = [self._parse(b) for b in blobs]  # every header checked before any work
        return map_tiles(self._decode_one, parsed, threads)

    def _decode_one(self, parsed: tuple[int, int, int, np.ndarray]) -> np.ndarray:
        q16, h, w, words = parsed
        zh, zw = _ceil(h) // ALIGN, _ceil(w) // ALIGN
        dec = entropy.Decoder(self.tables, words)
        z = dec.z(self.config.z, zh, zw).transpose(1, 2, 0)[None]
        mu, idx = self.entropy_params(z)
        # channels last, in memory too (a transposed view made the synthesis input 4x slower)
        sym = np.ascontiguousarray(dec.y(idx[0].transpose(2, 0, 1)).transpose(1, 2, 0))
        return np.ascontiguousarray(self.synthesize(sym[None], mu, q16)[0, :h, :w])

    def _parse(self, data: bytes) -> tuple[int, int, int, np.ndarray]:
        if len(data) < HEADER.size or (len(data) - HEADER.size) % 4:
            raise CodecError("learned: truncated tile")
        magic, version, q16, h, w = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise CodecError(f"learned: not a tile of this codec (magic {magic!r} v{version})")
        if not (QUALITY_STEPS <= q16 <= self.levels * QUALITY_STEPS and 0 < h and 0 < w):
            raise CodecError(f"learned: implausible tile header (q {q16}, {h} x {w})")
        return q16, h, w, np.frombuffer(data, "<u4", offset=HEADER.size).astype(np.uint32)


def _ceil(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _pad(tile: np.ndarray) -> np.ndarray:
    h, w = tile.shape[:2]
    ph, pw = _ceil(h) - h, _ceil(w) - w
    if ph or pw:
        tile = np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(tile)


def map_tiles(fn: Callable[[T], R], items: list[T], threads: int | None = None) -> list[R]:
    """[fn(item) for item in items] on `threads` threads (default `decode_threads()`), with
    numpy's BLAS on one thread meanwhile: a tile's products are small, and a BLAS thread pool
    spinning next to these threads oversubscribes the cores."""
    threads = decode_threads() if threads is None else max(1, int(threads))
    threads = min(threads, len(items))
    with single_threaded_blas():
        if threads <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(threads, thread_name_prefix="slidepress-learned") as pool:
            return list(pool.map(fn, items))


def decode_threads() -> int:
    """Threads a batch decode uses: $SLIDEPRESS_DECODE_THREADS, else the CPUs this process may
    run on (at most 8)."""
    env = os.environ.get(DECODE_THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise CodecError(f"{DECODE_THREADS_ENV}={env!r}: not a number of threads") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


_BLAS_LOCK = threading.Lock()
_blas_users = 0
_blas_restore = None
_blas_controller = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread while tiles are coded by `map_tiles` (calls running at once
    share one limit; the last to finish restores the previous thread counts; other numpy
    users in the process meanwhile get one BLAS thread too). Without threadpoolctl (a
    scikit-learn dependency) it changes nothing."""
    global _blas_users, _blas_restore, _blas_controller
    with _BLAS_LOCK:
        if _blas_users == 0:
            try:
                if _blas_controller is None:
                    from threadpoolctl import ThreadpoolController

                    _blas_controller = ThreadpoolController()
                _blas_restore = _blas_controller.limit(limits=1, user_api="blas")
            except Exception:  # no threadpoolctl, or a BLAS it cannot drive: just slower
                _blas_restore = None
        _blas_users += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_users -= 1
            if _blas_users == 0 and _blas_restore is not None:
                _blas_restore.restore_original_limits()
                _blas_restore = None
