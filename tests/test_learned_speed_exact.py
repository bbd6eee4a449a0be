"""The learned codec's fast decoder (exact.FastLayer: float32/float64 matrix products whose
exactness is proven from the weights; tiles decoded on several threads) gives the pixels of
the reference integer decoder, bit for bit.

tests/data/learned_reference.npz holds 12 bitstreams and the SHA-256 of the pixels the decoder
of commit 6ce0e05 (before the fast layers: one float64 product per kernel phase and an
overlap-add, now `exact.IntLayer` / `exact.run`) gave for them: 9 tiles coded with
`guard=False` (held-out H&E at qualities 1 to 8 including a fractional one, 256, 128, 77 x 100
and 1 x 33 px, uniform noise, a flat and a black tile) and 3 streams of a valid header followed
by random ANS words, which drive the synthesis into its +-2^15 clips. Bytes that decoded to
those pixels before must decode to them now, in this process and in others, on any number of
threads, without torch. They are codec-he-shallow's streams (the default before
codec-he-shallow-f32): that folder is given explicitly and kept checked bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidepress import zoo
from slidepress.codecs.learned import exact, runtime
from slidepress.codecs.learned.codec import load_model
from slidepress.codecs.learned.exact import EXACT_SPAN, FastLayer, IntLayer, compile_layers
from slidepress.errors import CodecError

from .torch_blocker import PREAMBLE

REFERENCE = Path(__file__).parent / "data" / "learned_reference.npz"
WEIGHTS = zoo.shipped_path("codec-he-shallow")  # the folder the reference streams were coded by


def _reference() -> tuple[list[str], list[bytes], list[str]]:
    with np.load(REFERENCE) as d:
        names = [str(n) for n in d["names"]]
        return names, [bytes(d[f"blob.{n}"]) for n in names], [str(h) for h in d["digests"]]


def _digest(tile: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tile).tobytes()).hexdigest()


# -- the recorded streams ------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_reference_streams_decode_to_recorded_pixels(threads):
    names, blobs, want = _reference()
    got = [_digest(t) for t in load_model(WEIGHTS).decode_batch(blobs, threads=threads)]
    assert dict(zip(names, got, strict=True)) == dict(zip(names, want, strict=True))


def test_one_at_a_time_and_through_the_codec():
    from slidepress.codecs import get_codec

    names, blobs, want = _reference()
    codec = get_codec("learned", guard=False, weights=str(WEIGHTS))
    for name, blob, digest in zip(names, blobs, want, strict=True):
        assert _digest(codec.decode(blob)) == digest, name


class _Reference:
    """An IntLayer run by the reference algorithm, standing in for a FastLayer."""

    def __init__(self, layer: IntLayer, pixels: bool):
        self.layer, self.pixels = layer, pixels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.layer(np.asarray(x, np.float64))
        return np.clip(out, 0, 255).astype(np.uint8) if self.pixels else out


def test_the_kept_reference_algorithm_gives_the_recorded_pixels():
    """exact.IntLayer (the decoder before the fast layers) still decodes the recorded streams
    to the recorded pixels: the digests and the in-tree reference agree."""
    model = runtime.LearnedModel(WEIGHTS)  # an instance of its own: its layers are swapped
    model.hyper_fast = [_Reference(L, False) for L in model.hyper]
    n = len(model.synth)
    model.synth_fast = [_Reference(L, i == n - 1) for i, L in enumerate(model.synth)]
    names, blobs, want = _reference()
    got = [_digest(t) for t in model.decode_batch(blobs, threads=1)]
    assert got == want


_CHILD = (
    PREAMBLE
    + """
import hashlib
from slidepress.codecs import get_codec

with np.load(sys.argv[1]) as d:
    blobs = [bytes(d[f"blob.{n}"]) for n in d["names"]]
