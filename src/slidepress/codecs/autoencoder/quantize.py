"""Latent quantizers and the lossless coding of their symbols.

Two quantizers turn float latents (C, h, w) into integer symbols, with a static mapping that is
stored with the model (`quantizers.npz` in the bundle, covered by the weights hash), so the
same symbols decode to bit-identical latents everywhere:

- `Int8Quantizer`: per-channel static scale, s = clip(rint(z / scale_c), -127, 127),
  z_hat = s * scale_c (float32). The scale is the channel's largest |z| on training latents
  over 127.
- `KMeansQuantizer` (PathAE's vector quantization): the channels at each position are cut into
  groups of `dim` consecutive channels; each group is replaced by the index of its nearest
  codebook row (squared L2, ties to the lower index), z_hat = codebook[index]. The codebook is
  learned with faiss k-means on training latents; its size K is the rate knob.

Symbols are then coded losslessly with constriction's ANS coder (`Categorical(..., perfect=
False)`) under static probabilities counted on the same training latents (Laplace-smoothed, so
every symbol stays codable): one table per channel for int8, one for the K-means indices.
float16 latents (no quantizer, no entropy coding) are the reference level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CodecError

INT8_MAX = 127
KMEANS_CHUNK = 4096  # vectors per distance block: 4096 x K float32


def _probs(counts: np.ndarray) -> np.ndarray:
    """Laplace-smoothed probabilities of a (..., S) count array (float64, rows sum to 1)."""
    c = np.asarray(counts, np.float64) + 1.0
    return c / c.sum(axis=-1, keepdims=True)


def _model(probs: np.ndarray) -> Any:
    import constriction

    return constriction.stream.model.Categorical(np.asarray(probs, np.float64), perfect=False)


def ans_encode(streams: list[tuple[np.ndarray, Any]]) -> bytes:
    """(symbols, constriction model) pairs -> one ANS stream; decoded in the same order."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    for sym, model in reversed(streams):  # a stack: pushed last-to-first, popped in order
        coder.encode_reverse(np.ascontiguousarray(sym, np.int32).reshape(-1), model)
    return coder.get_compressed().astype("<u4").tobytes()


def ans_decoder(data: bytes) -> Any:
    import constriction

    if len(data) % 4:
        raise CodecError("entropy-coded payload is not whole 32-bit words")
    return constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))


@dataclass
class Int8Quantizer:
    """Per-channel static int8 quantization of (C, h, w) latents."""

    scale: np.ndarray  # (C,) float32
    probs: np.ndarray  # (C, 255) symbol probabilities, symbol s stored as s + 127

    kind = "int8"

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, np.float32)
        self.probs = np.asarray(self.probs, np.float64)
        self._models: list | None = None

    @classmethod
    def fit(cls, latents: np.ndarray) -> Int8Quantizer:
        """Scale = the largest |z| per channel / 127; probabilities counted on `latents`
        (N, C, h, w)."""
        z = np.asarray(latents, np.float32)
        peak = np.abs(z).max(axis=(0, 2, 3))
        scale = (np.maximum(peak, 1e-6) / INT8_MAX).astype(np.float32)
        q = cls(scale, np.ones((z.shape[1], 2 * INT8_MAX + 1)))
        s = q.quantize(z).astype(np.int64) + INT8_MAX
        counts = np.stack([np.bincount(s[:, c].reshape(-1), minlength=2 * INT8_MAX + 1)
                           for c in range(z.shape[1])])  # fmt: skip
        return cls(scale, _probs(counts))

    @property
    def channels(self) -> int:
        return len(self.scale)

    def quantize(self, z: np.ndarray) -> np.ndarray:
        """(..., C, h, w) float -> int8 symbols (same shape)."""
        s = np.rint(np.asarray(z, np.float32) / self.scale[:, None, None])
        return np.clip(s, -INT8_MAX, INT8_MAX).astype(np.int8)

    def dequantize(self, s: np.ndarray) -> np.ndarray:
        return np.asarray(s, np.float32) * self.scale[:, None, None]

    def models(self) -> list[Any]:
        if self._models is None:
            self._models = [_model(p) for p in self.probs]
        return self._models

    def encode(self, s: np.ndarray) -> bytes:
        """(C, h, w) symbols -> bytes."""
        m = self.models()
        return ans_encode([(s[c].astype(np.int32) + INT8_MAX, m[c]) for c in range(len(m))])

    def decode(self, data: bytes, h: int, w: int) -> np.ndarray:
        dec = ans_decoder(data)
        out = np.empty((self.channels, h * w), np.int32)
        for c, m in enumerate(self.models()):
            out[c] = np.asarray(dec.decode(m, h * w)) - INT8_MAX
        return out.reshape(self.channels, h, w).astype(np.int8)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.scale": self.scale, f"{prefix}.probs": self.probs}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> Int8Quantizer:
        return cls(a[f"{prefix}.scale"], a[f"{prefix}.probs"])


