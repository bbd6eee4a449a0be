"""The NIC synthetic digit benchmark's generator, patch cutting and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from slidepress.synthetic import digits as syn


@pytest.fixture(scope="module")
def pools():
    return syn.load_digit_pools(test_fraction=0.3, seed=0)


@pytest.fixture(scope="module")
def images(pools):
    cfg = syn.SyntheticConfig(n_cells=24, density=0.5, min_area=0.01, max_area=0.3)
    return syn.make_images(pools[0], 40, seed=7, cfg=cfg)


def test_pools_disjoint_and_stratified(pools):
    train, test = pools
    assert not set(train.source_index) & set(test.source_index)
    assert len(train) + len(test) == 1797
    assert 0.25 < len(test) / 1797 < 0.35
    for k in range(10):  # every class in both pools
        assert len(train.by_class[k]) > 50 and len(test.by_class[k]) > 20
        assert (train.labels[train.by_class[k]] == k).all()
    assert train.images.dtype == np.uint8 and train.images.max() == 255


def test_deterministic(pools):
    cfg = syn.SyntheticConfig(n_cells=20)
    a = syn.make_images(pools[0], 3, seed=1, cfg=cfg)
    b = syn.make_images(pools[0], 5, seed=1, cfg=cfg)  # image i does not depend on the count
    c = syn.make_images(pools[0], 3, seed=2, cfg=cfg)
    for x, y in zip(a, b[:3], strict=True):
        assert np.array_equal(x.image, y.image) and x.label == y.label
        assert np.array_equal(x.tilted_mask, y.tilted_mask)
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    lazy = syn.make_images(pools[0], 3, seed=1, cfg=cfg, render_image=False)
    for x, y in zip(a, lazy, strict=True):  # same ground truth; pixels = render(cell_digits)
        assert y.image is None and np.array_equal(x.cell_digits, y.cell_digits)
        assert np.array_equal(x.image, syn.render(y.cell_digits, pools[0]))


def test_rectangle_mask():
    m = syn.rectangle_mask(10, 5.0, 5.0, 4.0, 6.0)  # axis-aligned 4 x 6 cells
    assert m.sum() == 24 and m[3:7, 2:8].all()
    d = syn.rectangle_mask(21, 10.5, 10.5, 6.0, 6.0, 45)  # a diamond: symmetric, no corners
    assert np.array_equal(d, d.T) and np.array_equal(d, d[::-1])
    assert d[10, 10] and d[8, 8] and not d[7, 7]  # (7, 7) lies outside the diamond
    assert abs(int(d.sum()) - 36) <= 6


def test_rectangles_carry_their_classes(images):
    for im in images:
        cls, t, a = im.cell_classes, im.tilted_mask, im.axis_mask
        assert im.label == im.tilted_class != im.axis_class
        assert im.angle in (45, 135)
        digits = cls >= 0
        assert (cls[t & digits] == im.tilted_class).all()
        assert (cls[a & ~t & digits] == im.axis_class).all()
        assert (t & digits).any()
        assert im.area_fraction == pytest.approx(t.mean())
        assert 0.005 < im.area_fraction < 0.35


def test_tilted_mask_is_tilted_and_axis_mask_is_a_box(images):
    for im in images:
        ys, xs = np.nonzero(im.axis_mask)  # axis-aligned: fills its bounding box
        assert im.axis_mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
        ys, xs = np.nonzero(im.tilted_mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        if im.tilted_mask.sum() >= 12:  # a rotated rectangle leaves the box corners empty
            assert im.tilted_mask.sum() < 0.8 * box


def test_cells_render_digits_and_blanks(pools, images):
    train = pools[0]
    for im in images[:5]:
        n = im.cell_classes.shape[0]
        assert im.image.shape == (9 * n, 9 * n) and im.image.dtype == np.uint8
        cells = syn.cut_cells(im.image).reshape(n, n, 9, 9)
        blank = im.cell_classes < 0
        assert (cells[blank] == 0).all()
        assert (cells[:, :, 8, :] == 0).all() and (cells[:, :, :, 8] == 0).all()  # 1 px border
        i, j = np.argwhere(~blank)[0]
        assert np.array_equal(cells[i, j, :8, :8], train.images[im.cell_digits[i, j]])
        assert train.labels[im.cell_digits[~blank]].tolist() == im.cell_classes[~blank].tolist()
        assert (im.cell_digits[blank] == -1).all()
        assert 0.35 < (~blank).mean() < 0.65  # density 0.5


def test_test_images_use_the_test_pool(pools):
    train, test = pools
    ims = syn.make_images(test, 2, seed=3, cfg=syn.SyntheticConfig(n_cells=12, min_area=0.05))
    for im in ims:
        used = im.cell_digits[im.cell_digits >= 0]
        assert np.array_equal(test.labels[used], im.cell_classes[im.cell_digits >= 0])
        assert not set(test.source_index[used]) & set(train.source_index)


def test_patches_and_compression(images):
    im = images[0]
    n = im.cell_classes.shape[0]
    cells = syn.cut_cells(im.image)
    p = syn.cells_to_patches(cells)
    assert p.shape == (n * n, 3, 16, 16) and p.dtype == np.float32
    assert p.min() >= -1 and p.max() <= 1
    assert (p[:, :, :3] == -1).all() and (p[:, :, 12:] == -1).all()  # centred padding 3 / 4
    assert np.array_equal(p[:, 0], p[:, 2])
    blank = (im.cell_classes < 0).ravel()
    assert (p[blank] == -1).all()

    # dedup in compress_images is exact: same as embedding every cell
    def embed(c: np.ndarray) -> np.ndarray:
        x = syn.cells_to_patches(c).reshape(len(c), -1)
        return np.stack([x.mean(1), x.std(1), x[:, 100]], 1)

    grids = syn.compress_images([t.image for t in images[:3]], embed, chunk=2)
    assert grids.shape == (3, n, n, 3)
    for g, t in zip(grids, images[:3], strict=True):
        assert np.allclose(g.reshape(n * n, 3), embed(syn.cut_cells(t.image)))
    assert np.allclose(grids[0][im.cell_classes < 0], grids[0][im.cell_classes < 0][0])


def test_tiny_end_to_end(pools):
    torch = pytest.importorskip("torch")
    from slidepress.encoders.nic import NICConfig, build_method
    from slidepress.slidemodel import build_task, grad_cam
    from slidepress.slidemodel.data import GridItem
    from slidepress.slidemodel.fit import FitSettings, fit_model, predict_items

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_pool, test_pool = pools
    opts = {"tasks": [{"name": "digit", "classes": [*map(str, range(10)), "blank"]}]}
    opts["widths"] = [8, 8, 8, 8]
    method = build_method(NICConfig("supervised", 16, 1.0, 16, 1e-3, opts))
    x = torch.from_numpy(syn.cells_to_patches(syn.digit_cells(train_pool)[:64]))
    y = torch.from_numpy(train_pool.labels[:64])
    optim = method.make_optimizers()
    for _ in range(3):
        logs = method.training_step({"digit": (x, y)}, optim)
    assert np.isfinite(logs["loss"])
    method.eval()
    embed = syn.torch_embed_fn(method.embedder())

    cfg = syn.SyntheticConfig(n_cells=8, min_area=0.05, max_area=0.3)
    sets = {
        "train": syn.make_images(train_pool, 12, 1, cfg),
        "test": syn.make_images(test_pool, 4, 2, cfg),
    }
    items, labels = {}, {}
    for k, ims in sets.items():
        grids = syn.compress_images([t.image for t in ims], embed)
        assert grids.shape == (len(ims), 8, 8, 16) and grids.dtype == np.float32
        items[k] = [
            GridItem(f"{k}{i}", g, np.ones((8, 8), bool), None, {}, None)
            for i, g in enumerate(grids)
        ]
        labels[k] = np.array([t.label for t in ims])
    s = FitSettings(
        model_options={"width": 8}, crop=8, batch_size=4, steps_per_epoch=2, epochs=2,
        tta_crops=1, tta_variants=2, device="cpu",
    )  # fmt: skip
    task = build_task("classify")
    model, rows = fit_model(
        task, (items["train"], labels["train"]), (items["test"], labels["test"]), 10, s
    )
    assert len(rows) == 2
    out = predict_items(model, "classify", items["test"], s)
    assert out.shape == (4, 10)
    assert np.allclose(np.exp(out).sum(1), 1, atol=1e-4)
    feats = torch.from_numpy(items["test"][0].features.transpose(2, 0, 1).copy())[None]
    cam = grad_cam(model, feats)
    assert cam.shape == (8, 8) and 0 <= cam.min() and cam.max() <= 1
