"""The learned codec (codecs/learned): real tiles through real bytes, exact integer decoding
(same pixels in other processes and thread counts), the encoder's bitstream is stable, batches
equal single tiles, odd sizes, damaged streams and other weights are refused, and the codec
inside compress / decompress gives a slide OpenSlide opens."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidepress.codecs import get_codec
from slidepress.codecs.learned import codec as learned_codec
from slidepress.codecs.learned.exact import tconv_exact
from slidepress.errors import CodecError, ContainerError

from .conftest import TILES, check_refuses_damaged, needs_tiles, psnr


@pytest.fixture(scope="module")
def he_tiles() -> list[np.ndarray]:
    """Four 256 px tiles of real H&E the codec never saw in training."""
    if not TILES.is_dir():
        pytest.skip(f"shared lossless H&E tiles not found at {TILES}")
    out = []
    for p in sorted(TILES.glob("*.png"))[:4]:
        a = np.asarray(Image.open(p).convert("RGB"))
        out.append(np.ascontiguousarray(a[:256, :256]))
    return out


def digest(tiles: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for t in tiles:
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


# -- exact arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "s"), [(4, 2), (8, 4), (2, 2), (1, 1)])
def test_exact_transposed_convolution_matches_torch(k, s):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(k * 10 + s)
    x = rng.integers(-(2**15), 2**15, (2, 5, 6, 7)).astype(np.float64)
    w = rng.integers(-(2**11), 2**11, (7, k, k, 3)).astype(np.float64)
    got = tconv_exact(x, w, s)
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        torch.from_numpy(w).permute(0, 3, 1, 2),
        stride=s,
        padding=(k - s) // 2,
    )
    np.testing.assert_array_equal(got, ref.permute(0, 2, 3, 1).numpy())
    assert np.all(got == np.round(got))  # integers, summed exactly


# -- the codec on real tiles ------------------------------------------------------------------


@needs_tiles
def test_real_tiles_round_trip_through_bytes(he_tiles):
    sizes, quality = [], []
    for q in (1, 4, 8):
        c = get_codec("learned", q)
        blobs = c.encode_batch(he_tiles)
        assert all(isinstance(b, bytes) for b in blobs)
        out = c.decode_batch([bytes(b) for b in blobs], shape=(256, 256, 3))
        assert all(o.shape == (256, 256, 3) and o.dtype == np.uint8 for o in out)
        sizes.append(sum(map(len, blobs)))
        quality.append(np.mean([psnr(a, b) for a, b in zip(he_tiles, out, strict=True)]))
    raw = 4 * 256 * 256 * 3
    assert sizes[0] < sizes[1] < sizes[2] < raw / 4  # higher quality, more bytes; compressed
    assert quality[0] < quality[1] < quality[2]
    assert quality[2] > 30, quality  # a real codec, not noise


@needs_tiles
def test_batch_equals_one_by_one(he_tiles):
    c = get_codec("learned", 5)
    batch = c.encode_batch(he_tiles)
    single = [c.encode(t) for t in he_tiles]
    assert batch == single
    dec_batch = c.decode_batch(batch)
    for b, t in zip(batch, dec_batch, strict=True):
        np.testing.assert_array_equal(c.decode(b), t)


def test_odd_sizes_and_mixed_batches():
    rng = np.random.default_rng(0)
    base = np.full((300, 300, 3), (200, 120, 180), np.uint8)
    base += rng.integers(0, 30, base.shape, dtype=np.uint8)
    tiles = [base[:77, :100], base[:256, :256], base[:1, :33], base[:77, :100].copy()]
    c = get_codec("learned", 3)
    out = c.decode_batch(c.encode_batch(tiles))
    for t, o in zip(tiles, out, strict=True):
        assert o.shape == t.shape
        assert psnr(t, o) > 20


def test_damaged_streams_are_refused():
    c = get_codec("learned", 4)
    tile = np.full((64, 64, 3), 180, np.uint8)
    good = c.encode(tile)
    check_refuses_damaged(c, good)
    forged = bytearray(good)
    forged[5:9] = (60000).to_bytes(2, "little") * 2  # 60000 x 60000 declared
    with pytest.raises(CodecError):
        c.decode(bytes(forged), shape=(64, 64, 3))


# -- determinism ----------------------------------------------------------------------------

_CHILD = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from slidepress.codecs import get_codec
d = np.load(sys.argv[1], allow_pickle=False)
tiles = [d[f"t{i}"] for i in range(int(d["n"]))]
blobs = [bytes(d[f"b{i}"]) for i in range(int(d["n"]))]
c = get_codec("learned", 6)
out = c.decode_batch(blobs)
h = hashlib.sha256()
for t in out:
    h.update(np.ascontiguousarray(t).tobytes())
enc = hashlib.sha256(b"".join(c.encode_batch(tiles))).hexdigest()
print(h.hexdigest(), enc)
"""


@needs_tiles
def test_bit_exact_across_processes_and_thread_counts(he_tiles, tmp_path):
    c = get_codec("learned", 6)
    blobs = c.encode_batch(he_tiles)
    assert c.encode_batch(he_tiles) == blobs  # the same bitstream on every run
    here = digest(c.decode_batch(blobs))
    arrays = {f"t{i}": t for i, t in enumerate(he_tiles)}
    arrays |= {f"b{i}": np.frombuffer(b, np.uint8) for i, b in enumerate(blobs)}
    np.savez(tmp_path / "in.npz", n=len(blobs), **arrays)
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "in.npz"), str(threads)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        results[threads] = r.stdout.split()
    assert results[1][0] == results[2][0] == here  # decoded pixels: identical everywhere
    enc_here = hashlib.sha256(b"".join(blobs)).hexdigest()
    assert results[2][1] == enc_here  # another process, same threads: the same bitstream


