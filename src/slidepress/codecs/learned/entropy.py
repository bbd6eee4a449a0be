"""Entropy coding of the learned codec's symbols with constriction's ANS coder.

Every probability model is a fixed table computed once at export and shipped with the
weights: 64 quantised Gaussians for the latents (selected by an integer scale index computed
exactly, see exact.py) and one table per hyper-latent channel. A decoder therefore never
derives a probability from a float it computed itself; it only looks tables up by integers.
Symbols are coded in groups that share a table (one constriction call per group), the
hyper-latents last so that a decoder pops them first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SCALES = 64  # number of latent scale tables
TAIL = 10.0  # tables cover +-TAIL standard deviations (at least +-2)


def gaussian_table(scale: float) -> tuple[np.ndarray, int]:
    """(probabilities over [-R, R], R) of a unit-bin quantised N(0, scale); the tails beyond
    +-R are folded into the end bins so nothing is impossible."""
    from scipy.special import ndtr

    r = max(2, math.ceil(TAIL * scale))
    k = np.arange(-r, r + 1, dtype=np.float64)
    upper = ndtr((k + 0.5) / scale)
    lower = ndtr((k - 0.5) / scale)
    p = upper - lower
    p[0] += ndtr((-r - 0.5) / scale)
    p[-1] += 1.0 - ndtr((r + 0.5) / scale)
    p = np.maximum(p, 1e-12)
    return p / p.sum(), r


@dataclass
class Tables:
    """The shipped tables: latent scales (log-spaced), their pmfs, hyper-latent pmfs."""

    scales: np.ndarray  # (SCALES,)
    y_probs: list[np.ndarray]
    y_radius: np.ndarray  # (SCALES,) int
    z_probs: list[np.ndarray]
    z_radius: np.ndarray  # (Z,) int
    _models: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, log_min: float, log_max: float, z_scales: np.ndarray) -> Tables:
        scales = np.exp(np.linspace(log_min, log_max, SCALES))
        y = [gaussian_table(s) for s in scales]
        z = [gaussian_table(float(s)) for s in z_scales]
        return cls(
            scales, [p for p, _ in y], np.array([r for _, r in y]),
            [p for p, _ in z], np.array([r for _, r in z]),
        )  # fmt: skip

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "scales": self.scales,
            "y_probs": np.concatenate(self.y_probs),
            "y_radius": self.y_radius,
            "z_probs": np.concatenate(self.z_probs),
            "z_radius": self.z_radius,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Tables:
        def split(flat: np.ndarray, radius: np.ndarray) -> list[np.ndarray]:
            ends = np.cumsum(2 * radius + 1)
            return np.split(flat, ends[:-1])

        return cls(
            a["scales"], split(a["y_probs"], a["y_radius"]), a["y_radius"].astype(np.int64),
            split(a["z_probs"], a["z_radius"]), a["z_radius"].astype(np.int64),
        )  # fmt: skip

    def model(self, kind: str, i: int):
        """The constriction Categorical of table i ('y' scale index or 'z' channel)."""
        key = (kind, i)
        m = self._models.get(key)
        if m is None:
            import constriction

            probs = (self.y_probs if kind == "y" else self.z_probs)[i]
            m = constriction.stream.model.Categorical(probs, perfect=False)
            self._models[key] = m
        return m


def encode(
    tables: Tables, z_sym: np.ndarray, y_sym: np.ndarray, y_idx: np.ndarray
) -> tuple[np.ndarray, int]:
    """One tile's symbols -> ANS words (uint32), and how many symbols had to be clipped to
    their table's range (0 for any sane tile).

    z_sym (Z, h, w) and y_sym (M, H, W) are integers; y_idx (M, H, W) the scale index of
    each latent. Symbols are clipped to the table ranges (the encoder decides: the decoder
    reads back exactly what was coded)."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    clipped = 0
    flat_sym = y_sym.reshape(-1)
    flat_idx = y_idx.reshape(-1)
    order = np.argsort(flat_idx, kind="stable")
    bounds = np.searchsorted(flat_idx[order], np.arange(SCALES + 1))
    for j in range(SCALES - 1, -1, -1):  # pushed last-to-first: popped 0, 1, ...
        sel = order[bounds[j] : bounds[j + 1]]
        if not len(sel):
            continue
        r = tables.y_radius[j]
        s = flat_sym[sel]
        clipped += int(np.count_nonzero(np.abs(s) > r))
        coder.encode_reverse((np.clip(s, -r, r) + r).astype(np.int32), tables.model("y", j))
    for c in range(z_sym.shape[0] - 1, -1, -1):
        r = tables.z_radius[c]
        s = z_sym[c].reshape(-1)
        clipped += int(np.count_nonzero(np.abs(s) > r))
        coder.encode_reverse((np.clip(s, -r, r) + r).astype(np.int32), tables.model("z", c))
    return coder.get_compressed(), clipped


class Decoder:
    """Pops one tile's symbols: the hyper-latents first, then the latents given their scale
    indices (which need the hyper-latents: see codec.py)."""

    def __init__(self, tables: Tables, words: np.ndarray):
        import constriction

        self.tables = tables
        self.coder = constriction.stream.stack.AnsCoder(words)

    def z(self, channels: int, h: int, w: int) -> np.ndarray:
        out = np.empty((channels, h * w), np.int64)
        for c in range(channels):
            r = self.tables.z_radius[c]
            out[c] = np.asarray(self.coder.decode(self.tables.model("z", c), h * w)) - r
        return out.reshape(channels, h, w)

    def y(self, y_idx: np.ndarray) -> np.ndarray:
        """Latents (M, H, W) given their scale indices (integers in [0, SCALES)): the groups
        of one table in table order, each in flat (channel, row, column) order, as coded."""
        flat_idx = y_idx.reshape(-1)
        order = np.argsort(flat_idx, kind="stable")
        counts = np.bincount(flat_idx, minlength=SCALES)
        parts = [
            np.asarray(self.coder.decode(self.tables.model("y", j), int(counts[j])))
            - self.tables.y_radius[j]
            for j in np.flatnonzero(counts)
        ]
        out = np.empty(flat_idx.shape, np.int64)
        out[order] = np.concatenate(parts) if parts else 0
        return out.reshape(y_idx.shape)