codec = get_codec("learned", guard=False, weights=sys.argv[2])
out = codec.decode_batch(blobs)
print(json.dumps({
    "digests": [hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest() for t in out],
    "torch": sorted(m for m in sys.modules
                    if m.split(".")[0] in BLOCKED and sys.modules[m] is not None),
}))
"""
)


@pytest.mark.parametrize(("decode_threads", "blas_threads"), [(1, 1), (3, 2)])
def test_other_processes_and_thread_counts_without_torch(decode_threads, blas_threads):
    _, _, want = _reference()
    env = dict(os.environ, SLIDEPRESS_DECODE_THREADS=str(decode_threads))
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(blas_threads)
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(REFERENCE), str(WEIGHTS)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    assert result["digests"] == want


# -- the fast layers against the reference, at the bounds ------------------------------------


def _layer(rng, cin, cout, k, s, relu, clip, in_frac, out_frac, w_bits=11, bias_bits=20):
    weight = rng.integers(-(2**w_bits), 2**w_bits + 1, (cin, k, k, cout)).astype(np.float64)
    weight[0, 0, 0, :] = 2**w_bits  # the extreme weight, in every output channel
    bias = rng.integers(-(2**bias_bits), 2**bias_bits + 1, cout).astype(np.float64)
    w_exp = rng.integers(9, 14, cout)
    return IntLayer(weight, bias, w_exp, s, in_frac, out_frac, relu, 2.0**15 if clip else None)


def _inputs(rng, shape, bound):
    x = rng.integers(-bound, bound + 1, shape).astype(np.float64)
    extreme = x.copy()
    extreme[...] = bound
    extreme[..., ::2] = -bound  # every product at its largest, both signs
    return [x, extreme, -extreme, np.clip(x, 0, None)]


@pytest.mark.parametrize(
    ("k", "s", "relu", "clip", "band_bytes"),
    [(4, 2, True, True, 1 << 19), (8, 4, False, False, 1 << 19), (8, 4, True, True, 1),
     (2, 2, False, True, 1 << 19), (1, 1, True, True, 1), (4, 2, False, False, 4096)],
)  # fmt: skip
def test_fast_layers_equal_the_reference(k, s, relu, clip, band_bytes, monkeypatch):
    monkeypatch.setattr(exact, "BAND_BYTES", band_bytes)  # bands of one block row too
    rng = np.random.default_rng(k * 100 + s * 10 + relu)
    for cin, bound in ((24, 2**15), (7, 40)):  # float64 (Winograd where 2 x 2 taps); float32
        layer = _layer(rng, cin, 5, k, s, relu, clip, in_frac=11, out_frac=9)
        fast = FastLayer(layer, bound)
        assert fast.dtype == (np.float64 if bound > 100 else np.float32)
        for shape in ((2, 5, 7, cin), (1, 1, 1, cin), (1, 6, 3, cin)):
            for x in _inputs(rng, shape, bound):
                np.testing.assert_array_equal(fast(x), layer(x))
        pixels = FastLayer(layer, bound, pixels=True)
        x = _inputs(rng, (2, 4, 5, cin), bound)[0]
        want = np.clip(layer(x), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(pixels(x), want)


@pytest.mark.parametrize("name", ["codec-he-shallow", "codec-he-shallow-f32"])
def test_shipped_layers_equal_the_reference_at_their_bounds(name):
    model = load_model(zoo.shipped_path(name))
    rng = np.random.default_rng(23)
    zb = int(model.z_bound)
    for z in _inputs(rng, (2, 3, 4, model.config.z), zb):
        z = z.astype(np.int64)
        np.testing.assert_array_equal(exact.run_fast(model.hyper_fast, z),
                                      exact.run(model.hyper, z.astype(np.float64)))  # fmt: skip
    for x in _inputs(rng, (2, 5, 6, model.config.m), 2**15):
        want = np.clip(exact.run(model.synth, x), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(exact.run_fast(model.synth_fast, x), want)


def test_precision_follows_the_proven_bound():
    model = load_model(WEIGHTS)
    # the hyper-latents are small (the z tables' range): float32 suffices for the first
    # hyper-synthesis layer; every other shipped layer needs float64
    assert [f.dtype for f in model.hyper_fast] == [np.float32, np.float64, np.float64]
    assert all(f.dtype == np.float64 for f in model.synth_fast)
    for f in model.hyper_fast + model.synth_fast:
        assert f.worst < EXACT_SPAN[f.dtype]
    # just past 2^24 units: float64
    rng = np.random.default_rng(0)
    layer = _layer(rng, 8, 3, 1, 1, False, True, in_frac=0, out_frac=0, w_bits=4, bias_bits=0)
    l1 = np.abs(layer.weight).sum(axis=0).max()
    fits = int(2**24 // l1 // 2) - 1
    assert FastLayer(layer, fits).dtype == np.float32
    assert FastLayer(layer, fits * 4).dtype == np.float64
    # sums that could pass 2^53: refused, at export and when a weights folder loads
    huge = _layer(rng, 8, 3, 1, 1, False, True, in_frac=0, out_frac=0, w_bits=11)
    with pytest.raises(ValueError, match="not exact"):
        compile_layers([huge], 2.0**45)


def test_weights_that_cannot_be_decoded_exactly_are_refused(tmp_path, monkeypatch):
    import shutil

    from slidepress.codecs.learned import weights_folder

    folder = tmp_path / "w"
    shutil.copytree(WEIGHTS, folder)
    monkeypatch.setattr(weights_folder, "SYNTH_INPUT_BOUND", 2.0**45)  # as if unbounded
    with pytest.raises(CodecError, match="not exact"):
        runtime.LearnedModel(folder)


# -- threads ---------------------------------------------------------------------------------


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_threads_are_restored_after_a_decode():
    pytest.importorskip("threadpoolctl")
    _, blobs, _ = _reference()
    before = _blas_threads()
    load_model(WEIGHTS).decode_batch(blobs, threads=2)
    assert _blas_threads() == before
    damaged = runtime.HEADER.pack(runtime.MAGIC, runtime.VERSION, 16, 64, 64) + bytes(4)
    with pytest.raises(ValueError, match="zero word"):  # fails on a decoding thread
        load_model(WEIGHTS).decode_batch([*blobs, damaged], threads=2)
    assert _blas_threads() == before


def test_decode_threads_setting(monkeypatch):
    monkeypatch.setenv(runtime.DECODE_THREADS_ENV, "3")
    assert runtime.decode_threads() == 3
    monkeypatch.setenv(runtime.DECODE_THREADS_ENV, "0")
    assert runtime.decode_threads() == 1
    monkeypatch.setenv(runtime.DECODE_THREADS_ENV, "many")
    with pytest.raises(CodecError, match="not a number"):
        runtime.decode_threads()
    monkeypatch.delenv(runtime.DECODE_THREADS_ENV)
    assert 1 <= runtime.decode_threads() <= 8