# -- containers: the weights are part of the format -------------------------------------------


def _copy_weights(dst: Path) -> Path:
    shutil.copytree(learned_codec.WEIGHTS, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_container_refuses_other_weights(sample_svs, tmp_path, monkeypatch):
    from slidepress.pipeline.compress import CompressOptions, compress_slide
    from slidepress.store.container import Container

    def edit(weights: Path) -> None:  # other weights (retrained, edited)
        dec = dict(np.load(weights / "decoder.npz"))
        dec["synth.0.bias"] = dec["synth.0.bias"] + 1
        with open(weights / "decoder.npz", "wb") as f:
            np.savez(f, **dec)

    weights = _copy_weights(tmp_path / "w")
    edit(weights)  # weights no shipped folder holds: a container finds no other folder
    monkeypatch.setattr(learned_codec, "WEIGHTS", weights)
    learned_codec._MODELS.clear()
    try:
        out = tmp_path / "s.spz"
        compress_slide(sample_svs, out, CompressOptions(codec="learned", quality=2, tile=512))
        sha = learned_codec.load_model().weights_sha256
        with Container(out) as ct:
            assert ct.manifest["codec"]["model"]["weights_sha256"] == sha
            assert ct.read_region(0, 0, 600, 600).shape == (600, 600, 3)
        # the folder now holds other weights again: decoding must refuse
        edit(weights)
        learned_codec._MODELS.clear()
        with pytest.raises(ContainerError, match="other weights"):
            Container(out)
    finally:
        learned_codec._MODELS.clear()


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "slidepress", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_compress_decompress_sample_slide_cli(tmp_path):
    import openslide

    spz, tiff = tmp_path / "s.spz", tmp_path / "s.tiff"
    r = _cli("compress", "@sample", "-o", spz, "--codec", "learned", "--quality", "5")
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stderr
    r = _cli("decompress", spz, "-o", tiff)
    assert r.returncode == 0, r.stderr
    s = openslide.OpenSlide(str(tiff))
    assert s.dimensions == (2220, 2967)
    region = np.asarray(s.read_region((1000, 1000), 0, (256, 256)))[..., :3]
    assert region.std() > 5  # tissue, not a blank page


# -- training and export ----------------------------------------------------------------------


@pytest.mark.parametrize(("stride", "synthesis"), [(8, (16,)), (16, (16, 16))])
def test_train_resume_export_and_fixed_point_decoder_match_float(tmp_path, stride, synthesis):
    """A tiny model trained a few steps, resumed, exported: the shipped integer decoder gives
    the float model's pixels (to rounding) and real bytes close to the rate estimate."""
    torch = pytest.importorskip("torch")
    from slidepress.codecs.learned.export import export
    from slidepress.codecs.learned.model import CodecConfig, CodecNet
    from slidepress.codecs.learned.runtime import LearnedModel
    from slidepress.training.checkpoint import load_checkpoint
    from slidepress.training.learned_codec import TrainSettings, train_codec
    from slidepress.training.samplers import CropSampler

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(170, 40, (200, 200, 3)), 0, 255).astype(np.uint8)
    sampler = CropSampler([([img], 1.0)], seed=0)
    val = sampler.batch(4)
    cfg = CodecConfig(n=16, m=16, z=8, hyper=16, latent_stride=stride, synthesis=synthesis,
                      lambdas=(0.01, 0.1))  # fmt: skip
    s = TrainSettings(steps=3, batch=2, checkpoint_every=3, threads=1)
    run = tmp_path / "run"
    train_codec(cfg, sampler, val, run, s, log=lambda _: None)
    s.steps = 5
    train_codec(cfg, sampler, val, run, s, resume=True, log=lambda _: None)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 5
    net = CodecNet(cfg)
    net.load_state_dict(state["models"]["net"])
    net.eval()
    export(net, sampler.batch(8), tmp_path / "w", {"training": {"steps": 5}})
    model = LearnedModel(tmp_path / "w")
    tiles = (val.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for q in (1, 2):
        got = np.stack(model.decode_batch(model.encode_batch(list(tiles), q))).astype(int)
        with torch.no_grad():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
            want = net(x, torch.full((len(x),), q - 1))["x_hat"].clamp(0, 1) * 255
        want = want.round().permute(0, 2, 3, 1).numpy().astype(int)
        assert np.abs(got - want).mean() < 0.5  # fixed point: within rounding on average


# -- bench codecs: the learned codec is timed per batch -----------------------------------------


@needs_tiles
def test_bench_codecs_times_batched_codecs_per_batch(tmp_path):
    from slidepress.bench.codecs import DEFAULT_CODECS, DEFAULT_QUALITIES, run_codec_benchmark

    assert "learned" in DEFAULT_CODECS and DEFAULT_QUALITIES["learned"] == [1, 2, 3, 4, 5, 6, 7, 8]
    res = run_codec_benchmark(
        [TILES / "tiatoolbox_target.png"], tmp_path / "rep", ["jpeg", "learned"],
        {"jpeg": [80], "learned": [2, 5]}, tile=256, max_tiles_per_input=6, threads=2,
        feature_similarity=False, embedding_encoder="none",
    )  # fmt: skip
    by = {(r["codec"], r["quality"]): r for r in res.rows}
    assert by["learned", 2.0]["timed_batch"] == 32 and by["jpeg", 80.0]["timed_batch"] == 1
    assert by["learned", 2.0]["bytes"] < by["learned", 5.0]["bytes"]
    for r in res.rows:
        assert 0 < r["encode_ms"] < 1e4 and 0 < r["decode_ms"] < 1e4
