"""Bjøntegaard deltas (against the `bjontegaard` package where installed) and a small codec
benchmark run on real shared tiles: outputs, monotonic rows, BD-rate signs, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from slidepress.bench.bdrate import (
    bd_quality,
    bd_rate,
    overlap_fraction,
    rate_at_quality,
    rd_envelope,
)
from slidepress.errors import CodecError, UsageError

from .conftest import SHARED, needs_shared

TILES = SHARED / "tiles"

# The example of the bjontegaard package's README (rates in kbps, PSNR in dB).
RATE_A = [9487.76, 4593.60, 2486.44, 1358.24]
PSNR_A = [40.037, 38.615, 36.845, 34.851]
RATE_T = [9787.80, 4469.00, 2451.52, 1356.24]
PSNR_T = [40.121, 38.651, 36.970, 34.987]


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_matches_the_bjontegaard_package(method):
    bj = pytest.importorskip("bjontegaard")
    rng = np.random.default_rng(7)
    rate = np.sort(rng.uniform(0.2, 6.0, 6))
    q = 30 + 4 * np.log2(rate) + np.sort(rng.uniform(0, 0.5, 6))
    rate2 = np.sort(rate * rng.uniform(0.7, 0.9, 6))
    q2 = np.sort(q + rng.uniform(-0.3, 0.3, 6))
    for args in ((RATE_A, PSNR_A, RATE_T, PSNR_T), (rate, q, rate2, q2)):
        assert bd_rate(*args, method=method) == pytest.approx(
            bj.bd_rate(*args, method=method, min_overlap=0), abs=1e-9
        )
        assert bd_quality(*args, method=method) == pytest.approx(
            bj.bd_psnr(*args, method=method, min_overlap=0), abs=1e-9
        )


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_signs_and_exact_cases(method):
    rate, q = np.array([0.5, 1.0, 2.0, 4.0]), np.array([28.0, 31.0, 34.0, 36.5])
    assert bd_rate(rate, q, rate, q, method) == pytest.approx(0.0, abs=1e-12)
    assert bd_quality(rate, q, rate, q, method) == pytest.approx(0.0, abs=1e-12)
    # strictly fewer bytes at equal quality: exactly -20 % whatever the interpolation
    assert bd_rate(rate, q, 0.8 * rate, q, method) == pytest.approx(-20.0)
    assert bd_rate(rate, q, 1.25 * rate, q, method) == pytest.approx(25.0)
    assert bd_quality(rate, q, 0.8 * rate, q, method) > 0
    assert bd_quality(rate, q, rate, q - 1.0, method) == pytest.approx(-1.0)
    assert math.isnan(bd_rate(rate, q, rate, q + 20, method))  # no common quality range


def test_envelope_and_rate_at_quality():
    r, q = rd_envelope([4, 1, 2, 3, np.inf, 5], [36, 30, 33, 32, 40, np.inf])
    assert r.tolist() == [1, 2, 4] and q.tolist() == [30, 33, 36]  # 3 is dominated by 2
    assert rate_at_quality([1, 2, 4], [30, 33, 36], 33) == pytest.approx(2.0)
    assert 1 < rate_at_quality([1, 2, 4], [30, 33, 36], 31) < 2
    assert math.isnan(rate_at_quality([1, 2, 4], [30, 33, 36], 37))  # no extrapolation
    assert overlap_fraction([30, 36], [33, 40]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate([1, 2], [30, 31], [1], [30])


def test_parse_and_resolve_qualities():
    from slidepress.bench.codecs import DEFAULT_QUALITIES, parse_qualities, resolve_qualities

    assert parse_qualities("jpeg=50, 90 ; webp=60") == {"jpeg": [50, 90], "webp": [60]}
    assert parse_qualities(None) == {}
    for bad in ("jpeg", "jpeg=", "jpeg=a", "jpeg=1;jpeg=2"):
        with pytest.raises(UsageError):
            parse_qualities(bad)
    got = resolve_qualities(["jpeg", "htj2k"], {"jpeg": [90, 50]})
    assert got["jpeg"] == [50, 80, 90]  # the q80 anchor is always measured
    assert got["htj2k"] == sorted(DEFAULT_QUALITIES["htj2k"], reverse=True)  # step: low->high
    with pytest.raises(CodecError, match="unknown codec"):
        resolve_qualities(["jpeg", "nope"], None)
    with pytest.raises(CodecError, match="outside"):
        resolve_qualities(["webp"], {"webp": [150]})
    with pytest.raises(UsageError, match="not among"):
        resolve_qualities(["jpeg"], {"webp": [50]})


def test_default_codecs_are_registered_and_have_sweeps():
    from slidepress.bench.codecs import DEFAULT_CODECS, DEFAULT_QUALITIES
    from slidepress.codecs import CODECS

    assert DEFAULT_CODECS and set(DEFAULT_CODECS) <= set(CODECS.names())
    assert all(DEFAULT_QUALITIES[c] for c in DEFAULT_CODECS)
    assert "png" not in DEFAULT_CODECS  # the lossless reference is opt-in


def test_default_sweeps_are_declared_on_the_codec_classes():
    """`bench codecs` and `eval downstream` read each codec's default sweep from its class;
    reading the default codecs (what `--help` shows) imports no codec library."""
    import subprocess
    import sys

    from slidepress.bench.codecs import DEFAULT_QUALITIES
    from slidepress.codecs import CODECS

    assert DEFAULT_QUALITIES["jpeg"] == list(CODECS["jpeg"].sweeps["bench"])
    assert resolve_default("learned") == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    from slidepress.bench.codecs.options import default_sweep

    assert default_sweep("pathae") == []  # no bench sweep: the default quality is coded
    code = ("import sys\nfrom slidepress.bench.codecs.options import DEFAULT_CODECS\n"
            "print('imagecodecs' in sys.modules, len(DEFAULT_CODECS))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "7"], r.stderr


def resolve_default(codec: str) -> list[float]:
    from slidepress.bench.codecs import resolve_qualities

    return resolve_qualities([codec], None)[codec]


def test_package_exports_resolve_lazily():
    """`slidepress.bench.codecs` loads its submodules on first use; every export resolves, and
    to the function, not to a submodule of the same name."""
    import inspect

    import slidepress.bench.codecs as bc
    from slidepress.bench.codecs import run  # noqa: F401 (imports every submodule)

    for name in bc.__all__:
        obj = getattr(bc, name)
        assert not inspect.ismodule(obj), name
    assert callable(bc.measure) and bc.run_codec_benchmark.__name__ == "run_codec_benchmark"
    with pytest.raises(AttributeError):
        bc.no_such_name  # noqa: B018


def test_bench_codecs_help_imports_no_codec_library():
    """`--help` shows the defaults and the codec names without loading imagecodecs or torch."""
    import os
    import subprocess
    import sys

    from slidepress.bench.codecs import DEFAULT_CODECS

    code = (
        "import runpy, sys\n"
        "sys.argv = ['slidepress', 'bench', 'codecs', '--help']\n"
        "try:\n"
        "    runpy.run_module('slidepress', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('imagecodecs', 'torch'))\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert ",".join(DEFAULT_CODECS) in out.stdout and "png" in out.stdout


def _rows(codec: str, kind: str, inp: str, rate: list[float], q: list[float], quality=None):
    qual = quality or list(range(len(rate)))
    return [
        {"input": inp, "kind": kind, "codec": codec, "quality": float(k), "bpp": r, "psnr": p,
         "ms_ssim_db": p / 2, "ssim": 0.9, "ms_ssim": 0.95, "encode_ms": 1.0, "decode_ms": 0.5,
         "max_abs_error": 3}
        for k, r, p in zip(qual, rate, q, strict=True)
    ]  # fmt: skip


def test_summaries_on_synthetic_rows():
    """The summaries are pure functions of the rows: a codec that needs 80 % of JPEG's bits at
    every quality has a BD-rate of -20 % and saves 20 % at JPEG q80's quality."""
    from slidepress.bench.codecs import bd_tables, match_anchor, mean_curve

    rate, q = [0.5, 1.0, 2.0, 4.0], [28.0, 31.0, 34.0, 36.5]
    rows = []
    for inp, kind in (("a.png", "image"), ("b.svs", "slide")):
        rows += _rows("jpeg", kind, inp, rate, q, quality=[30, 50, 80, 95])
        rows += _rows("webp", kind, inp, [0.8 * r for r in rate], q)
    curve = mean_curve(rows)
    assert [(c["codec"], c["n_inputs"]) for c in curve] == [("jpeg", 2)] * 4 + [("webp", 2)] * 4
    assert curve[0]["ratio_raw"] == pytest.approx(24 / 0.5)
    bd, per_input = bd_tables(rows, ["jpeg", "webp"])
    assert [b["codec"] for b in bd] == ["webp"] and len(per_input) == 2
    for method in ("pchip", "cubic"):
        assert bd[0][f"bd_rate_psnr_{method}"] == pytest.approx(-20.0)
        assert bd[0][f"bd_rate_ms_ssim_db_{method}"] == pytest.approx(-20.0)
    assert bd[0]["n_inputs_psnr"] == 2
    match = {m["codec"]: m for m in match_anchor(rows, ["jpeg", "webp"])}
    assert match["jpeg"]["bpp_psnr"] == pytest.approx(2.0)  # q80 on its own curve
    assert match["webp"]["bpp_psnr"] == pytest.approx(1.6)
    assert match["webp"]["saving_pct_psnr"] == pytest.approx(20.0)
    assert bd_tables(rows, ["webp"]) == ([], []) and match_anchor(rows, ["webp"]) == []


