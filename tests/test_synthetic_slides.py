"""The pyramids the reader and tiling tests write (slidepress.synthetic.slides): what the file
holds must be what the writer was asked for, or those tests would test the wrong thing."""

from __future__ import annotations

import numpy as np
import pytest

from slidepress.slide import open_slide
from slidepress.synthetic.slides import pyramid_levels, tissue_texture, write_pyramid_tiff


def test_texture_is_deterministic_tissue_on_glass():
    a, b = tissue_texture(200, 300, seed=1), tissue_texture(200, 300, seed=1)
    assert a.shape == (200, 300, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tissue_texture(200, 300, seed=2))
    glass = np.abs(a.astype(int) - [236, 234, 240]).max(axis=2) <= 12  # noise sigma 3
    assert 0.2 < glass.mean() < 0.8  # both glass and stained areas


def test_levels_halve_by_box_average_until_small():
    img = tissue_texture(700, 1001)
    levels = pyramid_levels(img, min_side=200)
    assert [lv.shape[:2] for lv in levels] == [(700, 1001), (350, 500), (175, 250), (87, 125)]
    h, w = levels[1].shape[:2]
    box = img[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(levels[1] - box).max() <= 1  # rounding only
    assert len(pyramid_levels(img, levels=2)) == 2
    with pytest.raises(ValueError, match="cannot halve"):
        pyramid_levels(np.zeros((4, 4, 3), np.uint8), levels=4)


def test_written_pyramid_pages_tags_and_pixels(tmp_path):
    import tifffile

    img = tissue_texture(300, 520)
    path = write_pyramid_tiff(tmp_path / "p.tiff", img, mpp=0.25, levels=3, compression="zlib")
    with tifffile.TiffFile(path) as tf:
        pages = list(tf.pages)
        assert len(pages) == 3
        assert [p.shape[:2] for p in pages] == [(300, 520), (150, 260), (75, 130)]
        assert all(p.is_tiled and p.compression == 8 for p in pages)  # deflate
        assert [p.subfiletype for p in pages] == [0, 1, 1]
        np.testing.assert_array_equal(pages[0].asarray(), img)  # lossless
        for i, p in enumerate(pages):
            xres = p.tags["XResolution"].value
            assert 1e4 / (xres[0] / xres[1]) == pytest.approx(0.25 * 2**i)  # um per px
    jpeg = write_pyramid_tiff(tmp_path / "j.tiff", img, levels=2, quality=80)
    with tifffile.TiffFile(jpeg) as tf:
        assert tf.pages[0].compression == 7  # JPEG
        diff = np.abs(tf.pages[0].asarray().astype(int) - img).mean()
        assert 0 < diff < 5  # lossy, but close
    with open_slide(jpeg) as s:  # no mpp asked: the file gives none
        assert s.info.mpp is None and s.mpp is None
