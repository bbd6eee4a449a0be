"""The learned codec's per-tile guard (codecs/learned/codec.py): on tiles it was not trained
for (DAB-like IHC made from H&E in HED space, flat, noise, dark fluorescence-like) the rate
rises with quality and stays within 5 % of `jpegxl` at equal pooled PSNR; guard tiles decode
bit-exactly in another process and thread count; tiles written before the guard (and with
`guard=False`) still decode."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from slidepress.codecs import get_codec
from slidepress.codecs.learned.codec import is_guard_tile
from slidepress.errors import CodecError
from slidepress.synthetic import stress_tiles as stress

from .conftest import TILES, needs_tiles

QUALITIES = (1, 2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="module")
def he() -> list[np.ndarray]:
    if not TILES.is_dir():
        pytest.skip(f"shared lossless H&E tiles not found at {TILES}")
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(TILES.glob("*.png"))]
    return stress.he_crops(imgs, per_image=1)[:6]


def _sets(he: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    return {"dab": stress.dab_like(he), "flat": stress.flat_tiles(),
            "noise": stress.noise_tiles(), "he": he}  # fmt: skip


def _code(tiles: list[np.ndarray], q: float) -> tuple[list[bytes], list[np.ndarray]]:
    c = get_codec("learned", q)
    blobs = c.encode_batch(tiles)
    return blobs, c.decode_batch(blobs, shape=tiles[0].shape)


@needs_tiles
@pytest.mark.parametrize("name", ["dab", "flat", "noise", "he"])
def test_rate_monotonic_and_within_5pct_of_jpegxl(he, name):
    tiles = _sets(he)[name]
    rows = stress.sweep(_code, tiles, QUALITIES)
    sizes = [r["bytes"] for r in rows]
    assert all(a <= b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), (
        sizes
    )  # never fewer bits for more q
    worst = max(r["vs_jpegxl"] for r in rows)
    assert worst <= 0.05, [(r["quality"], round(100 * r["vs_jpegxl"], 1)) for r in rows]


@needs_tiles
def test_guard_pixels_are_the_decoders(he):
    """The distortion the guard weighs is that of the pixels a decoder gives."""
    c = get_codec("learned", 2.5)
    tiles = he[:3] + stress.dab_like(he[:2]) + [he[0][:77, :100]]
    for group in (tiles[:5], tiles[5:]):
        blobs, pixels = c.model.encode_batch_pixels(group, c.quality)
        for p, d in zip(pixels, c.model.decode_batch(blobs), strict=True):
            np.testing.assert_array_equal(p, d)


@needs_tiles
def test_old_and_unguarded_tiles_still_decode(he):
    plain = get_codec("learned", 4, guard=False)
    guarded = get_codec("learned", 4)
    tiles = he[:2] + stress.flat_tiles()[:1]
    old = plain.encode_batch(tiles)  # the format written before the guard existed
    assert all(b[:3] == b"SL\x01" for b in old)
    assert "guard" in plain.describe()["params"] and "guard" not in plain.describe()
    ref = plain.model.decode_batch(old)
    for a, b in zip(guarded.decode_batch(old, shape=(256, 256, 3)), ref, strict=True):
        np.testing.assert_array_equal(a, b)
    new = guarded.encode_batch(tiles)
    assert is_guard_tile(new[2]) and not is_guard_tile(new[0])  # flat -> JPEG-XL
    assert new[0] == old[0]  # a tile the learned codec wins keeps its bytes exactly
    d = guarded.describe()["guard"]
    assert d["tiles"]["jpegxl"] >= 1 and d["fallback"] == "jpegxl"


def test_damaged_guard_tiles_are_refused():
    c = get_codec("learned", 3)
    good = c.encode(np.full((64, 64, 3), 240, np.uint8))
    assert is_guard_tile(good)
    with pytest.raises(CodecError):
        c.decode(good[:5])
    with pytest.raises(CodecError, match="is not"):
        c.decode(good, shape=(32, 32, 3))
    with pytest.raises(CodecError):
        c.decode(good[:2] + b"\x00" * 20)


_CHILD = """
import hashlib, sys, numpy as np
from slidepress.codecs import get_codec
d = np.load(sys.argv[1], allow_pickle=False)
blobs = [bytes(d[f"b{i}"]) for i in range(int(d["n"]))]
out = get_codec("learned", 1).decode_batch(blobs)
h = hashlib.sha256()
for t in out:
    h.update(np.ascontiguousarray(t).tobytes())
print(h.hexdigest(), "torch" in sys.modules)
"""


@needs_tiles
def test_guarded_stream_bit_exact_in_other_processes_and_threads(he, tmp_path):
    c = get_codec("learned", 3)
    tiles = he[:2] + stress.dab_like(he[2:4]) + stress.flat_tiles()[:2] + stress.noise_tiles()[:1]
    blobs = c.encode_batch(tiles)
    assert c.encode_batch(tiles) == blobs
    assert any(map(is_guard_tile, blobs)) and not all(map(is_guard_tile, blobs))
    h = hashlib.sha256()
    for t in c.decode_batch(blobs):
        h.update(np.ascontiguousarray(t).tobytes())
    np.savez(tmp_path / "in.npz", n=len(blobs),
             **{f"b{i}": np.frombuffer(b, np.uint8) for i, b in enumerate(blobs)})  # fmt: skip
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))  # fmt: skip
        r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "in.npz")],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        digest, torch_loaded = r.stdout.split()
        assert digest == h.hexdigest()
        assert torch_loaded == "False"  # decoding, guard tiles included, needs no torch
