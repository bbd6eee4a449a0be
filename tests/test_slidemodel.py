"""Slide-level learning on grids: labels, crops, cross-validation, predict, heatmap (CLI)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress.cli.main import app
from slidepress.errors import UsageError
from slidepress.slidemodel.data import (
    GridItem,
    crop_at,
    random_crop,
    read_labels,
    spread_centres,
    tta_crops,
)
from slidepress.store import write_grid
from slidepress.store.grid import EmbeddingGrid

pytest.importorskip("torch")
runner = CliRunner()


def _item(h: int, w: int, c: int = 4, seed: int = 0) -> GridItem:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    mask[1 : h - 1, 1 : w - 1] = True
    feats = rng.normal(size=(h, w, c)).astype(np.float32) * mask[..., None]
    return GridItem("s", feats, mask, None, {})  # type: ignore[arg-type]


def test_crops_pad_small_grids_and_keep_cells():
    it = _item(5, 7)
    crop = crop_at(it, 2, 3, 9)
    assert crop.shape == (4, 9, 9)
    np.testing.assert_array_equal(crop[:, 2:7, 1:8], it.features.transpose(2, 0, 1))
    assert not crop[:, :2].any() and not crop[:, 7:].any()  # zero padding = background
    rng = np.random.default_rng(0)
    assert random_crop(it, 9, rng).shape == (4, 9, 9)
    assert tta_crops(it, 9, n_crops=4, variants=8).shape == (8, 4, 9, 9)  # one centre x 8


def test_training_crops_favour_deep_tissue_and_test_crops_spread():
    it = _item(60, 60)
    ys, xs = np.mgrid[0:60, 0:60]
    it.features[..., 0], it.features[..., 1] = ys + 1, xs + 1  # cells name their position
    rng = np.random.default_rng(0)
    # an odd crop keeps its centre cell under all 8 dihedral variants
    centres = np.array([random_crop(it, 9, rng)[:2, 4, 4] - 1 for _ in range(300)])
    depth = it.depth
    assert (
        depth[centres[:, 0].astype(int), centres[:, 1].astype(int)].mean() > depth[it.mask].mean()
    )
    assert (depth[centres[:, 0].astype(int), centres[:, 1].astype(int)] > 0).all()
    cs = spread_centres(it, 16, 4)
    assert len(cs) == 4 and len(set(cs)) == 4
    d = min(np.hypot(a[0] - b[0], a[1] - b[1]) for i, a in enumerate(cs) for b in cs[i + 1 :])
    assert d >= 16


def test_read_labels_checks_columns_and_values(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("slide,label\na,x\nb,y\nc,x\n")
    lab = read_labels(p, "classify")
    assert lab.classes == ["x", "y"] and lab.targets.tolist() == [0, 1, 0]
    for text, task, msg in [
        ("slide,label\na,x\na,y\n", "classify", "twice"),
        ("slide,value\na,1\nb,zz\n", "regress", "not a number"),
        ("slide,time\na,1\n", "survival", "event"),
        ("slide,time,event\na,1,2\nb,1,1\n", "survival", r"0 \(censored\) or 1"),
        ("slide,label\na,x\nb,x\n", "classify", "2 classes"),
    ]:
        p.write_text(text)
        with pytest.raises(UsageError, match=msg):
            read_labels(p, task)


def _cohort(tmp_path, n: int = 12, size: int = 20, c: int = 4, survival: bool = False):
    """Grids with a planted block in class-1 slides (or in high-risk slides)."""
    rng = np.random.default_rng(1)
    gdir = tmp_path / "grids"
    gdir.mkdir()
    rows = []
    for i in range(n):
        f = rng.normal(0, 0.3, (size, size, c)).astype(np.float32)
        y = i % 2
        if y:
            r0, c0 = rng.integers(2, size - 6, 2)
            f[r0 : r0 + 4, c0 : c0 + 4, 0] += 3.0
        grid = EmbeddingGrid.from_features(f, np.ones((size, size), bool), cell=64,
                                           metadata={"encoder": {"name": "toy"}})  # fmt: skip
        write_grid(grid, gdir / f"s{i:02d}.npz")
        if survival:
            t = rng.exponential(2.0 if y else 10.0)
            rows.append(
                {"slide": f"s{i:02d}", "time": round(t + 0.01, 3), "event": int(i % 5 != 0)}
            )
        else:
            rows.append({"slide": f"s{i:02d}", "label": ["normal", "tumour"][y]})
    lab = tmp_path / "labels.csv"
    with open(lab, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return gdir, lab


FAST = ["--folds", "3", "--crop", "16", "--epochs", "4", "--steps-per-epoch", "6",
        "--batch-size", "8", "--tta-crops", "2"]  # fmt: skip


@pytest.mark.parametrize("model", ["nic-cnn", "abmil"])
def test_cli_classify_end_to_end(tmp_path, model):
    gdir, lab = _cohort(tmp_path)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "slide-model", str(gdir), str(lab), "--model", model,
                            "-o", str(run), *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    for f in ("config.json", "metrics.json", "predictions.csv", "curves.png",
              "fold0/model.safetensors", "fold2/log.csv"):  # fmt: skip
        assert (run / f).exists(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["classes"] == ["normal", "tumour"] and cfg["encoder"] == {"name": "toy"}
    m = json.loads((run / "metrics.json").read_text())
    lo, hi = m["ci95"]["auc"]
    assert lo <= m["out_of_fold"]["auc"] <= hi
    with open(run / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 12 and {"prob_normal", "prob_tumour", "predicted", "fold"} <= set(preds[0])
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(run), str(gdir / "s01.npz"), str(gdir / "s02.npz"),
                            "-o", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == ["s01", "s02"]
    assert abs(float(rows[0]["prob_normal"]) + float(rows[0]["prob_tumour"]) - 1) < 1e-5
    png = tmp_path / "h.png"
    r = runner.invoke(app, ["heatmap", str(run), str(gdir / "s01.npz"), "-o", str(png)])
    assert r.exit_code == 0, r.output
    heat = np.load(png.with_suffix(".npy"))
    assert heat.shape == (20, 20) and 0 <= heat.min() and heat.max() <= 1
    assert png.stat().st_size > 0


def test_cli_survival_writes_km_and_logrank(tmp_path):
    gdir, lab = _cohort(tmp_path, n=15, survival=True)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "slide-model", str(gdir), str(lab), "--task", "survival",
                            "-o", str(run), *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["out_of_fold"]["c_index"] <= 1 and 0 <= m["risk_groups"]["logrank_p"] <= 1
    assert (run / "km.png").stat().st_size > 0


def test_cli_bad_inputs_one_line(tmp_path):
    gdir, lab = _cohort(tmp_path, n=6)
    (tmp_path / "bad.csv").write_text("slide,label\nzz,a\nyy,b\nxx,a\n")
    cases = [
        (["train", "slide-model", str(gdir), str(tmp_path / "bad.csv"), "-o", str(tmp_path / "r")],
         "no grid for slide"),
        (["train", "slide-model", str(gdir), str(lab), "--task", "cox", "-o", str(tmp_path / "r")],
         "unknown task 'cox'; choose from classify, regress, survival"),
        (["train", "slide-model", str(gdir), str(lab), "--model", "vit", "-o", str(tmp_path / "r")],
         "unknown slide model 'vit'; choose from nic-cnn, abmil"),
        (["train", "slide-model", str(gdir), str(lab), "--folds", "9", "-o", str(tmp_path / "r")],
         "--folds"),
        (["predict", str(tmp_path), str(gdir)], "not a finished slide-model run"),
        (["heatmap", str(tmp_path), str(gdir / "s00.npz"), "-o", str(tmp_path / "x.jpg")], ".png"),
    ]  # fmt: skip
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "r" / "config.json").exists()


def test_cli_regression_and_heatmap_on_a_real_slide_thumbnail(tmp_path, sample_svs):
    """Grids from `encode` (mean-rgb) carry the slide path: the heatmap overlays its thumbnail."""
    from PIL import Image

    from slidepress.store import read_grid

    r = runner.invoke(app, ["encode", str(sample_svs), "-o", str(tmp_path / "enc")])
    assert r.exit_code == 0, r.output
    real = next((tmp_path / "enc").glob("*.zarr"))
    grid = read_grid(real)
    gdir = tmp_path / "grids"
    gdir.mkdir()
    rng = np.random.default_rng(0)
    rows = ["slide,value"]
    for i in range(9):  # the same tissue, brightness-shifted codes; value = the shift
        g = EmbeddingGrid.from_features(grid.features * (1 + 0.1 * i) * grid.mask[..., None],
                                        grid.mask, metadata=grid.metadata)  # fmt: skip
        write_grid(g, gdir / f"r{i}.npz")
        rows.append(f"r{i},{i + rng.normal(0, 0.1):.3f}")
    (tmp_path / "v.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "slide-model", str(gdir), str(tmp_path / "v.csv"),
                            "--task", "regress", "-o", str(run), *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert "spearman" in m["out_of_fold"] and "mse" in m["out_of_fold"]
    png = tmp_path / "heat.png"
    r = runner.invoke(app, ["heatmap", str(run), str(real), "-o", str(png)])
    assert r.exit_code == 0, r.output
    assert np.load(png.with_suffix(".npy")).shape == grid.mask.shape
    # background = the slide thumbnail over the grid's extent (aspect of rows x cols), not PCA
    w, h = Image.open(png).size
    rows_, cols_ = grid.mask.shape
    assert abs(h / w - rows_ / cols_) < 0.05
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img[~np.isin(img, [255]).all(axis=2)].std() > 10  # real pixels, not a flat fill
