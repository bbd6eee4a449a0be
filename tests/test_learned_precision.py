"""The learned codec's export precision (codecs/learned/export.py): "float32" weights, whose
every decoder layer provably keeps its partial sums below 2^24, decode with float32 products
to exactly the pixels of the reference integer arithmetic (exact.IntLayer), on any thread
count and without torch; `requantize` derives them from a folder's integer weights alone; the
choice is recorded in config.json; and the float64 format (codec-he-shallow, its recorded
streams in tests/data/learned_reference.npz) is unchanged.

codec-he-shallow-f32 is codec-he-shallow re-rounded this way (its MODEL_CARD.md: PSNR within
0.03 dB per level on validation and held-out H&E, decode ~1.5x faster).
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
from slidepress.codecs.learned.exact import (
    EXACT_SPAN,
    FastLayer,
    IntLayer,
    quantize_to_span,
    worst_units,
)
from slidepress.codecs.learned.weights_folder import IntDecoder

from .torch_blocker import PREAMBLE

F32 = zoo.ROOT / "codec-he-shallow-f32"
WEIGHTS = zoo.shipped_path("codec-he-shallow")  # its source, in the float64 layout
SPAN32 = EXACT_SPAN[np.dtype(np.float32)]
needs_f32 = pytest.mark.skipif(not F32.is_dir(), reason=f"{F32} not written")


def _digest(tile: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tile).tobytes()).hexdigest()


class _Reference:
    """An IntLayer run by the reference algorithm, standing in for a FastLayer."""

    def __init__(self, layer: IntLayer, pixels: bool):
        self.layer, self.pixels = layer, pixels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.layer(np.asarray(x, np.float64))
        return np.clip(out, 0, 255).astype(np.uint8) if self.pixels else out


def _reference_model(folder: Path) -> runtime.LearnedModel:
    model = runtime.LearnedModel(folder)  # an instance of its own: its layers are swapped
    model.hyper_fast = [_Reference(L, False) for L in model.hyper]
    n = len(model.synth)
    model.synth_fast = [_Reference(L, i == n - 1) for i, L in enumerate(model.synth)]
    return model


def _extremes(rng, shape, bound, nonneg=False) -> list[np.ndarray]:
    """Random integers within +-bound (a value or one per channel), every input at its bound
    with alternating signs, and the same >= 0."""
    b = np.broadcast_to(np.asarray(bound, np.float64), shape[-1:])
    x = np.round(rng.uniform(-1, 1, shape) * b)
    ext = np.broadcast_to(b, shape).copy()
    ext[..., ::2] *= -1
    out = [x, ext, -ext, np.abs(ext), np.clip(x, 0, None)]
    return [np.clip(v, 0, None) for v in out] if nonneg else out


# -- the bound and the fitting ------------------------------------------------------------------


def test_nonnegative_inputs_bound_tighter_and_still_exact():
    """After a ReLU the worst partial sum is max(positive mass, negative mass) x bound, not
    the L1 norm: a layer that needs float64 for signed inputs fits float32 for inputs >= 0,
    and then equals the reference on the inputs that reach the bound."""
    rng = np.random.default_rng(1)
    w = rng.integers(-(2**11), 2**11 + 1, (16, 4, 4, 5)).astype(np.float64)
    layer = IntLayer(w, rng.integers(-(2**10), 2**10, 5).astype(np.float64),
                     np.full(5, 11), 2, 9, 9, True, 2.0**15)  # fmt: skip
    signed, nonneg = worst_units(layer, 1.0), worst_units(layer, 1.0, in_nonneg=True)
    assert np.all(nonneg < signed)
    bound = float(np.floor(SPAN32 / nonneg.max() * 0.999))
    assert worst_units(layer, bound).max() >= SPAN32 > worst_units(layer, bound, True).max()
    assert FastLayer(layer, bound).dtype == np.float64
    fast = FastLayer(layer, bound, in_nonneg=True)
    assert fast.dtype == np.float32
    wmat = exact._weight_matrix(w, 2)
    for x in _extremes(rng, (2, 5, 6, 16), bound, nonneg=True):
        np.testing.assert_array_equal(fast(x), layer(x))
    # the input that makes one output column's sum largest: the bound where its weight > 0
    for col in (0, 7, 19):
        pos = (wmat[:, col] > 0).reshape(2, 2, 16)  # (tap a, tap b, cin)
        x = np.zeros((1, 2, 2, 16))
        for a in range(2):
            for b in range(2):  # block (1, 1) reads input (1 - a, 1 - b)
                x[0, 1 - a, 1 - b] = pos[a, b] * bound
        np.testing.assert_array_equal(fast(x), layer(x))


def test_per_channel_clips_bound_each_input_by_its_own():
    rng = np.random.default_rng(2)
    cin, cout = 12, 6
    w = rng.integers(-(2**11), 2**11 + 1, (cin, 8, 8, cout)).astype(np.float64)
    clips = rng.integers(10, 900, cout).astype(np.float64)
    layer = IntLayer(w, rng.integers(-500, 500, cout).astype(np.float64),
                     np.full(cout, 11), 4, 7, 7, True, clips)  # fmt: skip
    in_bound = rng.integers(1, 40, cin).astype(np.float64)
    per = worst_units(layer, in_bound)
    assert np.all(per <= worst_units(layer, in_bound.max()))
    fast = FastLayer(layer, in_bound)
    assert fast.dtype == np.float32 and np.array_equal(fast.out_bound, clips)
    for x in _extremes(rng, (2, 3, 4, cin), in_bound):
        got = fast(x)
        np.testing.assert_array_equal(got, layer(x))
        assert np.all(got <= clips) and np.all(got >= 0)
    with pytest.raises(ValueError, match="integers"):
        FastLayer(IntLayer(w, layer.bias, layer.w_exp, 4, 7, 7, True, clips + 0.5), in_bound)


def test_quantize_to_span_keeps_the_bound_with_the_finest_weights():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, (32, 4, 4, 8))
    w[:, :, :, 0] *= 20  # one channel with much larger weights
    b = rng.normal(0, 0.2, 8)
    for span in (2.0**20, SPAN32, 2.0**30):
        L = quantize_to_span(w, b, 2, 6, 7, True, 500.0, 700.0, span=span)
        worst = worst_units(L, 700.0)
        assert np.all(worst < span)
        # one more bit in any channel would break the bound (or pass 2^11 per weight)
        finer = IntLayer(np.round(w * np.exp2(L.w_exp + 1.0)),
                         np.round(b * np.exp2(6 + L.w_exp + 1.0)), L.w_exp + 1, 2, 6, 7,
                         True, 500.0)  # fmt: skip
        over = (worst_units(finer, 700.0) >= span) | (
            np.abs(finer.weight).reshape(-1, 8).max(0) > 2**exact.WEIGHT_BITS
        )
        assert over.all()
    capped = quantize_to_span(w, b, 2, 6, 7, True, 500.0, 700.0, span=2.0**30,
                              max_exp=np.full(8, 9))  # fmt: skip
    assert capped.w_exp.max() <= 9


# -- requantize: a folder's integer weights -> float32 -------------------------------------------


@pytest.fixture(scope="module")
def requantized():
    from slidepress.codecs.learned.export import requantize  # torch: the export side

    return requantize(WEIGHTS)


def test_requantized_layers_prove_the_float32_bound(requantized):
    dec, record = requantized
    hyper_fast, synth_fast = dec.fast_layers()
    assert [f.dtype for f in hyper_fast + synth_fast] == [np.float32] * 5
    assert all(f.worst < SPAN32 for f in hyper_fast + synth_fast)
    assert record["precision"] == "float32"
    assert record["requantized_from"]["weights_sha256"] == zoo.WEIGHTS.get(
        "codec-he-shallow").sha256  # fmt: skip
    # never finer than the source's weights; the means keep their scale (same thresholds)
    src = IntDecoder.load(WEIGHTS)
    for new, old in zip(dec.hyper + dec.synth, src.hyper + src.synth, strict=True):
        assert np.all(new.w_exp <= old.w_exp)
    assert dec.mu_frac == src.mu_frac
    np.testing.assert_array_equal(dec.scale_thresholds, src.scale_thresholds)
    # float64: the folder's own decoder
    from slidepress.codecs.learned.export import requantize

    same, rec = requantize(WEIGHTS, "float64")
    assert rec["precision"] == "float64"
    want = src.to_arrays()
    assert all(np.array_equal(v, want[k]) for k, v in same.to_arrays().items())


def test_requantized_fast_layers_equal_the_reference_at_their_bounds(requantized):
    dec, _ = requantized
    hyper_fast, synth_fast = dec.fast_layers()
    rng = np.random.default_rng(23)
    for z in _extremes(rng, (2, 3, 4, hyper_fast[0].cin), dec.z_bound):
        np.testing.assert_array_equal(exact.run_fast(hyper_fast, z), exact.run(dec.hyper, z))
    for x in _extremes(rng, (2, 5, 6, synth_fast[0].cin), dec.synth_in_bound):
        want = np.clip(exact.run(dec.synth, x), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(exact.run_fast(synth_fast, x), want)


def test_write_requantized_records_the_choice_and_reloads(tmp_path, requantized):
    from slidepress.codecs.learned.export import write_requantized

    out = tmp_path / "f32"
    sha = write_requantized(WEIGHTS, out, margin={"hyper": 1.5, "synth": 1.25})
    doc = json.loads((out / "config.json").read_text())
    assert doc["precision"]["precision"] == "float32"
    assert doc["precision"]["margin"] == {"hyper": 1.5, "synth": 1.25}
    assert "export_check" not in doc  # it measured the source's decoder
    assert (out / "encoder.safetensors").read_bytes() == (WEIGHTS / "encoder.safetensors"
                                                         ).read_bytes()  # fmt: skip
    model = runtime.LearnedModel(out)
    assert model.weights_sha256 == sha != zoo.WEIGHTS.get("codec-he-shallow").sha256
    assert {f.dtype for f in model.hyper_fast + model.synth_fast} == {np.dtype(np.float32)}
    with pytest.raises(ValueError, match="new folder"):
        write_requantized(WEIGHTS, WEIGHTS)


# -- the shipped float32 folder ----------------------------------------------------------------


@needs_f32
def test_shipped_f32_folder_is_the_requantized_source():
    """codec-he-shallow-f32 = requantize(codec-he-shallow, its recorded channel peaks): the
    same layers and clips, to the bit; the encoder's bytes are the source's."""
    from slidepress.codecs.learned.export import requantize

    doc = json.loads((F32 / "config.json").read_text())
    rec = doc["precision"]
    assert rec["precision"] == "float32" and rec["clips"]["synth"] == "per channel"
    assert rec["requantized_from"]["weights_sha256"] == zoo.WEIGHTS.get(
        "codec-he-shallow").sha256  # fmt: skip
    peaks = {k: [np.asarray(p) for p in v] for k, v in rec["channel_peaks"].items()}
    dec, _ = requantize(WEIGHTS, rec["precision"], rec["fracs"], rec["margin"], peaks)
    want, got = dec.to_arrays(), IntDecoder.load(F32).to_arrays()
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (F32 / "encoder.safetensors").read_bytes() == (WEIGHTS / "encoder.safetensors"
                                                         ).read_bytes()  # fmt: skip
    # PSNR on the validation crops within 0.05 dB of the source at every level
    for row in doc["export_check"]:
        assert row["psnr"] > row["source_psnr"] - 0.05, row


@pytest.fixture(scope="module")
def f32_streams() -> tuple[list[bytes], list[str]]:
    """Streams for the float32 weights: real H&E tiles coded by them (several qualities and
    sizes), and valid headers followed by random ANS words (inputs driven to the clips)."""
    from .conftest import TILES

    if not TILES.is_dir():
        pytest.skip(f"shared lossless H&E tiles not found at {TILES}")
    pytest.importorskip("torch")  # the encoder
    from PIL import Image

    model = runtime.LearnedModel(F32)
    a = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES.glob("*.png"))[:3]]
    blobs = []
    for q, t in ((1, a[0][:256, :256]), (5.5, a[1][:256, :256]), (8, a[2][:128, :96])):
        blobs += model.encode_batch([np.ascontiguousarray(t)], q)
    rng = np.random.default_rng(5)
    for q16, (h, w) in ((16, (64, 64)), (128, (96, 64))):
        words = rng.integers(1, 2**32, 300, dtype=np.uint64).astype("<u4").tobytes()
        blobs.append(runtime.HEADER.pack(runtime.MAGIC, runtime.VERSION, q16, h, w) + words)
    want = [_digest(t) for t in _reference_model(F32).decode_batch(blobs, threads=1)]
    return blobs, want


@needs_f32
@pytest.mark.parametrize("threads", [1, 3])
def test_f32_decode_equals_the_reference_arithmetic(f32_streams, threads):
    blobs, want = f32_streams
    model = runtime.LearnedModel(F32)
    assert {f.dtype for f in model.hyper_fast + model.synth_fast} == {np.dtype(np.float32)}
    assert [_digest(t) for t in model.decode_batch(blobs, threads=threads)] == want


_CHILD = (
    PREAMBLE
    + """
