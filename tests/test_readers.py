from __future__ import annotations

import numpy as np
import openslide
import pytest

from slidepress.errors import MppError, SlideError
from slidepress.slide import open_slide
from slidepress.slide.mpp import load_mpp_csv, lookup_override, resolve_mpp

from .conftest import needs_shared

# (file, reader, dimensions, level count, mpp) — from the shared data README.
EXPECTED = [
    ("CMU-1-Small-Region.svs", "openslide", (2220, 2967), 1, 0.499),
    ("CMU-1-Small-Region_pyramid_jpeg90.tiff", "openslide", (2220, 2967), 4, 0.499),
    ("CropBreastSlide.tiff", "openslide", (2033, 1525), 6, None),  # bogus ~264 um/px
    ("CMU-1-Small-Region-dicom", "wsidicom", (2220, 2967), 5, 0.499),
]


@needs_shared
@pytest.mark.parametrize(("name", "reader", "dims", "levels", "mpp"), EXPECTED)
def test_shared_slides_open_with_right_geometry(shared_slides, name, reader, dims, levels, mpp):
    with open_slide(shared_slides / name) as s:
        assert s.info.reader == reader
        assert s.info.dimensions == dims
        assert s.info.level_count == levels
        if mpp is None:
            with pytest.raises(MppError, match="implausible.*--mpp-override"):
                resolve_mpp(s.info)
            assert resolve_mpp(s.info, override=0.5) == 0.5
        else:
            assert resolve_mpp(s.info) == pytest.approx(mpp)
        region = s.read_region((1000, 1000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8


@needs_shared
def test_backends_read_the_same_place(shared_slides):
    """tiffslide must equal tifffile's own decode exactly at every level; OpenSlide decodes
    level 0 identically and reduced levels with a different JPEG chroma path (~5 grey levels),
    but at the same position (a one-pixel shift would cost ~35)."""
    import tifffile

    path = shared_slides / "CMU-1-Small-Region_pyramid_jpeg90.tiff"
    series = tifffile.TiffFile(path).series[0]
    with open_slide(path, reader="openslide") as a, open_slide(path, reader="tiffslide") as b:
        for level in (0, 1, 2, 3):
            ds = a.info.level_downsamples[level]
            lx, ly = round(900 / ds), round(1300 / ds)
            ref = series.levels[level].asarray()[ly : ly + 40, lx : lx + 50].astype(int)
            ra = a.read_region((900, 1300), level, (50, 40)).astype(int)
            rb = b.read_region((900, 1300), level, (50, 40)).astype(int)
            np.testing.assert_array_equal(rb, ref)
            assert np.abs(ra - ref).mean() < (0.01 if level == 0 else 8.0)


@needs_shared
def test_dicom_low_levels_have_true_colours(shared_slides):
    """The shared DICOM's levels 1-4 are JFIF (YCbCr) tagged RGB; we must decode them right."""
    with open_slide(shared_slides / "CMU-1-Small-Region-dicom") as d:
        dthumb, _ = d.thumbnail(280)
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as s:
        sthumb, _ = s.thumbnail(280)
    h, w = min(dthumb.shape[0], sthumb.shape[0]), min(dthumb.shape[1], sthumb.shape[1])
    diff = np.abs(dthumb[:h, :w].astype(int) - sthumb[:h, :w].astype(int)).mean()
    assert diff < 12, f"DICOM thumbnail colours off by {diff:.1f} grey levels on average"


def test_sample_read_matches_openslide(sample_svs):
    with open_slide(sample_svs) as s:
        ours = s.read_region((500, 700), 0, (128, 96))
    ref = np.asarray(openslide.OpenSlide(str(sample_svs)).read_region((500, 700), 0, (128, 96)))
    assert (ref[..., 3] == 255).all()
    np.testing.assert_array_equal(ours, ref[..., :3])


def test_region_outside_slide_is_white(sample_svs):
    with open_slide(sample_svs) as s:
        w, h = s.info.dimensions
        r = s.read_region((w - 10, h - 20), 0, (30, 40))
    assert r.shape == (40, 30, 3)
    assert (r[25:, :] == 255).all() and (r[:, 15:] == 255).all()
    assert not (r[:20, :10] == 255).all()


def test_plain_image_reader(tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    with open_slide(tmp_path / "x.png") as s:
        assert s.info.reader == "image" and s.info.dimensions == (200, 300)
        assert s.info.mpp is None
        np.testing.assert_array_equal(s.read_region((10, 20), 0, (50, 40)), img[20:60, 10:60])
        with pytest.raises(MppError, match="no resolution"):
            resolve_mpp(s.info)


@pytest.mark.parametrize(
    "content", [b"", b"hello world\n", bytes(range(256)) * 40, b"II*\x00" + b"\x00" * 64]
)
def test_garbage_files_raise_slide_error(tmp_path, content):
    p = tmp_path / "bad.svs"
    p.write_bytes(content)
    with pytest.raises(SlideError):
        open_slide(p)


def test_mpp_csv(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("slide,mpp\nCropBreastSlide.tiff,0.25\nother,0.5\n")
    table = load_mpp_csv(csv)
    from pathlib import Path

    assert lookup_override(Path("/x/CropBreastSlide.tiff"), table) == 0.25
    assert lookup_override(Path("/x/other.svs"), table) == 0.5
    assert lookup_override(Path("/x/none.svs"), table) is None
    csv.write_text("slide,mpp\na,264\n")
    with pytest.raises(Exception, match="outside"):
        load_mpp_csv(csv)


def test_blockwise_thumbnail_matches_whole_resize(sample_svs, monkeypatch):
    import slidepress.slide.base as base

    with open_slide(sample_svs) as s:
        whole, ds = s.thumbnail(700)
        monkeypatch.setattr(base, "THUMBNAIL_READ_SIDE", 256)  # force many small blocks
        blocks, ds2 = s.thumbnail(700)
    assert whole.shape == blocks.shape and max(whole.shape) <= 700 and ds == ds2
    assert np.abs(whole.astype(int) - blocks.astype(int)).mean() < 3
