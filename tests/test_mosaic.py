"""PCam mosaic slides (slidepress.synthetic.mosaic, .pcam): shapes, determinism, the survival
toy, and the honesty proof that assembling cached patch codes equals encoding the rendered
mosaic image."""

from __future__ import annotations

import numpy as np
import pytest

from slidepress.synthetic import mosaic as M
from slidepress.synthetic import pcam
from slidepress.synthetic.slides import write_pyramid_tiff

from .conftest import SHARED

PCAM = SHARED / "patches" / "pcam"
needs_pcam = pytest.mark.skipif(
    not PCAM.is_dir(), reason=f"PCam patches not found at {PCAM} (shared data, see README)"
)

NORMAL = np.arange(0, 300)
TUMOUR = np.arange(300, 400)
CFG = M.MosaicConfig(n=16)


def _cohort(seed: int = 0, folds: int = 0) -> list[M.Mosaic]:
    return M.make_cohort(24, NORMAL, TUMOUR, seed=seed, config=CFG, folds=folds)


def test_cohort_is_deterministic():
    a, b = _cohort(5, folds=3), _cohort(5, folds=3)
    for x, y in zip(a, b, strict=True):
        assert (x.slide, x.label, x.fold) == (y.slide, y.label, y.fold)
        assert np.array_equal(x.cells, y.cells) and np.array_equal(x.tumour, y.tumour)
    c = _cohort(6, folds=3)
    assert any(not np.array_equal(x.cells, y.cells) for x, y in zip(a, c, strict=True))


def test_positives_hold_one_contiguous_tumour_of_the_drawn_size():
    cohort = _cohort(1)
    pos = [m for m in cohort if m.label]
    assert len(pos) == 12
    lo, hi = CFG.tumour_fraction
    for m in pos:
        assert lo <= m.target_fraction <= hi
        assert m.n_tumour == max(1, round(m.target_fraction * m.n_tissue))
        assert not (m.tumour & ~m.tissue).any()
        assert M.is_connected(m.tumour) and M.is_connected(m.tissue)
        assert np.isin(m.cells[m.tumour], TUMOUR).all()
        assert np.isin(m.cells[m.tissue & ~m.tumour], NORMAL).all()
    for m in cohort:
        if not m.label:
            assert m.n_tumour == 0 and m.burden == 0
            assert np.isin(m.cells[m.tissue], NORMAL).all()


def test_tumour_sizes_are_stratified_log_uniform():
    cohort = M.make_cohort(80, NORMAL, TUMOUR, seed=4, config=CFG)
    lo, hi = np.log(CFG.tumour_fraction)
    u = [(np.log(m.target_fraction) - lo) / (hi - lo) for m in cohort if m.label]
    assert np.array_equal(np.histogram(u, bins=4, range=(0, 1))[0], [10, 10, 10, 10])


def test_background_cells_are_zero_and_masked():
    codes = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32) + 5
    for m in _cohort(2)[:6]:
        assert (m.cells[~m.tissue] == -1).all() and (m.cells[m.tissue] >= 0).all()
        assert 0.3 * 16 * 16 < m.n_tissue < 0.8 * 16 * 16
        item = M.grid_item(m, codes)
        assert np.array_equal(item.mask, m.tissue)
        assert (item.features[~m.tissue] == 0).all()
        assert np.array_equal(item.features[m.tissue], codes[m.cells[m.tissue]])
        grid = M.embedding_grid(m, codes)
        assert np.array_equal(grid.mask, m.tissue) and grid.metadata["mosaic"]["label"] == m.label


def test_folds_are_stratified_and_draw_from_disjoint_pools():
    cohort = _cohort(3, folds=3)
    per_fold = {f: set() for f in range(3)}
    for m in cohort:
        per_fold[m.fold] |= set(m.cells[m.tissue].tolist())
    assert all(not (per_fold[a] & per_fold[b]) for a in range(3) for b in range(a + 1, 3))
    for f in range(3):
        labels = [m.label for m in cohort if m.fold == f]
        assert sum(labels) == 4 and len(labels) == 8