import hashlib
from slidepress.codecs.learned.runtime import LearnedModel

with np.load(sys.argv[1]) as d:
    blobs = [bytes(d[f"b{i}"]) for i in range(int(d["n"]))]
out = LearnedModel(sys.argv[2]).decode_batch(blobs)
print(json.dumps({
    "digests": [hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest() for t in out],
    "torch": sorted(m for m in sys.modules
                    if m.split(".")[0] in BLOCKED and sys.modules[m] is not None),
}))
"""
)


@needs_f32
def test_f32_decode_in_another_process_without_torch(f32_streams, tmp_path):
    blobs, want = f32_streams
    path = tmp_path / "streams.npz"
    np.savez(path, n=len(blobs), **{f"b{i}": np.frombuffer(b, np.uint8)
                                    for i, b in enumerate(blobs)})  # fmt: skip
    env = dict(os.environ, SLIDEPRESS_DECODE_THREADS="2", OPENBLAS_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(F32)],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["torch"] == [] and result["digests"] == want


# -- the float64 format is unchanged -------------------------------------------------------------


def test_float64_folders_keep_their_layout():
    """An exported float64 decoder (no "clip" / "synth_in_clip" entries) loads with the
    +-2^15 clips it was made with, and writes back the same entries; a per-channel clip
    round-trips."""
    dec = IntDecoder.load(WEIGHTS)
    arrays = dec.to_arrays()
    with np.load(WEIGHTS / "decoder.npz") as z:
        assert sorted(arrays) == sorted(z.files)
    assert dec.synth_in_clip is None and dec.synth_in_bound == 2.0**15
    assert [L.clip for L in dec.synth] == [2.0**15, None]
    clips = np.arange(1.0, dec.synth[0].cout + 1)
    dec.synth[0].clip = clips
    dec.synth_in_clip = np.full(dec.synth[0].weight.shape[0], 77.0)
    back = IntDecoder.from_arrays(dec.to_arrays())
    np.testing.assert_array_equal(back.synth[0].clip, clips)
    np.testing.assert_array_equal(back.synth_in_bound, dec.synth_in_clip)


def test_float32_export_from_a_float_model(tmp_path):
    """export(precision="float32") from a float model: every layer float32, decoded pixels
    within rounding of the float64 export's, the choice recorded in config.json."""
    torch = pytest.importorskip("torch")
    from slidepress.codecs.learned.export import export
    from slidepress.codecs.learned.model import CodecConfig, CodecNet

    torch.manual_seed(0)
    cfg = CodecConfig(n=16, m=16, z=8, hyper=16, latent_stride=8, synthesis=(16,),
                      lambdas=(0.01, 0.1))  # fmt: skip
    net = CodecNet(cfg).eval()
    rng = np.random.default_rng(0)
    tiles = np.clip(rng.normal(170, 40, (4, 64, 64, 3)), 0, 255).astype(np.uint8)
    calib = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    out = {}
    for precision in ("float64", "float32"):
        export(net, calib, tmp_path / precision, {}, precision)
        doc = json.loads((tmp_path / precision / "config.json").read_text())
        assert doc["precision"]["precision"] == precision
        model = runtime.LearnedModel(tmp_path / precision)
        dtypes = {f.dtype for f in model.hyper_fast + model.synth_fast}
        if precision == "float32":
            assert dtypes == {np.dtype(np.float32)}
            assert doc["precision"]["clips"]["synth"] == "per channel"
        blobs = model.encode_batch(list(tiles), 2)
        out[precision] = np.stack(model.decode_batch(blobs)).astype(int)
        reference = _reference_model(tmp_path / precision).decode_batch(blobs, threads=1)
        np.testing.assert_array_equal(out[precision], np.stack(reference))
    assert np.abs(out["float32"] - out["float64"]).mean() < 0.5
