"""The grid at a target mpp (level choice, cell boxes, block reads) and tissue detection, on the
bundled sample slide, pyramids written here, and the shared slides when present."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidepress.errors import UsageError
from slidepress.slide import open_slide
from slidepress.slide.tissue import detect_tissue, segment_tissue
from slidepress.synthetic.slides import tissue_texture, write_pyramid_tiff
from slidepress.tiling import GridSpec, plan_grid

from .conftest import needs_shared


def expected_shape(w0, h0, slide_mpp, level_downsamples, spec, tol=0.025):
    """The README's grid-size rule, written out independently of slidepress.tiling."""
    f = spec.mpp / slide_mpp
    ds = max(d for d in level_downsamples if d <= f * (1 + tol))
    scale = ds if abs(f / ds - 1) <= tol else f
    wt, ht = math.floor(w0 / scale), math.floor(h0 / scale)
    p, s = spec.patch_size, spec.stride
    cols = (wt - p) // s + 1 if wt >= p else 0
    rows = (ht - p) // s + 1 if ht >= p else 0
    return rows, cols, scale


@pytest.mark.parametrize(
    ("patch", "stride", "mpp"),
    [(128, 128, 0.5), (128, 64, 0.5), (96, 96, 1.0), (256, 128, 2.0), (64, 64, 0.8)],
)
def test_grid_shape_rule_sample(sample_svs, patch, stride, mpp):
    spec = GridSpec(patch, stride, mpp)
    with open_slide(sample_svs) as s:
        g = plan_grid(s, 0.499, spec)
    rows, cols, scale = expected_shape(2220, 2967, 0.499, (1.0,), spec)
    assert (g.rows, g.cols) == (rows, cols)
    assert g.scale == pytest.approx(scale)
    assert g.effective_mpp == pytest.approx(0.499 * scale)
    o = g.origins()
    assert o.shape == (rows, cols, 2)
    assert o[0, 1, 0] == round(stride * scale) and o[1, 0, 1] == round(stride * scale)


def _check_level_choice(path, slide_mpp: float) -> None:
    """1 um/px on a 2x pyramid at ~0.5 um/px: level 1 read as stored, its patches equal to
    direct reads; 3 um/px falls between levels 2 and 3: level 2, resampled."""
    with open_slide(path) as s:
        w0, h0 = s.info.dimensions
        ds = s.info.level_downsamples
        g = plan_grid(s, slide_mpp, GridSpec(128, 128, 1.0))
        assert g.level == 1 and not g.resample
        assert (g.rows, g.cols) == expected_shape(w0, h0, slide_mpp, ds, g.spec)[:2]
        patches = g.cut_patches(g.read_block(s, 1, 3, 2, 5), 1, 3, 2, 5)
        o = g.origins()
        for i, j in [(0, 0), (1, 2)]:
            x, y = o[1 + i, 2 + j]
            np.testing.assert_array_equal(patches[i, j], s.read_region((x, y), 1, (128, 128)))
        g2 = plan_grid(s, slide_mpp, GridSpec(128, 128, 3.0))
        assert g2.level == 2 and g2.resample
        block = g2.read_block(s, 0, 2, 0, 3)
        assert block.shape == (2 * 128, 3 * 128, 3)


@needs_shared
def test_grid_uses_pyramid_level(shared_slides):
    _check_level_choice(shared_slides / "CMU-1-Small-Region_pyramid_jpeg90.tiff", 0.499)


def test_grid_uses_pyramid_level_generated(tmp_path):
    """The same on a pyramid written here (odd sides: non-integer downsamples)."""
    img = tissue_texture(1601, 2401)
    path = write_pyramid_tiff(tmp_path / "p.tiff", img, mpp=0.499, levels=4)
    with open_slide(path) as s:
        assert s.require_mpp() == pytest.approx(0.499)
    _check_level_choice(path, 0.499)


def test_patches_cut_from_block_equal_direct_reads(sample_svs):
    with open_slide(sample_svs) as s:
        g = plan_grid(s, 0.499, GridSpec(64, 48, 0.5))
        block = g.read_block(s, 3, 6, 2, 6)
        patches = g.cut_patches(block, 3, 6, 2, 6)
        o = g.origins()
        for i, j in [(0, 0), (2, 3), (1, 2)]:
            x, y = o[3 + i, 2 + j]
            np.testing.assert_array_equal(patches[i, j], s.read_region((x, y), 0, (64, 64)))


@pytest.mark.parametrize(("p", "s", "m"), [(0, 128, 0.5), (128, 0, 0.5), (128, -2, 0.5)])
def test_bad_grid_spec(p, s, m):
    with pytest.raises(UsageError):
        GridSpec(p, s, m)


def test_tissue_blank_and_sample(sample_svs):
    blank = np.full((300, 300, 3), 243, np.uint8)
    blank += np.random.default_rng(0).integers(0, 4, blank.shape, dtype=np.uint8)
    mask, _ = segment_tissue(blank)
    assert not mask.any()
    with open_slide(sample_svs) as s:
        t = detect_tissue(s, 0.499)
    frac = t.mask.mean()
    assert 0.15 < frac < 0.8, frac
    # thumbnail pixels under the mask are more saturated than those outside
    from slidepress.slide.tissue import saturation

    sat = saturation(t.thumbnail)
    assert sat[t.mask].mean() > 2 * sat[~t.mask].mean()


def test_blocks_cover_kept_cells_tightly(sample_svs):
    with open_slide(sample_svs) as s:
        g = plan_grid(s, 0.499, GridSpec(128, 128, 0.5))
    keep = np.random.default_rng(3).random((g.rows, g.cols)) > 0.8
    covered = np.zeros_like(keep, dtype=int)
    for r0, r1, c0, c1 in g.blocks(keep, 4):
        assert r1 - r0 <= 4 and c1 - c0 <= 4
        sub = keep[r0:r1, c0:c1]
        # tight: every edge row/column of the block holds a kept cell
        assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        covered[r0:r1, c0:c1] += 1
    assert (covered[keep] == 1).all()
