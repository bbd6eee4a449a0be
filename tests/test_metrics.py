"""Quality metrics: PSNR/SSIM against independent implementations, small tiles, tissue scoring,
and monotonic behaviour with JPEG quality on real lossless H&E tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidepress.metrics import (
    MS_SSIM_WEIGHTS,
    bits_per_pixel,
    compression_ratio,
    ms_ssim,
    ms_ssim_db,
    ms_ssim_scales,
    mse,
    psnr,
    psnr_from_mse,
    score_tiles,
    ssim,
)

from .conftest import SHARED, needs_shared

pytest.importorskip("pytorch_msssim")
TILES = SHARED / "tiles"


def _tile(name: str = "histoqc_template3.png", size: int = 256) -> np.ndarray:
    from PIL import Image

    with Image.open(TILES / name) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:size, :size])


def _jpeg(tile: np.ndarray, q: int) -> np.ndarray:
    from slidepress.codecs import get_codec

    c = get_codec("jpeg", q)
    return c.decode(c.encode(tile))


def _noisy(shape: tuple[int, ...], sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.normal(0, sigma, shape)
    return ref, np.clip(ref + noise, 0, 255).round().astype(np.uint8)


def test_psnr_matches_independent_numpy():
    ref, test = _noisy((64, 48, 3), 7.0)
    d = ref.astype(np.float64) - test.astype(np.float64)
    expected = 20 * np.log10(255.0) - 10 * np.log10(np.mean(d**2))
    assert psnr(ref, test) == pytest.approx(expected, abs=1e-9)
    assert mse(ref, test) == pytest.approx(np.mean(d**2))
    skm = pytest.importorskip("skimage.metrics")
    assert psnr(ref, test) == pytest.approx(skm.peak_signal_noise_ratio(ref, test), abs=1e-9)


def test_identical_images():
    ref, _ = _noisy((168, 168, 3), 1.0)
    assert psnr(ref, ref) == math.inf
    assert ssim(ref, ref) == 1.0
    assert ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert psnr_from_mse(0.0) == math.inf
    assert ms_ssim_db(1.0) == math.inf


def test_ssim_matches_scikit_image_gaussian_ssim():
    """pytorch-msssim's SSIM (valid convolution) equals skimage's Gaussian SSIM (which crops
    the same border), an independent implementation."""
    skm = pytest.importorskip("skimage.metrics")
    ref, test = _noisy((96, 128, 3), 12.0, seed=3)
    expected = skm.structural_similarity(
        ref, test, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=2,
    )  # fmt: skip
    assert ssim(ref, test) == pytest.approx(expected, abs=1e-5)


def test_bad_inputs_raise():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:16])
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        mse(a[..., 0], a[..., 0])


def test_ms_ssim_scales_rule():
    # s > 10 * 2**(k-1): 161 is the smallest side for the standard 5 scales
    assert [ms_ssim_scales(s, s) for s in (10, 11, 20, 21, 40, 41, 80, 81, 160, 161, 4096)] == [
        0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5,
    ]  # fmt: skip
    assert ms_ssim_scales(96, 500) == 4  # the shorter side decides


def test_reduced_ms_ssim_mirrors_the_library():
    """The fewer-scales path reproduces pytorch-msssim exactly at 5 scales, and equals SSIM
    at 1 scale; so tiles <= 160 px get the same metric, just on fewer scales."""
    import torch
    from pytorch_msssim import ms_ssim as lib_ms_ssim
    from pytorch_msssim import ssim as lib_ssim

    from slidepress.metrics.quality import _ms_ssim_reduced, _to_tensor

    ref, test = _noisy((168, 168, 3), 20.0, seed=1)
    x, y = _to_tensor(ref[None]), _to_tensor(test[None])
    ours5 = _ms_ssim_reduced(x, y, list(MS_SSIM_WEIGHTS))
    torch.testing.assert_close(ours5, lib_ms_ssim(x, y, data_range=255, size_average=False))
    ours1 = _ms_ssim_reduced(x, y, [1.0])
    torch.testing.assert_close(ours1, lib_ssim(x, y, data_range=255, size_average=False))


def test_small_tiles():
    ref, test = _noisy((96, 96, 3), 10.0)
    v = ms_ssim(ref, test)
    assert 0 < v < 1  # 4 scales, renormalised weights
    s = score_tiles([ref], [test])
    assert s.ms_ssim_scales[0] == 4 and s.summary()["ms_ssim_scales_min"] == 4
    ref15, test15 = ref[:15, :15], test[:15, :15]
    assert ms_ssim(ref15, test15) == pytest.approx(ssim(ref15, test15), abs=1e-6)  # k = 1
    tiny, tiny2 = ref[:8, :8], test[:8, :8]
    assert math.isnan(ssim(tiny, tiny2)) and math.isnan(ms_ssim(tiny, tiny2))
    assert math.isfinite(psnr(tiny, tiny2))


def test_rate_helpers():
    assert bits_per_pixel(1000, 4000) == 2.0
    assert compression_ratio(2.0) == 12.0  # vs raw 24 bpp
    assert compression_ratio(2.0, reference_bpp=3.0) == 1.5  # vs a source file
    assert compression_ratio(0.0) == math.inf
    with pytest.raises(ValueError):
        bits_per_pixel(10, 0)


def test_score_tiles_tissue_only_and_pooling():
    a, a2 = _noisy((64, 64, 3), 2.0, seed=1)
    b, b2 = _noisy((64, 64, 3), 20.0, seed=2)
    c, c2 = _noisy((32, 48, 3), 5.0, seed=3)  # another size: its own torch batch
    s = score_tiles([a, b, c], [a2, b2, c2], tissue=[True, False, True])
    assert s.n_scored == 2
    assert math.isnan(s.psnr[1]) and math.isnan(s.ssim[1])  # background: not scored
    pooled = (mse(a, a2) * 64 * 64 + mse(c, c2) * 32 * 48) / (64 * 64 + 32 * 48)
    assert s.mean_psnr == pytest.approx(psnr_from_mse(pooled))
    assert s.mean_ssim == pytest.approx((ssim(a, a2) + ssim(c, c2)) / 2, abs=1e-6)
    assert s.ms_ssim_scales.tolist() == [3, 0, 2]
    everything = score_tiles([a, b, c], [a2, b2, c2])
    assert everything.n_scored == 3 and everything.mean_psnr < s.mean_psnr
    with pytest.raises(ValueError, match="tissue flags"):
        score_tiles([a], [a2], tissue=[True, False])
    assert math.isnan(score_tiles([a], [a2], tissue=[False]).mean_psnr)


@needs_shared
@pytest.mark.parametrize("name", ["histoqc_template3.png", "tiatoolbox_target.png"])
def test_metrics_increase_with_jpeg_quality(name):
    ref = _tile(name)
    decoded = [_jpeg(ref, q) for q in (30, 60, 90)]
    scores = [(psnr(ref, d), ssim(ref, d), ms_ssim(ref, d)) for d in decoded]
    for metric in range(3):
        values = [s[metric] for s in scores]
        assert values[0] < values[1] < values[2], (name, metric, values)
    assert all(s[1] < 1 and s[2] < 1 for s in scores)
    assert 20 < scores[0][0] < scores[2][0] < 50


def test_slide_fidelity_parts_merge_to_the_whole_to_the_bit():
    """Parts of a slide keep their per-tile terms; merged in order they give the whole-slide
    totals exactly (float sums are not associative: summing the parts' sums would not)."""
    from slidepress.metrics.fidelity import SlideFidelity

    rng = np.random.default_rng(0)
    sse = (rng.random(300) * 1e7).tolist()
    values = rng.integers(1, 196608, 300).tolist()
    whole = SlideFidelity()
    for e, v in zip(sse, values, strict=True):
        whole.add_stored(e, v)
    whole.add_dropped(7)
    merged = SlideFidelity()
    for lo, hi in ((0, 100), (100, 250), (250, 300)):
        part = SlideFidelity(terms=[])
        for e, v in zip(sse[lo:hi], values[lo:hi], strict=True):
            part.add_stored(e, v)
        if lo == 100:
            part.add_dropped(7)
        merged.merge(part)
    assert merged.sse == whole.sse and merged.psnr == whole.psnr
    assert (merged.tiles_stored, merged.tiles_dropped, merged.max_dropped_deviation) == (
        300, 1, 7)  # fmt: skip
    with pytest.raises(ValueError, match="terms"):
        merged.merge(whole)  # no per-tile terms kept


def test_similarity_scorer_pixels_and_sums_merge():
    """The one scorer's pixel scores are score_tiles' (PSNR of the pooled MSE: inf when
    exact); a reference scores like the tiles themselves; weighted sums merge."""
    from slidepress.metrics import PairScores, SimilarityScorer, SimilaritySums, score_tiles

    rng = np.random.default_rng(1)
    refs = rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    noisy = np.clip(refs.astype(int) + rng.integers(-3, 4, refs.shape), 0, 255).astype(np.uint8)
    scorer = SimilarityScorer(pixels=True)
    s = scorer.score(refs, noisy)
    assert s.featsim is None and s.embsim is None
    assert s.pixels.mean_psnr == score_tiles(refs, noisy, structural=False).mean_psnr
    assert scorer.score(scorer.reference(refs), noisy).pixels.mean_psnr == s.pixels.mean_psnr
    assert math.isinf(scorer.score(refs, refs.copy()).pixels.mean_psnr)
    a, b, both = SimilaritySums(), SimilaritySums(), SimilaritySums()
    scores = PairScores(embsim=np.array([0.9, 0.5, 1.0]))
    a.add(scores, np.array([1.0, 2.0, 3.0]))
    b.add(scores, np.array([3.0, 0.0, 1.0]))
    both.add(scores, np.array([1.0, 2.0, 3.0]))
    both.add(scores, np.array([3.0, 0.0, 1.0]))
    a.merge(SimilaritySums.from_dict(b.to_dict()))
    assert a.embedding_mean() == both.embedding_mean() and a.tiles == 6
    assert SimilaritySums().embedding_mean() is None
