"""The learned codec behind the Codec interface (`--codec learned`).

Quality is the rate level of the one variable-rate model, 1 (smallest files) to 8, in steps
of 1/16. Tiles are coded in batches (`encode_batch` / `decode_batch`): the pipeline hands a
block of tiles at once. `describe()` carries the model name, version and weights hash, which
containers record and check before decoding. The default weights are the first zoo.py declares
for "learned" (codec-he-shallow-f32); a container coded with other weights slidepress holds
(codec-he-shallow, the default before) finds them by that hash (store/manifest.py).

**Per-tile guard** (on by default; `guard=False` turns it off): every tile is also coded with
JPEG-XL (libjxl effort 3) at a quality mapped from the learned quality (`GUARD_JXL_QUALITY`,
calibrated on held-out H&E so that both give about the same PSNR), and the tile keeps the
bytes with the lower rate-distortion cost bits + lambda * SSE / 3 (lambda: the model's own
training trade-off at that quality, bpp + lambda * MSE). Why a Lagrangian cost rather than
"smaller at no lower PSNR": a slide's PSNR is the pooled MSE, so the sum over tiles of
D + lambda * R is what decides the slide's operating point, and picking each tile's minimum
lands on the lower convex hull of the two codecs; "smaller at >= PSNR" rejects a fallback
that is both much smaller and slightly worse (noise tiles) and never mixes. A fallback tile
is the JPEG-XL codestream as libjxl wrote it, recognised by JPEG-XL's own signature (FF 0A;
the container form's too), a learned one keeps its `b"SL"` header (runtime.py): no marker
byte to pay (a flat tile is ~80 bytes), containers need no format change, and tiles written
before the guard decode as before.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ... import zoo
from ...errors import CodecError
from ..base import Codec, check_tile

WEIGHTS = zoo.default_path("codec", "learned")  # the first zoo.py declares for "learned"
# a guard tile is a JPEG-XL codestream (or, from another libjxl, its container form)
GUARD_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
# JPEG-XL quality per learned level 1..8 (fractional qualities interpolate): about the learned
# codec's PSNR on held-out H&E (256 px tiles; libjxl effort 3)
GUARD_JXL_QUALITY = (50.0, 65.0, 77.0, 83.0, 87.0, 91.0, 93.0, 95.0)
GUARD_EFFORT = 3
GUARD_SMALL = 2048  # bytes: a fallback this small is a near-flat tile (see _guarded)
_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def load_model(folder: str | Path | None = None):
    """One LearnedModel per weights folder per process (thread-safe)."""
    from .runtime import LearnedModel

    key = str(Path(folder or WEIGHTS).resolve())
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = LearnedModel(key)
        return _MODELS[key]


class LearnedCodec(Codec):
    """slidepress's learned H&E codec: hyperprior + shallow synthesis, exact integer decode,
    with a per-tile JPEG-XL guard."""

    name = "learned"
    suffix = ".slc"
    quality_range = (1, 8)
    default_quality = 5
    # bench: the 8 levels span ~27-35 dB on held-out H&E (JPEG q30-95's range, codecs/base.py)
    sweeps = {"bench": (1, 2, 3, 4, 5, 6, 7, 8), "downstream": (1, 3, 5, 8)}
    library = "slidepress"
    batched = True

    def __init__(
        self,
        quality: float | None = None,
        weights: str | None = None,
        guard: bool = True,
        **params: Any,
    ):
        if weights is not None:
            params["weights"] = str(weights)
        if not guard:
            params["guard"] = False  # recorded only when off: the default stays as before
        super().__init__(quality, **params)
        self.model = load_model(weights)
        self.guard = bool(guard)
        self.guard_counts = {"learned": 0, "jpegxl": 0}  # tiles coded by this instance

    def encode(self, tile: np.ndarray) -> bytes:
        return self.encode_batch([tile])[0]

    def decode(self, data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
        return self.decode_batch([data], shape)[0]

    def encode_batch(self, tiles: list[np.ndarray]) -> list[bytes]:
        tiles = [check_tile(t) for t in tiles]
        out: list[bytes | None] = [None] * len(tiles)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tiles):
            by_shape.setdefault(t.shape, []).append(i)
        for idx in by_shape.values():
            group = [tiles[i] for i in idx]
            blobs, pixels = self.model.encode_batch_pixels(group, self.quality, self.guard)
            if pixels is not None:
                blobs = [self._guarded(*a) for a in zip(group, blobs, pixels, strict=True)]
            for i, data in zip(idx, blobs, strict=True):
                out[i] = data
        return out  # type: ignore[return-value]

    # -- the guard ----------------------------------------------------------------------------
    def guard_lambda(self) -> float:
        """The model's rate-distortion trade-off at this quality (bpp + lambda * MSE on
        0-255, as trained): log-linear between the levels' lambdas."""
        lams = np.log(np.asarray(self.model.config.lambdas, np.float64))
        q = float(np.clip(self.quality, 1, len(lams)))
        return float(np.exp(np.interp(q, np.arange(1, len(lams) + 1), lams)))

    def guard_jxl_quality(self) -> float:
        levels = self.model.levels
        q = float(np.clip(self.quality, 1, levels))
        at = 1 + (q - 1) * (len(GUARD_JXL_QUALITY) - 1) / max(levels - 1, 1)
        return float(np.interp(at, np.arange(1, len(GUARD_JXL_QUALITY) + 1), GUARD_JXL_QUALITY))

    def _guarded(self, tile: np.ndarray, learned: bytes, pixels: np.ndarray) -> bytes:
        import imagecodecs

        lam = self.guard_lambda()
        best, best_cost = learned, 8 * len(learned) + lam * _sse(tile, pixels) / 3
        first = self.guard_jxl_quality()
        ladder = [first]
        for q in ladder:
            jxl = bytes(imagecodecs.jpegxl_encode(tile, level=q, effort=GUARD_EFFORT))
            if not is_guard_tile(jxl):  # never expected: libjxl writes a codestream
                break
            if q == first and len(jxl) <= GUARD_SMALL:
                # a near-flat tile: libjxl's rate there is erratic in the quality (a flat
                # tile can cost more at q70 than at q90), so every ladder quality is tried
                # and the cheapest kept. The same candidates at every quality make this
                # tile's rate monotonic in it (a larger lambda never picks fewer bits).
                ladder += [v for v in GUARD_JXL_QUALITY if v != first]
            cost = 8 * len(jxl)
            if cost < best_cost:  # the distortion is needed only when the rate can't decide
                cost += lam * _sse(tile, _decode_fallback(jxl, tile.shape)) / 3
                if cost < best_cost:
                    best, best_cost = jxl, cost
        self.guard_counts["learned" if best is learned else "jpegxl"] += 1
        return best

    def decode_batch(
        self, blobs: list[bytes], shape: tuple[int, int, int] | None = None
    ) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(blobs)
        learned = [i for i, b in enumerate(blobs) if not is_guard_tile(b)]
        for i, b in enumerate(blobs):
            if is_guard_tile(b):
                out[i] = _decode_fallback(bytes(b), shape)
        if shape is not None:  # refuse other sizes from the header, before synthesis
            from .runtime import HEADER

            for i in learned:
                b = blobs[i]
                if len(b) >= HEADER.size:
                    _, _, _, h, w = HEADER.unpack_from(b)
                    if (h, w, 3) != tuple(shape):
                        raise CodecError(f"{self.name}: tile is not {shape} (header {h} x {w})")
        if learned:
            try:
                pixels = self.model.decode_batch([blobs[i] for i in learned])
            except CodecError:
                raise
            except Exception as e:  # damaged streams: constriction / numpy errors
                raise CodecError(f"{self.name}: cannot decode tile ({e})") from None
            for i, p in zip(learned, pixels, strict=True):
                out[i] = p
        return out  # type: ignore[return-value]

    def library_version(self) -> str:
        from importlib.metadata import version

        import constriction  # noqa: F401

        v = f"constriction {version('constriction')}"
        if self.guard:  # the fallback's bytes depend on libjxl
            import imagecodecs

            v += f", libjxl {imagecodecs.version(dict)['libjxl']}"
        return v

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        cfg = self.model.config
        d["model"] = {"name": cfg.name, "version": cfg.version,
                      "weights_sha256": self.model.weights_sha256}  # fmt: skip
        if self.guard:
            d["guard"] = {
                "fallback": "jpegxl", "effort": GUARD_EFFORT,
                "jpegxl_quality": self.guard_jxl_quality(), "lambda": self.guard_lambda(),
                "rule": "min bits + lambda * SSE / 3", "tiles": dict(self.guard_counts),
            }  # fmt: skip
        return d


def _sse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.int32) - b
    return float(np.einsum("ijk,ijk->", d, d, dtype=np.int64))


def is_guard_tile(data: bytes) -> bool:
    """Whether a `learned` tile is the guard's JPEG-XL (else the learned bitstream)."""
    return bytes(data[:12]).startswith(GUARD_SIGNATURES)


def _decode_fallback(data: bytes, shape: tuple[int, int, int] | None) -> np.ndarray:
    import imagecodecs

    out = None if shape is None else np.empty(shape, np.uint8)
    try:
        tile = imagecodecs.jpegxl_decode(data, out=out)
    except Exception as e:
        if shape is not None and "out.shape" in str(e):
            raise CodecError(f"learned: tile is not {shape} ({e})") from None
        raise CodecError(f"learned: cannot decode guard tile ({e})") from None
    if tile.ndim == 2:
        tile = np.repeat(tile[..., None], 3, axis=2)
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
        raise CodecError(f"learned: guard tile decoded to {tile.shape} {tile.dtype}")
    return tile
