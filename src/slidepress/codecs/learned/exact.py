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
convolution), followed by an optional ReLU and a clip (one bound, or one per output channel).
Bounds (checked at export): |weight| < 2^12, |activation| <= 2^15, fan-in <= 2^12, so partial
sums stay below 2^39.

Two implementations of the same arithmetic:
- `IntLayer.__call__` / `run`: the reference (one matrix product per kernel phase and an
  overlap-add), kept for tests and as the definition;
- `FastLayer` / `compile_layers`: what the codec runs (~1.7x less CPU per tile). Each block of s x s
  output pixels gathers its 2 x 2 input neighbourhood (im2col) so a layer is ONE matrix
  product, with the bias, the output scale 2^-shift and the rounding offset 1/2 folded into
  the weights and a constant-1 input column (power-of-two scaling changes no significant bit,
  so every product and partial sum is still an exactly representable multiple of 2^-shift),
  then floor and clip in place, a band of block rows at a time (in cache). A layer runs in
  float32 (twice BLAS's float64 speed) where its worst case (`worst_units`) -- per output,
  the weights' magnitudes times the input bounds (after a ReLU, inputs >= 0: the larger of
  the positive and the negative weights' sums), plus the bias, in units of the output's
  finest step -- stays below 2^24, else in float64 (below 2^53); `compile_layers` proves
  this when weights load (and at export) and refuses a layer that cannot meet it. Every
  partial sum is then an exact multiple of the output unit whatever the summation order,
  blocking, FMA or thread count, so the result equals the reference bit for bit
  (tests/test_learned_speed_exact.py, test_learned_precision.py). With codec-he-shallow's
  weights (15-bit activations) only the first hyper-synthesis layer (inputs: hyper-latents
  within the z tables' +-141) fits float32 (2^23.5); the others need 2^30-2^32, and
  splitting their 16-bit activations into two float32 products costs as much as one float64
  product. Weights exported for float32 (export.py's "float32" precision: ~10-bit
  activations, clips at calibrated peaks, `quantize_to_span`) fit float32 in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACT_BITS = 15  # activations are clipped to +-2^15
WEIGHT_BITS = 11  # |integer weights| <= 2^11
MAX_PARTIAL = 2.0**53
# integers (and multiples of a power of two) are exact in float32 / float64 up to these spans
EXACT_SPAN = {np.dtype(np.float32): 2.0**24, np.dtype(np.float64): 2.0**53}
BAND_BYTES = 1 << 20  # gathered inputs per matrix product (a band of block rows)


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
    # outputs clipped to +-clip (0..clip after a ReLU): one value, or one per output channel
    # (integers); None: no clipping (the output layer clips itself)
    clip: float | np.ndarray | None = 2.0**ACT_BITS

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


def quantize_to_span(
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int,
    in_frac: int,
    out_frac: int,
    relu: bool,
    clip: float | None,
    in_bound: float,
    in_nonneg: bool = False,
    span: float = EXACT_SPAN[np.dtype(np.float32)],
    max_exp: np.ndarray | None = None,
) -> IntLayer:
    """Fixed-point version of a layer whose every partial sum provably stays below `span`
    units (`worst_units`; 2^24: the FastLayer runs in float32) for inputs |x| <= in_bound
    (integers at 2^-in_frac; >= 0 with `in_nonneg`).

    `weight` (cin, k, k, cout) and `bias` (cout,) are real numbers, the bias at the output's
    scale (real output = sum of real inputs x real weights + bias). Per output channel the
    weights get the finest power-of-two scale 2^-w_exp that keeps the bound (and |integer
    weight| <= 2^WEIGHT_BITS, and w_exp <= `max_exp` where given: re-rounding integer weights
    to a finer grid than theirs gains nothing); weights and bias are rounded to it (half to
    even)."""
    w = np.asarray(weight, np.float64)
    b = np.asarray(bias, np.float64)
    cout = w.shape[3]
    peak = np.maximum(np.abs(w).reshape(-1, cout).max(axis=0), 1e-12)
    w_exp = (WEIGHT_BITS - np.ceil(np.log2(peak))).astype(np.int64)
    if max_exp is not None:
        w_exp = np.minimum(w_exp, np.asarray(max_exp, np.int64))
    cap = w_exp.copy()

    def fit(w_exp: np.ndarray) -> tuple[IntLayer, np.ndarray]:
        e = w_exp.astype(np.float64)
        w_int, b_int = np.round(w * np.exp2(e)), np.round(b * np.exp2(in_frac + e))
        layer = IntLayer(w_int, b_int, w_exp, stride, in_frac, out_frac, relu, clip)
        return layer, worst_units(layer, in_bound, in_nonneg) < span

    for _ in range(64):
        layer, ok = fit(w_exp)
        if ok.all():
            break
        # halving the weights about halves the sum: step down by the bits it is over
        over = worst_units(layer, in_bound, in_nonneg) / span
        w_exp = w_exp - ~ok * np.maximum(1, np.ceil(np.log2(over))).astype(np.int64)
    else:
        raise ValueError(f"layer sums cannot be brought below {span:.3g} units")  # the bias
    while True:  # rounding can leave a channel a bit short of its finest scale: one more?
        up = np.minimum(w_exp + 1, cap)
        _, ok = fit(up)
        ok &= up > w_exp
        if not ok.any():
            return layer
        w_exp = np.where(ok, up, w_exp)
        layer = fit(w_exp)[0]


def frac_bits_for(peak: float, margin: float = 1.5) -> int:
    """Fractional bits so that `peak * margin` fits in ACT_BITS."""
    peak = max(float(peak) * margin, 1e-6)
    return int(np.floor(ACT_BITS - np.log2(peak)))


class FastLayer:
    """An `IntLayer` compiled for speed, bit-identical to it (module docstring).

    `in_bound`: the largest |input| it may be given (the previous layer's clip, one or per
    input channel, or the entropy tables' range for the hyper-latents; `in_nonneg`: inputs
    are >= 0, after a ReLU): with the weights it bounds every partial sum, which picks float32
    or float64. `pixels`: the output layer of the synthesis, clipped to 0..255 and returned
    as uint8."""

    def __init__(
        self,
        layer: IntLayer,
        in_bound: float | np.ndarray,
        pixels: bool = False,
        in_nonneg: bool = False,
    ):
        w = np.asarray(layer.weight, np.float64)
        cin, k, _, cout = w.shape
        s = layer.stride
        if k not in (s, 2 * s):
            raise ValueError(f"kernel {k} must be the stride {s} or twice it")
        self.taps = k // s  # input pixels per output block along each axis: 1 or 2
        self.stride, self.cin, self.cout = s, cin, cout
        self.crop = (k - s) // 2
        self.relu, self.clip, self.pixels = layer.relu, layer.clip, pixels
        # per-channel clips: one per matrix column (r, c, cout)
        self._clip_cols = (
            None if self.clip is None or np.ndim(self.clip) == 0
            else np.tile(np.asarray(self.clip, np.float64), s * s)
        )  # fmt: skip
        if self._clip_cols is not None and np.any(self._clip_cols != np.floor(self._clip_cols)):
            raise ValueError("clips must be integers")
        sh = (layer.in_frac + layer.w_exp - layer.out_frac).astype(np.float64)  # (cout,)
        scale = np.exp2(-sh)
        wmat = _weight_matrix(w, s)
        bias = layer.bias.astype(np.float64)
        acc = _acc_bound(layer, in_bound, in_nonneg)
        self.worst = float(worst_units(layer, in_bound, in_nonneg).max())
        if self.worst < EXACT_SPAN[np.dtype(np.float32)]:
            self.dtype = np.dtype(np.float32)
        elif self.worst < EXACT_SPAN[np.dtype(np.float64)]:
            self.dtype = np.dtype(np.float64)
        else:
            raise ValueError(f"layer sums could reach {self.worst:.3g} units >= 2^53: not exact")
        if self._clip_cols is not None:
            clips = self._clip_cols.astype(self.dtype)
            if not np.array_equal(clips, self._clip_cols):
                raise ValueError("clips are not exact in the layer's precision")
            self._clip_cols = clips
        self.bias_row = np.tile(bias * scale + 0.5, s * s)  # float64: exact in self.dtype too
        wmat = wmat * np.tile(scale, s * s)
        # the constant-1 input column carries bias + 1/2 (one product, exact)
        self.weight = np.vstack([wmat, self.bias_row[None]]).astype(self.dtype)
        if not np.array_equal(self.weight.astype(np.float64)[:-1], wmat):
            raise ValueError("scaled weights are not exact in the layer's precision")
        if not np.array_equal(self.weight.astype(np.float64)[-1], self.bias_row):
            raise ValueError("scaled bias is not exact in the layer's precision")
        self.out_bound = (
            255.0 if pixels else self.clip if self.clip is not None
            else float((acc * scale).max()) + 1.5
        )  # fmt: skip

    def _finish(self, a: np.ndarray) -> None:
        """Rounding and clipping of accumulated outputs, in place."""
        np.floor(a, out=a)
        if self.pixels:
            np.clip(a, 0.0, 255.0, out=a)
        elif self._clip_cols is not None:
            hi = self._clip_cols
            np.clip(a, 0.0 if self.relu else -hi, hi, out=a)
        elif self.relu:
            np.clip(a, 0.0, self.clip if self.clip is not None else np.inf, out=a)
        elif self.clip is not None:
            np.clip(a, -self.clip, self.clip, out=a)

    def _columns(self, x: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Block rows [r0, r1) of one tile x (H, W, cin) -> (r1 - r0, W+t-1, t*t*cin + 1):
        each output block's inputs (its t x t input neighbourhood, zero beyond the tile)
        and a 1."""
        h, w, cin = x.shape
        t = self.taps
        bw = w + t - 1
        cols = np.empty((r1 - r0, bw, t * t * cin + 1), self.dtype)
        cols[..., -1] = 1.0
        for a in range(t):
            # block row I takes input row I - a: rows lo..hi of this band have one
            lo, hi = max(r0, a), min(r1, h + a)
            for b in range(t):
                band = cols[..., (a * t + b) * cin : (a * t + b + 1) * cin]
                band[lo - r0 : hi - r0, b : b + w] = x[lo - a : hi - a]
                if t > 1:  # zeros beyond the tile
                    band[: lo - r0] = 0.0
                    band[hi - r0 :] = 0.0
                    band[lo - r0 : hi - r0, :b] = 0.0
                    band[lo - r0 : hi - r0, b + w :] = 0.0
        return cols

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, cin) integers -> (N, H*s, W*s, cout): float (the next layer's input) or
        uint8 pixels. Computed per tile in bands of block rows (`BAND_BYTES` of gathered
        inputs), so each band's product, floor and clip run in cache."""
        n, h, w, cin = x.shape
        t, s, cout = self.taps, self.stride, self.cout
        bh, bw = h + t - 1, w + t - 1
        k = self.weight.shape[0]
        out = np.empty((n, bh, bw, s * s * cout), np.uint8 if self.pixels else self.dtype)
        rows = max(1, BAND_BYTES // (bw * k * self.dtype.itemsize))
        # pixels are accumulated apart, then stored as uint8 (exact: integers in 0..255)
        acc = np.empty((min(rows, bh) * bw, s * s * cout), self.dtype) if self.pixels else None
        for i in range(n):
            for r0 in range(0, bh, rows):
                r1 = min(r0 + rows, bh)
                cols = self._columns(x[i], r0, r1).reshape(-1, k)
                a = acc[: len(cols)] if acc is not None else out[i, r0:r1].reshape(len(cols), -1)
                np.matmul(cols, self.weight, out=a)
                self._finish(a)
                if acc is not None:
                    out[i, r0:r1] = a.reshape(r1 - r0, bw, -1)
        if s == 1 and t == 1:
            return out.reshape(n, h, w, cout)
        blocks = out.reshape(n, bh, bw, s, s, cout).transpose(0, 1, 3, 2, 4, 5)
        full = blocks.reshape(n, bh * s, bw * s, cout)
        p = self.crop
        return full[:, p : p + h * s, p : p + w * s]


def _weight_matrix(w: np.ndarray, s: int) -> np.ndarray:
    """(cin, k, k, cout) weights -> the (t*t*cin, s*s*cout) matrix of one output block: rows
    (tap a, tap b, cin) in the order `FastLayer._columns` writes them, columns (r, c, cout)."""
    cin, k, _, cout = w.shape
    t = k // s
    blocks = w.reshape(cin, t, s, t, s, cout).transpose(1, 3, 0, 2, 4, 5)
    return blocks.reshape(t * t * cin, s * s * cout)


def _acc_bound(layer: IntLayer, in_bound, in_nonneg: bool) -> np.ndarray:
    """Per output channel, the largest |partial sum| of integer products and bias (in the
    accumulator's units) for inputs within `in_bound` (a value, or one per input channel)."""
    w = np.asarray(layer.weight, np.float64)
    cin, k, _, cout = w.shape
    s = layer.stride
    wmat = _weight_matrix(w, s)
    rows = np.tile(np.broadcast_to(np.asarray(in_bound, np.float64), (cin,)), (k // s) ** 2)
    if in_nonneg:
        pos = (np.clip(wmat, 0.0, None) * rows[:, None]).sum(axis=0)
        neg = (np.clip(-wmat, 0.0, None) * rows[:, None]).sum(axis=0)
        mass = np.maximum(pos, neg)
    else:
        mass = (np.abs(wmat) * rows[:, None]).sum(axis=0)
    mass = mass.reshape(s * s, cout).max(axis=0)
    return mass + np.abs(np.asarray(layer.bias, np.float64))


def worst_units(layer: IntLayer, in_bound, in_nonneg: bool = False) -> np.ndarray:
    """Per output channel, the largest |partial sum| a FastLayer of `layer` can form for inputs
    with |x| <= in_bound (0 <= x <= in_bound with `in_nonneg`: the previous layer's ReLU;
    a bound, or one per input channel), in units of the output's finest step 2^-max(sh, 1)
    (sh = in_frac + w_exp - out_frac; the rounding offset 1/2 included). Any subset of the
    products w_i * x_i and the bias lies within +-(sum |w_i| bound_i + |bias|); with inputs
    >= 0 within +-(max(sum of w_i bound_i over the positive weights, over the negative
    ones) + |bias|) -- in the worst of the s x s output phases (columns of the layer's
    matrix)."""
    sh = (layer.in_frac + layer.w_exp - layer.out_frac).astype(np.float64)
    acc = _acc_bound(layer, in_bound, in_nonneg)
    return (acc * np.exp2(-sh) + 0.5) * np.exp2(np.maximum(sh, 1))


def compile_layers(
    layers: list[IntLayer], in_bound: float | np.ndarray, pixels: bool = False
) -> list[FastLayer]:
    """Fast exact versions of `layers` for inputs with |x| <= in_bound (the last one giving
    uint8 pixels when `pixels`); raises ValueError where exactness cannot be proven. A layer
    after a ReLU gets inputs >= 0 (a tighter bound: `worst_units`)."""
    out = []
    nonneg = False
    for i, layer in enumerate(layers):
        fast = FastLayer(layer, in_bound, pixels=pixels and i == len(layers) - 1, in_nonneg=nonneg)
        out.append(fast)
        in_bound, nonneg = fast.out_bound, layer.relu
    return out


def run_fast(layers: list[FastLayer], x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x
