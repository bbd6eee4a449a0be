"""`slidepress eval downstream` on a tiny PCam subset: the probe re-run on decoded patches of
each codec and quality writes its table (csv/md/json) and plot, next to embedding similarity
and the slide-grid cosine; inputs are checked before any work."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from .conftest import SHARED

PCAM = SHARED / "patches" / "pcam"
needs_pcam = pytest.mark.skipif(
    not PCAM.is_dir(), reason=f"shared PCam patches not found at {PCAM} (see README)"
)


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "slidepress", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@needs_pcam
def test_run_downstream_tiny_subset(tmp_path):
    from slidepress.eval.downstream import run_downstream

    rep = run_downstream(["jpeg", "pathae"], ["jpeg=5,95", "pathae=3"], pcam=PCAM,
                         out_dir=tmp_path, train_limit_per_class=10, test_limit_per_class=4,
                         epochs=2, n_bootstrap=0, featsim=False, slide=None)  # fmt: skip
    rows = rep["rows"]
    assert [r["codec"] for r in rows] == ["original", "jpeg", "jpeg", "pathae"]
    assert rows[1]["bpp"] < rows[2]["bpp"] and rows[1]["embsim"] < rows[2]["embsim"]
    assert all(0 <= r["auc"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)
    for suffix in ("csv", "json", "md", "png"):
        assert (tmp_path / f"downstream.{suffix}").stat().st_size > 100


@pytest.mark.slow
@needs_pcam
def test_eval_downstream_tiny_subset_writes_table_and_plot(tmp_path):
    out = tmp_path / "ds"
    r = _cli("eval", "downstream", "--codecs", "jpeg,pathae", "-q", "jpeg=10,90", "-q",
             "pathae=2", "--pcam", PCAM, "-o", out, "--train-limit", 12, "--test-limit", 6,
             "--epochs", 2, "--bootstrap", 10, "--slide-max-side", 512)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    for suffix in ("csv", "json", "md", "png"):
        assert (out / f"downstream.{suffix}").stat().st_size > 100
    rows = list(csv.DictReader(open(out / "downstream.csv")))
    assert [(x["codec"], x["quality"]) for x in rows] == [
        ("original", ""),
        ("jpeg", "10.0"),
        ("jpeg", "90.0"),
        ("pathae", "2.0"),
    ]
    jpeg10, jpeg90 = rows[1], rows[2]
    assert float(jpeg10["bpp"]) < float(jpeg90["bpp"]) < 24
    assert float(jpeg10["embsim"]) < float(jpeg90["embsim"]) <= 1
    assert 0 < float(rows[3]["slide_grid_cosine"]) <= 1
    rep = json.loads((out / "downstream.json").read_text())
    assert rep["settings"]["test_patches"] == 12
    assert rep["codecs"]["pathae"]["model"]["weights_sha256"]
    assert "| jpeg | 10 |" in (out / "downstream.md").read_text()


def test_eval_downstream_refuses_bad_inputs(tmp_path):
    r = _cli("eval", "downstream", "--codecs", "nosuchcodec", "--pcam", tmp_path, "-o",
             tmp_path / "o")  # fmt: skip
    assert r.returncode == 2
    assert "nosuchcodec" in r.stderr
    r = _cli("eval", "downstream", "--codecs", "jpeg", "-q", "jpeg=abc", "--pcam", tmp_path,
             "-o", tmp_path / "o")  # fmt: skip
    assert r.returncode == 2


def test_codec_specs_and_qualities():
    from slidepress.cli.eval import _split_codecs
    from slidepress.errors import UsageError
    from slidepress.eval.downstream import CodecSpec, parse_qualities

    specs = _split_codecs("jpeg,ae-kl:weights=/x/sd-vae,dim=4,avif")
    assert specs == ["jpeg", "ae-kl:weights=/x/sd-vae,dim=4", "avif"]
    parsed = [CodecSpec.parse(s) for s in specs]
    assert parsed[1].name == "ae-kl" and parsed[1].params == {"weights": "/x/sd-vae", "dim": 4}
    assert parsed[1].label == "ae-kl[sd-vae]"
    slower = CodecSpec.parse("jpegxl:effort=7")  # numbers reach the codec as numbers
    assert slower.params == {"effort": 7} and slower.label == "jpegxl[effort=7]"
    q = parse_qualities(["ae-kl=1,2", "jpeg=10,20,30,40"], parsed)  # -q repeated
    assert q == {"jpeg": [10, 20, 30, 40], "ae-kl[sd-vae]": [1, 2], "avif": [20, 40, 60, 80]}
    assert parse_qualities("ae-kl=1,2;jpeg=10,20,30,40", parsed) == q  # the bench's syntax
    for bad in (["jpeg=x"], ["5,6"], ["webp=50"]):  # one syntax: CODEC=..., codecs in the run
        with pytest.raises(UsageError):
            parse_qualities(bad, parsed)


def test_downstream_rank_correlation_counts_ties_and_needs_the_slide_mpp(tmp_path):
    """Spearman is scipy's (tied values share their mean rank), over finite pairs only; the
    slide grid needs the slide's resolution (no silent 0.5 um/px)."""
    import math

    import numpy as np
    from PIL import Image
    from scipy.stats import spearmanr

    from slidepress.errors import MppError
    from slidepress.eval.downstream import _slide_tiles, _spearman, default_sweep

    a, b = [1.0, 1.0, 2.0, 3.0, 3.0, math.inf], [0.1, 0.2, 0.2, 0.5, 0.4, 0.9]
    assert _spearman(a, b) == pytest.approx(spearmanr(a[:5], b[:5]).statistic, abs=1e-12)
    assert _spearman([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) < 1.0  # was 1: ties ranked apart
    assert math.isnan(_spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    blank = tmp_path / "no_mpp.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(blank)
    with pytest.raises(MppError):
        _slide_tiles(blank, 256)
    assert default_sweep("jpeg") == [10, 30, 50, 75, 90] and default_sweep("htj2k") == []
