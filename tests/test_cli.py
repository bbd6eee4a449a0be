"""The command line as a user meets it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidepress.store import read_grid

from .conftest import SLIDES, needs_shared

EXE = [sys.executable, "-m", "slidepress"]


def run(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _bad_inputs(tmp: Path) -> dict[str, list]:
    real = (SLIDES / "CMU-1-Small-Region.svs").read_bytes() if SLIDES.is_dir() else b""
    (tmp / "zero.svs").write_bytes(b"")
    (tmp / "truncated.svs").write_bytes(real[: len(real) // 2])
    (tmp / "random.svs").write_bytes(np.random.default_rng(0).bytes(50_000))
    (tmp / "empty_dir").mkdir()
    (tmp / "notes.txt").write_text("not a slide\n")
    Image.new("RGB", (800, 600), (244, 244, 244)).save(tmp / "blank.png")
    (tmp / "a_file").write_text("x")
    return {
        "broken.svs": [SLIDES / "broken.svs"],
        "zero-byte": [tmp / "zero.svs"],
        "truncated": [tmp / "truncated.svs"],
        "random-bytes": [tmp / "random.svs"],
        "empty-dir": [tmp / "empty_dir"],
        "text-file": [tmp / "notes.txt"],
        "bogus-mpp": [SLIDES / "CropBreastSlide.tiff"],
        "no-tissue": [tmp / "blank.png", "--mpp-override", "0.5"],
        "patch-size-0": ["@sample", "--patch-size", "0"],
        "stride-negative": ["@sample", "--stride", "-5"],
        "unknown-encoder": ["@sample", "--encoder", "resnet-imaginary"],
        "output-is-file": ["@sample", "-o", tmp / "a_file"],
        "bad-format": ["@sample", "--format", "tiff"],
        "threshold>1": ["@sample", "--tissue-threshold", "1.5"],
    }


CASES = [
    "broken.svs", "zero-byte", "truncated", "random-bytes", "empty-dir", "text-file",
    "bogus-mpp", "no-tissue", "patch-size-0", "stride-negative", "unknown-encoder",
    "output-is-file", "bad-format", "threshold>1",
]  # fmt: skip


@needs_shared
@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_no_output(tmp_path, case):
    args = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    cmd = ["encode", *args] if "-o" in args else ["encode", *args, "-o", out]
    r = run(*cmd)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not out.exists() or list(out.iterdir()) == []


@needs_shared
def test_bad_slide_skipped_others_finish(tmp_path):
    r = run("encode", SLIDES / "broken.svs", "@sample", "-o", tmp_path / "o")
    assert r.returncode == 2
    assert "broken.svs" in r.stderr
    assert read_grid(tmp_path / "o" / "CMU-1-Small-Region.zarr").mask.any()


@needs_shared
def test_mpp_override_and_csv(tmp_path):
    crop = SLIDES / "CropBreastSlide.tiff"
    r = run("encode", crop, "-o", tmp_path / "a", "--mpp-override", "1.0")
    assert r.returncode == 0, r.stderr
    g = read_grid(tmp_path / "a" / "CropBreastSlide.zarr")
    assert g.metadata["slide"]["mpp_source"] == "override"
    csv = tmp_path / "m.csv"
    csv.write_text("slide,mpp\nCropBreastSlide.tiff,1.0\n")
    r = run("encode", crop, "-o", tmp_path / "b", "--mpp-csv", csv)
    assert r.returncode == 0, r.stderr
    assert read_grid(tmp_path / "b" / "CropBreastSlide.zarr").features.shape == g.features.shape


@needs_shared
def test_info_dicom_json_and_thumbnail(tmp_path):
    thumb = tmp_path / "t.png"
    r = run("info", SLIDES / "CMU-1-Small-Region-dicom", "--json", "--thumbnail", thumb)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["reader"] == "wsidicom" and d["dimensions"] == [2220, 2967]
    assert d["mpp_plausible"] is True
    assert max(Image.open(thumb).size) <= 1024


def test_info_refuses_to_overwrite_input(tmp_path, sample_svs):
    import shutil

    copy = tmp_path / "s.svs"
    shutil.copy(sample_svs, copy)
    before = copy.read_bytes()
    r = run("info", copy, "--thumbnail", copy)
    assert r.returncode == 2 and "refusing" in r.stderr
    assert copy.read_bytes() == before


def test_encode_convert_round_trip(tmp_path):
    r = run("encode", "@sample", "-o", tmp_path, "--format", "npz")
    assert r.returncode == 0, r.stderr
    src = tmp_path / "CMU-1-Small-Region.npz"
    assert (tmp_path / "CMU-1-Small-Region.pca.png").exists()
    assert (tmp_path / "CMU-1-Small-Region.tissue.png").exists()
    for fmt in ("h5", "mha", "zarr"):
        r = run("convert", src, "-o", tmp_path / f"c.{fmt}")
        assert r.returncode == 0, r.stderr
        assert read_grid(tmp_path / f"c.{fmt}").equals(read_grid(src))
    r = run("convert", src, "-o", tmp_path / "c.h5")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = run("convert", src, "-o", src, "--overwrite")
    assert r.returncode == 2 and "refusing" in r.stderr


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("info", "encode", "convert"):
        assert cmd in r.stdout


# -- compress / decompress / read ------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_container(tmp_path_factory):
    out = tmp_path_factory.mktemp("spz") / "s.spz"
    r = run("compress", "@sample", "-o", out, "--codec", "webp", "--quality", "80", "--ms-ssim")
    assert r.returncode == 0, r.stderr
    assert "bpp" in r.stderr and "PSNR" in r.stderr and "MS-SSIM" in r.stderr
    assert "whole slide" in r.stderr and "left out as glass" in r.stderr
    return out


def test_compress_decompress_read_cli(cli_container, tmp_path):
    tiff = tmp_path / "r.tiff"
    r = run("decompress", cli_container, "-o", tiff, "--lossless")
    assert r.returncode == 0, r.stderr
    s = openslide_open(tiff)
    assert s.dimensions == (2220, 2967)
    png = tmp_path / "region.png"
    r = run("read", cli_container, "--x", 100, "--y", 200, "--w", 300, "--h", 250, "-o", png)
    assert r.returncode == 0, r.stderr
    region = np.asarray(Image.open(png))
    assert region.shape == (250, 300, 3)
    ref = np.asarray(s.read_region((100, 200), 0, (300, 250)))[..., :3]
    np.testing.assert_array_equal(region, ref)


def openslide_open(path):
    import openslide

    return openslide.OpenSlide(str(path))


def _corrupt(src: Path, dst: Path) -> None:
    import zipfile

    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(dst) as z:
        info = next(i for i in z.infolist() if i.filename.startswith("L0/"))
    data = bytearray(dst.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "case", ["unknown-codec", "quality-range", "flipped-bytes", "truncated", "region-outside",
             "not-a-container", "decompress-exists"],
)  # fmt: skip
def test_container_bad_inputs(cli_container, tmp_path, case):
    out = tmp_path / "out.tiff"
    if case == "unknown-codec":
        args = ["compress", "@sample", "-o", tmp_path / "x.spz", "--codec", "gif"]
    elif case == "quality-range":
        args = [
            "compress",
            "@sample",
            "-o",
            tmp_path / "x.spz",
            "--codec",
            "jpeg",
            "--quality",
            "0",
        ]
    elif case == "flipped-bytes":
        bad = tmp_path / "bad.spz"
        _corrupt(cli_container, bad)
        args = ["decompress", bad, "-o", out]
    elif case == "truncated":
        bad = tmp_path / "trunc.spz"
        bad.write_bytes(cli_container.read_bytes()[:100_000])
        args = ["decompress", bad, "-o", out]
    elif case == "region-outside":
        args = ["read", cli_container, "--x", 2000, "--y", 0, "--w", 500, "--h", 10, "-o", out]
    elif case == "not-a-container":
        (tmp_path / "n.spz").write_text("hello")
        args = ["read", tmp_path / "n.spz", "--x", 0, "--y", 0, "--w", 5, "--h", 5, "-o", out]
    else:
        out.write_text("keep me")
        args = ["decompress", cli_container, "-o", out]
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip() and "━" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr
    if case == "flipped-bytes":
        assert "L0/" in lines[0] and "corrupted" in lines[0]
    if case == "decompress-exists":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists() and not (tmp_path / "x.spz").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