@needs_shared
def test_small_benchmark_run(tmp_path):
    from slidepress.bench.codecs import run_codec_benchmark

    inputs = [TILES / "histoqc_template1.png", TILES / "torchstain_source.png"]
    res = run_codec_benchmark(
        inputs, tmp_path / "rep", ["jpeg", "webp"], {"jpeg": [30, 80, 95], "webp": [30, 60, 90]},
        tile=256, max_tiles_per_input=1, feature_similarity=False, embedding_encoder="none",
    )  # fmt: skip
    for name in ("results.csv", "results.json", "report.md", "rd_psnr.png", "rd_ms_ssim.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0, name
    # similarity switched off: NaN columns, no plots, no section, no BD-rate on it
    assert not (tmp_path / "rep" / "rd_featsim.png").exists()
    assert not (tmp_path / "rep" / "rd_embsim.png").exists()
    assert all(math.isnan(r["featsim_mean"]) and math.isnan(r["embsim"]) for r in res.rows)
    assert math.isnan(res.bd_rates[0]["bd_rate_featsim_db_pchip"])
    assert res.plots["timing"].stat().st_size > 0
    assert len(res.rows) == 2 * 2 * 3
    assert [i["n_tiles"] for i in res.inputs] == [1, 1]
    assert "1 of 2 full tiles" in res.inputs[1]["note"]  # 584x438: 2 tiles, 1 drawn
    for inp in ("histoqc_template1.png", "torchstain_source.png"):
        for codec in ("jpeg", "webp"):
            rows = [r for r in res.rows if r["input"] == inp and r["codec"] == codec]
            for key in ("bpp", "psnr", "ssim", "ms_ssim"):
                values = [r[key] for r in rows]
                assert values == sorted(values) and len(set(values)) == 3, (inp, codec, key)
            for r in rows:
                assert r["bytes"] > 0 and r["bpp"] == pytest.approx(8 * r["bytes"] / r["pixels"])
                assert r["ratio_raw"] == pytest.approx(24 / r["bpp"])
                assert r["ms_ssim_scales"] == 5 and r["encode_ms"] > 0
    # JPEG against itself: zero; the summary tables exist and agree with the rows
    j = [r for r in res.rows if r["input"] == "histoqc_template1.png" and r["codec"] == "jpeg"]
    rate, q = [r["bpp"] for r in j], [r["psnr"] for r in j]
    assert bd_rate(rate, q, rate, q) == pytest.approx(0.0, abs=1e-12)
    assert [b["codec"] for b in res.bd_rates] == ["webp"]
    match = {m["codec"]: m for m in res.jpeg_q80_match}
    q80 = [r["bpp"] for r in res.rows if r["codec"] == "jpeg" and r["quality"] == 80]
    assert match["jpeg"]["bpp_psnr"] == pytest.approx(np.mean(q80))  # on its own curve
    assert match["jpeg"]["saving_pct_psnr"] == pytest.approx(0.0, abs=1e-9)
    doc = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert len(doc["rows"]) == 12 and doc["config"]["qualities"]["jpeg"] == [30, 80, 95]
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "](rd_psnr.png)" in report and "relative to the input as given" in report.lower()
    header = (tmp_path / "rep" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("input,kind,codec,quality,")


@needs_shared
def test_benchmark_writes_feature_and_embedding_similarity(tmp_path):
    """Both metrics on by default: per-depth featsim columns, featsim_db, embsim (nic-multitask)
    in the rows and results.csv, their RD plots, the report section and a BD-rate on featsim."""
    import csv

    from slidepress.bench.codecs import run_codec_benchmark
    from slidepress.metrics import DEPTHS

    res = run_codec_benchmark(
        [TILES / "tiatoolbox_target.png"], tmp_path / "rep", ["jpeg", "webp"],
        {"jpeg": [20, 60, 90], "webp": [20, 60, 90]}, tile=256, max_tiles_per_input=2,
    )  # fmt: skip
    with open(tmp_path / "rep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    cols = [*(f"featsim_{d}" for d in DEPTHS), "featsim_mean", "featsim_db", "embsim"]
    assert set(cols) <= set(rows[0]) and len(rows) == len(res.rows) == 7  # + JPEG q80
    for codec in ("jpeg", "webp"):
        sel = [r for r in res.rows if r["codec"] == codec]  # in quality order
        for key in ("featsim_mean", "featsim_db", "embsim"):
            values = [r[key] for r in sel]
            assert values == sorted(values) and len(set(values)) == len(values), (codec, key)
        for r in sel:
            assert 0 < r["featsim_mean"] < 1 and 0 < r["embsim"] < 1
            assert r["featsim_mean"] == pytest.approx(np.mean([r[f"featsim_{d}"] for d in DEPTHS]))
            assert r["featsim_db"] == pytest.approx(-10 * math.log10(1 - r["featsim_mean"]))
    for name in ("rd_featsim.png", "rd_embsim.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0, name
    assert math.isfinite(res.bd_rates[0]["bd_rate_featsim_db_pchip"])
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "](rd_featsim.png)" in report and "`nic-multitask`" in report
    sim = json.loads((tmp_path / "rep" / "results.json").read_text())["config"]["similarity"]
    assert sim["feature_similarity"]["name"] == "featsim-resnet18"
    assert sim["embedding_encoder"]["name"] == "nic-multitask"


@needs_shared
def test_image_smaller_than_a_tile_is_used_whole(tmp_path):
    from PIL import Image

    from slidepress.bench.codecs import load_inputs

    with Image.open(TILES / "histoqc_template2.png") as im:
        im.crop((0, 0, 100, 80)).save(tmp_path / "small.png")
    (inp,) = load_inputs([tmp_path / "small.png"], tile=256)
    assert inp.tiles.shape == (1, 80, 100, 3) and "whole image" in inp.note


@needs_shared
def test_slide_tiles_are_seeded_tissue_samples():
    from slidepress.bench.codecs import load_inputs

    slide = SHARED / "slides" / "CMU-1-Small-Region.svs"
    a = load_inputs([slide], tile=256, max_tiles_per_input=3, seed=1)[0]
    b = load_inputs([slide], tile=256, max_tiles_per_input=3, seed=1)[0]
    assert a.kind == "slide" and a.tiles.shape == (3, 256, 256, 3)
    assert np.array_equal(a.tiles, b.tiles)
    assert a.tiles.std() > 10  # tissue, not blank glass
    assert 0 < a.source_bpp < 24


@needs_shared
def test_slide_with_bogus_mpp_needs_an_override():
    from slidepress.bench.codecs import load_inputs
    from slidepress.errors import MppError

    slide = SHARED / "slides" / "CropBreastSlide.tiff"  # 96 dpi tag: ~264 um/px, implausible
    with pytest.raises(MppError):
        load_inputs([slide], tile=256, max_tiles_per_input=2)
    (inp,) = load_inputs([slide], tile=256, max_tiles_per_input=2, mpp_override=0.5)
    assert inp.kind == "slide" and inp.tiles.shape == (2, 256, 256, 3)
    assert "0.5 um/px" in inp.note


@needs_shared
def test_cli_bench_codecs(tmp_path):
    from typer.testing import CliRunner

    from slidepress.cli.bench import bench_app

    runner = CliRunner()
    src = str(TILES / "histoqc_template4.png")
    out = tmp_path / "r"
    res = runner.invoke(
        bench_app,
        ["codecs", src, "-o", str(out), "--codecs", "jpeg,jpegxl", "--qualities",
         "jpeg=40,90;jpegxl=50,85", "--max-tiles", "1", "--tile", "192",
         "--no-feature-similarity", "--embedding-encoder", "none"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (out / "report.md").exists() and "jpegxl" in res.output
    assert "feature sim" not in res.output and not (out / "rd_featsim.png").exists()
    assert not (out / "rd_embsim.png").exists()
    again = runner.invoke(bench_app, ["codecs", src, "-o", str(out), "--codecs", "jpeg"])
    assert again.exit_code == 2 and "--overwrite" in again.output  # the report stays
    bad = runner.invoke(
        bench_app, ["codecs", src, "-o", str(out), "--codecs", "jpeg,foo", "--overwrite"]
    )
    assert bad.exit_code == 2
    assert "unknown codec 'foo'" in bad.output and "Traceback" not in bad.output
    enc = runner.invoke(
        bench_app, ["codecs", src, "-o", str(out), "--embedding-encoder", "nic-nope",
                    "--overwrite"],
    )  # fmt: skip
    assert enc.exit_code == 2 and "unknown encoder 'nic-nope'" in enc.output
    assert "Traceback" not in enc.output
