"""A container (.spz) as a slide source: the `spz` reader, and commands that take it as a SLIDE."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidepress.errors import SlideError, UsageError
from slidepress.pipeline import CompressOptions, compress_slide, decompress_container
from slidepress.pipeline.provenance import content_sha256
from slidepress.slide import READERS, open_slide
from slidepress.slide.discovery import slide_suffixes
from slidepress.slide.spz_reader import SpzReader
from slidepress.store.container import Container, ContainerWriter, TileCache, tile_name
from slidepress.store.manifest import FORMAT_NAME, FORMAT_VERSION


@pytest.fixture(scope="module")
def spz(tmp_path_factory):
    from slidepress.slide import sample_slide_path

    out = tmp_path_factory.mktemp("spz") / "sample.spz"
    compress_slide(sample_slide_path(), out, CompressOptions(codec="jpegxl", quality=80))
    return out


def _lossless_levels(container, tmp_path):
    tiff = decompress_container(container, tmp_path / "x.tiff", lossless=True)
    with tifffile.TiffFile(tiff) as tf:
        return [page.asarray() for page in tf.pages]


def test_registered_and_chosen_automatically(spz):
    assert "spz" in READERS and ".spz" in slide_suffixes()
    assert SpzReader.can_open(spz)
    with open_slide(spz) as r:
        assert r.info.reader == "spz" and r.info.vendor == "slidepress"
        with Container(spz) as c:
            assert r.mpp == pytest.approx(c.manifest["mpp"]) and r.mpp_source == "file"
            assert r.info.level_count == len(c.levels)
            assert r.info.dimensions == (c.levels[0].width, c.levels[0].height)
        props = r.info.properties
        assert props["slidepress.codec.name"] == "jpegxl"
        assert props["slidepress.background.policy"] == "skip"
        assert props["slidepress.source.name"] == "CMU-1-Small-Region.svs"
    # a container's content key is its file's, as for any slide
    assert content_sha256(spz) == hashlib.sha256(spz.read_bytes()).hexdigest()


def test_pixels_equal_lossless_decompress_at_every_level(spz, tmp_path):
    levels = _lossless_levels(spz, tmp_path)
    with open_slide(spz) as r:
        assert len(levels) == r.info.level_count
        for level, want in enumerate(levels):
            w, h = r.info.level_dimensions[level]
            np.testing.assert_array_equal(r.read_region((0, 0), level, (w, h)), want)
        # an unaligned region straddling tiles, at level 1, in level-0 coordinates
        ds = r.info.level_downsamples[1]
        got = r.read_region((round(300 * ds), round(200 * ds)), 1, (333, 291))
        np.testing.assert_array_equal(got, levels[1][200:491, 300:633])
        # outside the slide: white, as for every reader
        edge = r.read_region((r.info.dimensions[0] - 10, 0), 0, (20, 4))
        assert (edge[:, 10:] == 255).all()
        np.testing.assert_array_equal(edge[:, :10], levels[0][:4, -10:])


def test_batched_codec_through_the_cache(tmp_path):
    """A neural codec (batched decode): the reader equals lossless decompress, and a second
    read of the same region decodes nothing."""
    from slidepress.slide import sample_slide_path

    out = tmp_path / "learned.spz"
    compress_slide(sample_slide_path(), out, CompressOptions(codec="learned", mpp=4.0))
    levels = _lossless_levels(out, tmp_path)
    with open_slide(out) as r:
        assert r.container.codec.batched
        w, h = r.info.dimensions
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (w, h)), levels[0])
        calls = []
        decode = r.container.codec.decode_batch
        r.container.codec.decode_batch = lambda *a, **k: calls.append(1) or decode(*a, **k)
        r.read_region((0, 0), 0, (w, h))
        assert calls == [] and len(r.cache) > 0


def test_constant_background_fills_glass(tmp_path):
    from slidepress.slide import sample_slide_path

    out = tmp_path / "const.spz"
    compress_slide(
        sample_slide_path(), out, CompressOptions(background="constant", tile=128, mpp=1.0)
    )
    levels = _lossless_levels(out, tmp_path)
    with open_slide(out) as r, Container(out) as c:
        assert c.background == "constant"
        glass = [(row, col) for row in range(c.levels[0].rows) for col in range(c.levels[0].cols)
                 if not c.has_tile(0, row, col)]  # fmt: skip
        assert glass, "the sample has glass tiles"
        row, col = glass[0]
        t = c.tile
        w, h = c.levels[0].width, c.levels[0].height
        tw, th = min(t, w - col * t), min(t, h - row * t)
        got = r.read_region((col * t, row * t), 0, (tw, th))
        np.testing.assert_array_equal(got, c.background_tile()[:th, :tw])
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (w, h)), levels[0])


def _rewrite(src, dst, edit_manifest=None, drop=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename == drop:
                continue
            data = zin.read(info.filename)
            if info.filename == "manifest.json" and edit_manifest:
                m = json.loads(data)
                edit_manifest(m)
                data = json.dumps(m).encode()
            zout.writestr(info.filename, data)


def test_tampered_containers_are_refused_as_slides(spz, tmp_path):
    from slidepress.errors import ContainerError

    with Container(spz) as c:
        first = tile_name(0, *c.stored_tiles(0)[0], c.codec.suffix)
    cases = {
        "dropped.spz": dict(drop=first),
        "levels.spz": dict(edit_manifest=lambda m: m["levels"][0].update(rows=1)),
        "format.spz": dict(edit_manifest=lambda m: m.update(format_version=99)),
    }
    for name, edit in cases.items():
        bad = tmp_path / name
        _rewrite(spz, bad, **edit)
        with pytest.raises(ContainerError) as today:
            Container(bad)
        with pytest.raises(SlideError) as as_slide:
            open_slide(bad)
        assert str(as_slide.value) == str(today.value)
    junk = tmp_path / "junk.spz"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(SlideError, match="junk.spz"):
        open_slide(junk)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(SlideError, match="no manifest.json"):
        open_slide(plain)


def test_transcode_to_another_codec_and_refuse_own_input(spz, tmp_path):
    out = tmp_path / "webp.spz"
    res = compress_slide(spz, out, CompressOptions(codec="webp", quality=85))
    assert res.psnr > 30
    with Container(out) as c:
        assert c.codec.name == "webp"
        assert c.manifest["source"]["reader"] == "spz"
        assert c.manifest["source"]["sha256"] == content_sha256(spz)
        assert c.manifest["mpp"] == pytest.approx(Container(spz).manifest["mpp"])
    with pytest.raises(UsageError, match="input"):
        compress_slide(out, out, CompressOptions(codec="jpeg", overwrite=True))


def test_cli_info_shows_codec(spz, tmp_path):
    from typer.testing import CliRunner

    from slidepress.cli.main import app

    thumb = tmp_path / "t.png"
    res = CliRunner().invoke(app, ["info", str(spz), "--thumbnail", str(thumb)])
    assert res.exit_code == 0, res.output
    assert "codec: jpegxl" in res.output and "spz" in res.output
    assert Image.open(thumb).size[1] <= 1024
    res = CliRunner().invoke(app, ["info", str(spz), "--json"])
    d = json.loads(res.output)
    assert d["reader"] == "spz" and d["container"]["codec"] == "jpegxl" and d["mpp_plausible"]


def _large_container(path, side=24_576, tile=256):
    """A 24576^2 px (600 Mpx) container whose level-0 tiles all hold one small JPEG: 9216
    tiles in a few MB, written directly (no slide needed); upper levels are glass (skip)."""
    from slidepress.codecs import get_codec

    codec = get_codec("jpeg", 50)
    rng = np.random.default_rng(0)
    data = codec.encode(rng.integers(100, 200, (tile, tile, 3), dtype=np.uint8))
    levels, w, k = [], side, 0
    while True:
        n = -(-w // tile)
        levels.append({"index": k, "width": w, "height": w, "rows": n, "cols": n,
                       "downsample": float(2**k), "mpp": 0.5 * 2**k})  # fmt: skip
        if w <= tile:
            break
        w, k = -(-w // 2), k + 1
    writer = ContainerWriter(path, codec)
    n0 = levels[0]["rows"]
    for row in range(n0):
        for col in range(n0):
            writer.add_tile(0, row, col, data)
    writer.close({
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tile_size": tile,
        "mpp": 0.5, "levels": levels, "codec": codec.describe(),
        "background": {"policy": "skip"},
        "tiles": {"stored": n0 * n0, "total": sum(lv["rows"] * lv["cols"] for lv in levels)},
    })  # fmt: skip
    return path


def test_memory_stays_bounded_on_a_large_container(tmp_path):
    import psutil

    path = _large_container(tmp_path / "large.spz")
    proc = psutil.Process(os.getpid())
    with open_slide(path) as r:
        r.cache = TileCache(8 << 20)  # 42 tiles of 256 px
        rng = np.random.default_rng(1)
        w, h = r.info.dimensions
        r.read_region((0, 0), 0, (1024, 1024))  # warm up the allocator
        before = proc.memory_info().rss
        peak = 0
        for _ in range(300):  # 300 x 1 Mpx scattered reads: ~4,800 tiles, 940 MB decoded
            x, y = int(rng.integers(0, w - 1024)), int(rng.integers(0, h - 1024))
            r.read_region((x, y), 0, (1024, 1024))
            assert r.cache.bytes <= r.cache.max_bytes
            peak = max(peak, proc.memory_info().rss - before)
        assert peak < 120 << 20, f"RSS grew {peak / 2**20:.0f} MB"
        thumb, _ = r.thumbnail(256)  # the deepest level: glass, white, nothing decoded
        assert thumb.shape[:2] == (256, 256) and (thumb == 255).all()


def test_tile_cache_evicts_least_recent():
    c = TileCache(3 * 16 * 16 * 3)
    tiles = {k: np.full((16, 16, 3), k, np.uint8) for k in range(4)}
    for k in range(3):
        c.put((0, 0, k), tiles[k])
    assert c.get((0, 0, 0)) is not None  # now most recent
    c.put((0, 0, 3), tiles[3])  # evicts (0, 0, 1)
    assert c.get((0, 0, 1)) is None and c.get((0, 0, 0)) is not None
    assert len(c) == 3 and c.bytes == c.max_bytes
    with pytest.raises(ValueError):
        c.get((0, 0, 0))[0, 0, 0] = 1  # read-only: shared with later reads


def test_encode_and_read_a_container(spz, tmp_path):
    from typer.testing import CliRunner

    from slidepress.cli.main import app

    res = CliRunner().invoke(app, ["encode", str(spz), "-o", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g" / "sample.zarr").exists()