def test_grow_region_exact_size_and_limits():
    rng = np.random.default_rng(0)
    allowed = M.tissue_blob(20, 0.6, rng)
    n = int(allowed.sum())
    for size in (1, 2, 17, n // 2, n):
        r = M.grow_region(allowed, size, rng)
        assert r.sum() == size and M.is_connected(r) and not (r & ~allowed).any()
    with pytest.raises(ValueError):
        M.grow_region(allowed, n + 1, rng)


def test_survival_outcomes_follow_the_burden():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    burden = np.r_[np.zeros(3000), rng.uniform(0.02, 0.4, 3000)]
    t, e, log_h = M.survival_outcomes(burden, np.random.default_rng(1))
    assert t.dtype == np.float32 and (t > 0).all() and np.isin(e, (0, 1)).all()
    assert 0.3 < e.mean() < 0.95  # censoring present, events dominate
    assert np.all(np.diff(log_h[np.argsort(burden)]) >= 0)
    q = np.quantile(burden, [0.25, 0.75])
    assert t[burden >= q[1]].mean() < 0.7 * t[burden <= q[0]].mean()
    assert concordance_index(t, -log_h, e) > 0.6


@needs_pcam
def test_assembled_grid_equals_encoding_the_rendered_mosaic(tmp_path):
    """The honesty proof: a 4 x 4 mosaic of real PCam patches written as a tiled TIFF at
    0.97 um/px and run through `encode_slide` (tissue threshold 0: no cell dropped) gives the
    codes `assemble` gathers from patches encoded one by one."""
    from slidepress.encoders import get_encoder
    from slidepress.pipeline.encode import EncodeOptions, encode_slide
    from slidepress.store import read_grid

    tab = pcam.pcam_table(PCAM / "valid", limit_per_class=6)
    enc = get_encoder("nic-multitask", device="cpu")
    codes = pcam.embed_files(tab.files, enc, batch=5)  # other batches than the pipeline's
    pixels = pcam.load_patches(tab.files, enc.mpp, enc.patch_size)
    cfg = M.MosaicConfig(n=4, tissue_fraction=(0.7, 0.7), tumour_fraction=(0.2, 0.3))
    m = M.make_mosaic("tiny", 1, tab.ids(0), tab.ids(1), np.random.default_rng(3), cfg)
    assert 0 < m.n_tumour < m.n_tissue < 16  # tumour, normal and glass cells all present
    image = M.render(m, pixels)  # lossless: the pixels the codes were computed from
    path = write_pyramid_tiff(
        tmp_path / "tiny.tiff", image, mpp=M.PCAM_MPP, tile=64, compression="zlib"
    )

    opts = EncodeOptions(tissue_threshold=0.0, fmt="npz", previews=False)
    res = encode_slide(path, tmp_path / "grids", enc, opts)
    grid = read_grid(res.outputs[0])
    assert grid.features.shape == (4, 4, enc.dim) and grid.mask.all()
    assert grid.metadata["grid"]["resampled"] is False
    assert grid.metadata["grid"]["mpp_effective"] == pytest.approx(0.97)
    ours = M.assemble(m, codes)
    np.testing.assert_allclose(grid.features[m.tissue], ours[m.tissue], rtol=1e-5, atol=1e-5)
    assert (ours[~m.tissue] == 0).all()  # glass: zero in the assembled grid (mask False)


@needs_pcam
def test_embedding_cache_and_encoder_seen_files(tmp_path):
    import json

    from slidepress.encoders import get_encoder
    from slidepress.encoders.nic_weights import WEIGHTS_DIR

    tab = pcam.pcam_table(PCAM / "valid", limit_per_class=4)
    enc = get_encoder("mean-rgb")
    a, hit_a = pcam.cached_embeddings(tab.files, enc, tmp_path)
    b, hit_b = pcam.cached_embeddings(tab.files, enc, tmp_path)
    assert (hit_a, hit_b) == (False, True) and np.array_equal(a, b) and a.shape == (8, 3)

    cfg = json.loads((WEIGHTS_DIR / "nic-multitask" / "config.json").read_text())
    seen = pcam.encoder_pcam_files(cfg, PCAM)
    n_train = cfg["data"]["tasks"]["pcam"]["train"]["n"]
    assert len(seen["train"]) == n_train and len(seen["valid"]) > 0
    rest = pcam.pcam_table(PCAM / "valid", seen["valid"])
    assert not {f.resolve() for f in rest.files} & seen["valid"]
