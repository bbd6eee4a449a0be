"""`slidepress compare`: per-cell cosine of the NIC grid of a slide vs its compressed version."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from slidepress.pipeline import CompressOptions, compress_slide
from slidepress.pipeline.compare import compare_grids
from slidepress.slide import sample_slide_path


@pytest.fixture(scope="module")
def jpeg_spz(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "sample.spz"
    compress_slide(sample_slide_path(), out, CompressOptions(codec="jpeg", quality=30))
    return out


def test_compare_sample_with_its_container(jpeg_spz, tmp_path):
    r = compare_grids(sample_slide_path(), jpeg_spz, tmp_path / "out")
    cos = np.load(tmp_path / "out" / "cosine.npy")
    assert cos.shape == (r.grid["rows"], r.grid["cols"])
    assert np.isfinite(cos).sum() == r.cells > 100
    assert 0.99 < r.mean < 1 and r.min <= r.p5 <= r.mean
    assert r.worst[0]["cosine"] == pytest.approx(r.min)
    assert 25 < r.psnr_tissue < 40  # aligned cells: JPEG q30, not a shifted grid
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert doc["cells"] == r.cells and doc["encoder"] == "nic-multitask"
    assert Image.open(tmp_path / "out" / "heatmap.png").size[0] > 100


def test_a_slide_against_itself_is_exact(tmp_path):
    r = compare_grids(sample_slide_path(), sample_slide_path(), None)
    assert r.mean == pytest.approx(1.0, abs=1e-6) and math.isinf(r.psnr_tissue)


def test_cli(jpeg_spz, tmp_path):
    from typer.testing import CliRunner

    from slidepress.cli.main import app

    res = CliRunner().invoke(app, ["compare", "@sample", str(jpeg_spz), "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "cosine mean" in res.output and (tmp_path / "c" / "cosine.npy").exists()
    # a second run does not replace the first one's outputs unless asked (refused before work)
    before = (tmp_path / "c" / "compare.json").read_bytes()
    res = CliRunner().invoke(app, ["compare", "@sample", str(jpeg_spz), "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (tmp_path / "c" / "compare.json").read_bytes() == before
    args = ["compare", "@sample", str(jpeg_spz), "-o", str(tmp_path / "c"), "--overwrite"]
    assert CliRunner().invoke(app, args).exit_code == 0