@dataclass
class KMeansQuantizer:
    """Vector quantization of (C, h, w) latents in groups of `dim` channels."""

    codebook: np.ndarray  # (K, dim) float32
    probs: np.ndarray  # (K,) index probabilities

    kind = "kmeans"

    def __post_init__(self) -> None:
        self.codebook = np.ascontiguousarray(self.codebook, np.float32)
        self.probs = np.asarray(self.probs, np.float64)
        self._model = None
        self._norms = (self.codebook.astype(np.float64) ** 2).sum(1)

    @property
    def k(self) -> int:
        return self.codebook.shape[0]

    @property
    def dim(self) -> int:
        return self.codebook.shape[1]

    @staticmethod
    def vectors(z: np.ndarray, dim: int) -> np.ndarray:
        """(N, C, h, w) -> (N * C/dim * h * w, dim): consecutive channel groups per position."""
        n, c, h, w = z.shape
        if c % dim:
            raise CodecError(f"k-means: {c} latent channels do not split into groups of {dim}")
        return np.ascontiguousarray(
            z.reshape(n, c // dim, dim, h, w).transpose(0, 1, 3, 4, 2).reshape(-1, dim),
            np.float32,
        )

    @classmethod
    def fit(cls, latents: np.ndarray, k: int, dim: int, seed: int = 0, niter: int = 25
            ) -> KMeansQuantizer:  # fmt: skip
        """faiss k-means on the training latents (N, C, h, w); index probabilities counted on
        the same latents."""
        import faiss

        x = cls.vectors(np.asarray(latents, np.float32), dim)
        if len(x) < k:
            raise CodecError(f"k-means: {len(x)} training vectors for {k} centroids")
        km = faiss.Kmeans(dim, k, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=max(256, len(x) // k + 1))  # fmt: skip
        km.train(x)
        q = cls(km.centroids, np.ones(k))
        counts = np.bincount(q.assign(x), minlength=k)
        return cls(km.centroids, _probs(counts))

    def assign(self, x: np.ndarray) -> np.ndarray:
        """(M, dim) vectors -> (M,) nearest codebook rows (float64 distances, first of ties)."""
        x = np.asarray(x, np.float64)
        c = self.codebook.astype(np.float64)
        out = np.empty(len(x), np.int32)
        for i in range(0, len(x), KMEANS_CHUNK):
            xb = x[i : i + KMEANS_CHUNK]
            d = self._norms[None, :] - 2.0 * xb @ c.T
            out[i : i + KMEANS_CHUNK] = np.argmin(d, axis=1)
        return out

    def quantize(self, z: np.ndarray) -> np.ndarray:
        """(C, h, w) or (N, C, h, w) latents -> indices (N?, C/dim, h, w) int32."""
        z = np.asarray(z, np.float32)
        one = z.ndim == 3
        z4 = z[None] if one else z
        n, c, h, w = z4.shape
        idx = self.assign(self.vectors(z4, self.dim)).reshape(n, c // self.dim, h, w)
        return idx[0] if one else idx

    def dequantize(self, idx: np.ndarray) -> np.ndarray:
        """Indices (..., G, h, w) -> latents (..., G * dim, h, w), rows of the codebook."""
        idx = np.asarray(idx)
        v = self.codebook[idx]  # (..., G, h, w, dim)
        v = np.moveaxis(v, -1, -3)  # (..., G, dim, h, w)
        return np.ascontiguousarray(v.reshape(*idx.shape[:-3], -1, *idx.shape[-2:]))

    def model(self) -> Any:
        if self._model is None:
            self._model = _model(self.probs)
        return self._model

    def encode(self, idx: np.ndarray) -> bytes:
        return ans_encode([(idx.astype(np.int32), self.model())])

    def decode(self, data: bytes, groups: int, h: int, w: int) -> np.ndarray:
        dec = ans_decoder(data)
        return np.asarray(dec.decode(self.model(), groups * h * w), np.int32).reshape(groups, h, w)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.codebook": self.codebook, f"{prefix}.probs": self.probs}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str) -> KMeansQuantizer:
        return cls(a[f"{prefix}.codebook"], a[f"{prefix}.probs"])


@dataclass
class Quantizers:
    """A bundle's rate levels, lowest rate first: K-means codebooks by size, then int8, then
    float16 (the unquantized reference). Quality q (1-based) picks level q - 1."""

    kmeans: list[KMeansQuantizer]
    int8: Int8Quantizer

    @property
    def levels(self) -> list[str]:
        return [f"kmeans{q.k}" for q in self.kmeans] + ["int8", "float16"]

    @classmethod
    def fit(cls, latents: np.ndarray, ks: tuple[int, ...], dim: int, seed: int = 0
            ) -> Quantizers:  # fmt: skip
        return cls([KMeansQuantizer.fit(latents, k, dim, seed) for k in sorted(ks)],
                   Int8Quantizer.fit(latents))  # fmt: skip

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"ks": np.asarray([q.k for q in self.kmeans], np.int64)}
        for q in self.kmeans:
            arrays |= q.arrays(f"kmeans{q.k}")
        arrays |= self.int8.arrays("int8")
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Quantizers:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        km = [KMeansQuantizer.from_arrays(a, f"kmeans{int(k)}") for k in a["ks"]]
        return cls(km, Int8Quantizer.from_arrays(a, "int8"))


def latent_bytes(channels: int, h: int, w: int) -> dict[str, int]:
    """Raw sizes of one tile's latents: float32 and float16."""
    n = channels * h * w
    return {"float32": 4 * n, "float16": 2 * n}
