"""Encoding and decoding tiles with a shipped learned-codec weights folder.

Bitstream of one tile (little-endian):
    b"SL" | version u8 | quality u16 (in 1/16 levels) | height u16 | width u16 | ANS words u32...
The tile is padded (edge-replicated) to a multiple of 32 px for the transforms and cropped
back after decoding, so any tile size works (container edge tiles, odd sizes).

Decoding uses only integers and shipped tables (exact.py, entropy.py) read from the weights
folder by weights_folder.py: the same bytes give the same pixels on every machine, process and
thread count, and a base install (numpy + constriction, no torch) decodes. Encoding runs the
float analysis in torch (imported only to encode); tiles are processed in batches for speed.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ... import zoo
from ...errors import CodecError
from . import entropy
from .exact import run
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
SYNTH_CHUNK = 4


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
        out = run(self.hyper, z_hat.astype(np.float64))
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

    def synthesize(self, y_sym: np.ndarray, mu: np.ndarray, q16: int) -> np.ndarray:
        """Symbols (N, H, W, M) + means -> pixels (N, sH, sW, 3) uint8 (s: the latent stride);
        exact."""
        y_hat = y_sym * 2.0**self.mu_frac + mu  # 2^-mu_frac
        ig = self.inverse_gain(q16)  # 2^-(GAIN_FRAC + 4)
        shift = self.mu_frac + GAIN_FRAC + 4 - self.synth_in_frac
        x = np.floor(y_hat * ig * 2.0**-shift + 0.5)
        np.clip(x, -(2.0**15), 2.0**15, out=x)
        # a few tiles at a time: the layers' working arrays stay in cache (4 tiles: 1.7x
        # faster than 36 at once on 2 cores; the result is the same either way)
        out = np.concatenate(
            [run(self.synth, x[i : i + SYNTH_CHUNK]) for i in range(0, len(x), SYNTH_CHUNK)]
        )
        return np.clip(out, 0, 255).astype(np.uint8)

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
        mu, idx = self.entropy_params(z_sym)
        y_g = y.permute(0, 2, 3, 1).double().numpy()
        y_sym = np.round(y_g - mu * 2.0**-self.mu_frac).astype(np.int64)
        out = []
        for i in range(len(tiles)):
            words, _ = entropy.encode(
                self.tables, z_sym[i].transpose(2, 0, 1), y_sym[i].transpose(2, 0, 1),
                idx[i].transpose(2, 0, 1),
            )  # fmt: skip
            out.append(HEADER.pack(MAGIC, VERSION, q16, h, w) + words.astype("<u4").tobytes())
        if not pixels:
            return out, None
        r = self.tables.y_radius[idx]  # what entropy.encode clips to, and a decoder reads
        rec = self.synthesize(np.clip(y_sym, -r, r).astype(np.float64), mu, q16)
        return out, [np.ascontiguousarray(rec[i, :h, :w]) for i in range(len(tiles))]

    # -- decoder -------------------------------------------------------------------------------
    def decode_batch(self, blobs: list[bytes]) -> list[np.ndarray]:
        """Bitstreams -> tiles; tiles with the same size and quality are synthesised together."""
        parsed = [self._parse(b) for b in blobs]
        out: list[np.ndarray | None] = [None] * len(blobs)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, (q16, h, w, _) in enumerate(parsed):
            groups.setdefault((q16, h, w), []).append(i)
        for (q16, h, w), members in groups.items():
            zh, zw = _ceil(h) // ALIGN, _ceil(w) // ALIGN
            # hyper-latents of every tile first, so the hyper-synthesis runs once per batch
            decoders = [entropy.Decoder(self.tables, parsed[i][3]) for i in members]
            z = np.stack([d.z(self.config.z, zh, zw).transpose(1, 2, 0) for d in decoders])
            mu, idx = self.entropy_params(z)
            syms = np.stack(
                [d.y(idx[k].transpose(2, 0, 1)).transpose(1, 2, 0) for k, d in enumerate(decoders)]
            )
            pixels = self.synthesize(syms.astype(np.float64), mu, q16)
            for k, i in enumerate(members):
                out[i] = np.ascontiguousarray(pixels[k, :h, :w])
        return out  # type: ignore[return-value]

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
