"""Exact integer inference for the decoder side of the learned codec (hyper-synthesis and
synthesis), bit-identical on every machine, process and thread count.

Why: a learned decoder computed in floating point gives slightly different numbers with other
BLAS kernels, thread counts or CPUs; where a number selects an entropy table (the scales) a
one-ulp difference desynchronises the decoder (CompressAI's most reported defect), and pixels
drift by a level. Here every weight and activation is an integer (fixed point with a
power-of-two scale per layer and output channel), and the layers are computed with float64
matrix products whose every partial sum is an integer below 2^53 -- which IEEE arithmetic
computes exactly in any order, with or without FMA. Rescaling multiplies by powers of two
(exact) and rounds with floor(x + 0.5) (exact). So BLAS speed, no float drift.

A layer is a transposed convolution with kernel k = 2 * stride or = stride (stride 1: a 1x1
convolution), followed by an optional ReLU, applied as one matrix product and an overlap-add.
Bounds (checked at export): |weight| < 2^12, |activation| <= 2^15, fan-in <= 2^12, so partial
sums stay below 2^39.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACT_BITS = 15  # activations are clipped to +-2^15
WEIGHT_BITS = 11  # |integer weights| <= 2^11
MAX_PARTIAL = 2.0**53


@dataclass
class IntLayer:
    """One layer in fixed point.

    `weight`: (cin, k, k, cout) integers (as float64), real weight = weight * 2^-w_exp[c];
    input activation scale 2^-in_frac, output scale 2^-out_frac; bias already at the
    accumulator's scale (2^-(in_frac + w_exp[c]))."""

    weight: np.ndarray
    bias: np.ndarray  # (cout,)
    w_exp: np.ndarray  # (cout,) int
    stride: int
    in_frac: int
    out_frac: int
    relu: bool
    clip: float | None = 2.0**ACT_BITS  # None: no clipping (the output layer clips itself)

    @property
    def kernel(self) -> int:
        return self.weight.shape[1]

    @property
    def cout(self) -> int:
        return self.weight.shape[3]

    def shift(self) -> np.ndarray:
        """Per output channel multiplier 2^-(in_frac + w_exp - out_frac) (exact)."""
        return np.exp2(-(self.in_frac + self.w_exp - self.out_frac).astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = tconv_exact(np.ascontiguousarray(x), self.weight, self.stride)
        acc += self.bias
        acc *= self.shift()
        acc += 0.5
        out = np.floor(acc, out=acc)
        if self.relu:
            np.maximum(out, 0.0, out=out)
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out


def tconv_exact(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Transposed convolution of integer-valued float64 arrays, exactly.

    x: (N, H, W, cin); w: (cin, k, k, cout) with k = stride or 2 * stride (padding (k - s)/2,
    as torch.nn.ConvTranspose2d(k, stride=s, padding=(k - s) // 2)); output (N, H*s, W*s,
    cout). One matrix product per kernel phase gives every input pixel's s x s x cout
    contribution, added in place into a (N, H+1, s, W+1, s, cout) view of the output (integer
    additions: exact; strided views: no copies)."""
    n, h, wd, cin = x.shape
    _, k, _, cout = w.shape
    s = stride
    xm = x.reshape(-1, cin)
    if k == s:
        z = (xm @ w.reshape(cin, -1)).reshape(n, h, wd, s, s, cout)
        return z.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, wd * s, cout)
    if k != 2 * s:
        raise ValueError(f"kernel {k} must be the stride {s} or twice it")
    full = np.zeros((n, h + 1, s, wd + 1, s, cout))
    for a in range(2):
        for b in range(2):
            sub = np.ascontiguousarray(w[:, a * s : (a + 1) * s, b * s : (b + 1) * s, :])
            part = (xm @ sub.reshape(cin, -1)).reshape(n, h, wd, s, s, cout)
            # one contiguous copy, then additions over long contiguous runs (W*s*cout)
            part = np.ascontiguousarray(part.transpose(0, 1, 3, 2, 4, 5))
            full[:, a : a + h, :, b : b + wd, :, :] += part
    p = (k - s) // 2
    full = full.reshape(n, (h + 1) * s, (wd + 1) * s, cout)
    return full[:, p : p + h * s, p : p + wd * s]


def run(layers: list[IntLayer], x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x


def quantize_layer(
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int,
    in_frac: int,
    out_frac: int,
    relu: bool,
    clip: bool = True,
    out_gain: float = 1.0,
) -> IntLayer:
    """Fixed-point version of a float transposed convolution (torch layout (cin, cout, k, k))
    or 1x1 convolution (layout (cout, cin, 1, 1): pass it transposed), scaled by `out_gain`
    (e.g. 255 for pixel output). Per output channel, weights get as many fractional bits as
    keep them within WEIGHT_BITS."""
    w = np.asarray(weight, np.float64).transpose(0, 2, 3, 1) * out_gain  # (cin, k, k, cout)
    b = np.asarray(bias, np.float64) * out_gain
    peak = np.abs(w).reshape(-1, w.shape[3]).max(axis=0)
    peak = np.maximum(peak, 1e-12)
    w_exp = (WEIGHT_BITS - np.ceil(np.log2(peak))).astype(np.int64)
    w_int = np.round(w * np.exp2(w_exp.astype(np.float64)))
    b_int = np.round(b * np.exp2((in_frac + w_exp).astype(np.float64)))
    fan_in = w.shape[0] * (w.shape[1] // stride) ** 2
    bound = 2.0**ACT_BITS * 2.0**WEIGHT_BITS * fan_in + np.abs(b_int).max()
    if bound >= MAX_PARTIAL:
        raise ValueError(f"layer sums could reach {bound:.3g} >= 2^53: not exact")
    return IntLayer(w_int, b_int, w_exp, stride, in_frac, out_frac, relu,
                    2.0**ACT_BITS if clip else None)  # fmt: skip


def frac_bits_for(peak: float, margin: float = 1.5) -> int:
    """Fractional bits so that `peak * margin` fits in ACT_BITS."""
    peak = max(float(peak) * margin, 1e-6)
    return int(np.floor(ACT_BITS - np.log2(peak)))
