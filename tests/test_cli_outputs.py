"""Outputs as a user meets them: impossible paths, existing files, absurd sizes.

Every case: one `error:` line naming the problem, exit 2, quickly, nothing written or replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXE = [sys.executable, "-m", "slidepress"]


def run(*args, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    r.seconds = time.perf_counter() - t0
    return r


def one_line_exit_2(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "s.spz"
    r = run("compress", "@sample", "-o", out, "--codec", "jpeg", "--quality", "70")
    assert r.returncode == 0, r.stderr
    return out


def _cases(tmp: Path, container: Path) -> dict[str, tuple[list, str]]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    grid_src = tmp / "g.npz"
    return {
        # (arguments, a word the message must contain)
        "compress -o under a file": (["compress", "@sample", "-o", a_file / "x.spz"], "a_file"),
        "compress -o under /proc": (["compress", "@sample", "-o", "/proc/x.spz"], "/proc"),
        "compress -o missing folder": (
            ["compress", "@sample", "-o", tmp / "nope" / "x.spz"],
            "does not exist",
        ),
        "encode -o under a file": (["encode", "@sample", "-o", a_file / "out"], "a_file"),
        "encode -o under /proc": (["encode", "@sample", "-o", "/proc/out"], "/proc"),
        "decompress -o under /proc": (["decompress", container, "-o", "/proc/r.tiff"], "/proc"),
        # --workers: the old name of --threads, still taken (the message names threads)
        "decompress --workers 0": (
            ["decompress", container, "-o", tmp / "r.tiff", "--workers", 0],
            "threads",
        ),
        "compress --workers 1000": (
            ["compress", "@sample", "-o", tmp / "w.spz", "--workers", 1000],
            "threads",
        ),
        "encode --batch-size 1e9": (
            ["encode", "@sample", "-o", tmp / "o", "--batch-size", 1_000_000_000],
            "batch size",
        ),
        "encode --patch-size huge": (
            ["encode", "@sample", "-o", tmp / "o", "--patch-size", 10**7],
            "patch size",
        ),
        "read huge region": (
            [
                "read",
                container,
                "--x",
                0,
                "--y",
                0,
                "--w",
                10**6,
                "--h",
                10**6,
                "-o",
                tmp / "r.png",
            ],
            "region",
        ),  # fmt: skip
        "read -o under /proc": (
            ["read", container, "--x", 0, "--y", 0, "--w", 8, "--h", 8, "-o", "/proc/r.png"],
            "/proc",
        ),
        "info --thumbnail under a file": (
            ["info", "@sample", "--thumbnail", a_file / "t.png"],
            "a_file",
        ),
        "convert -o under /proc": (["convert", grid_src, "-o", "/proc/g.zarr"], "/proc"),
        "bad --limit": (["--limit", "max_bananas=3", "info", "@sample"], "limit"),
    }


CASES = [
    "compress -o under a file", "compress -o under /proc", "compress -o missing folder",
    "encode -o under a file", "encode -o under /proc", "decompress -o under /proc",
    "decompress --workers 0", "compress --workers 1000", "encode --batch-size 1e9",
    "encode --patch-size huge", "read huge region", "read -o under /proc",
    "info --thumbnail under a file", "convert -o under /proc", "bad --limit",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_impossible_outputs_and_sizes(tmp_path, container, case):
    if case.startswith("convert"):
        from slidepress.store import EmbeddingGrid, write_grid

        write_grid(EmbeddingGrid.from_features(np.ones((2, 2, 3), np.float32)), tmp_path / "g.npz")
    args, word = _cases(tmp_path, container)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = run(*args)
    line = one_line_exit_2(r)
    assert word in line, line
    assert r.seconds < 30  # checked before the work, not after
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("command", ["read", "info", "decompress", "compress", "convert"])
def test_existing_output_needs_overwrite(tmp_path, container, command):
    from slidepress.store import EmbeddingGrid, write_grid

    target = {
        "read": tmp_path / "r.png", "info": tmp_path / "t.png", "decompress": tmp_path / "r.tiff",
        "compress": tmp_path / "x.spz", "convert": tmp_path / "c.npz",
    }[command]  # fmt: skip
    grid = tmp_path / "g.npz"
    write_grid(EmbeddingGrid.from_features(np.ones((2, 2, 3), np.float32)), grid)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "keep.png")
    target.write_bytes((tmp_path / "keep.png").read_bytes())
    before = target.read_bytes()
    args = {
        "read": ["read", container, "--x", 0, "--y", 0, "--w", 32, "--h", 32, "-o", target],
        "info": ["info", "@sample", "--thumbnail", target],
        "decompress": ["decompress", container, "-o", target],
        "compress": ["compress", "@sample", "-o", target, "--codec", "jpeg"],
        "convert": ["convert", grid, "-o", target],
    }[command]
    line = one_line_exit_2(run(*args))
    assert "--overwrite" in line
    assert target.read_bytes() == before
    r = run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() != before


def test_report_folders_and_predictions_are_not_replaced(tmp_path):
    """`bench codecs` and `eval probe` write into a folder: an earlier report stays unless
    --overwrite."""
    out = tmp_path / "rep"
    out.mkdir()
    (out / "results.json").write_text("{}")
    img = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(img)
    r = run("bench", "codecs", img, "-o", out, "--codecs", "jpeg", "--tile", 32)
    assert "--overwrite" in one_line_exit_2(r)
    assert (out / "results.json").read_text() == "{}"


def test_encode_result_complete_only_with_previews(tmp_path):
    """A run killed after the grid but before the previews (old order) must not be taken as
    done: a missing preview makes the re-run redo the slide."""
    r = run("encode", "@sample", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    pca = tmp_path / "CMU-1-Small-Region.pca.png"
    pca.unlink()
    r = run("encode", "@sample", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "up to date" not in r.stderr and pca.exists()
    r = run("encode", "@sample", "-o", tmp_path)
    assert "up to date" in r.stderr


def test_decompress_compression_flag_and_old_alias(tmp_path, container):
    """`--compression` names the TIFF tile compression; the old `--codec` still works (hidden)."""
    r = run("decompress", container, "-o", tmp_path / "a.tiff", "--compression", "jpeg")
    assert r.returncode == 0, r.stderr
    r = run("decompress", container, "-o", tmp_path / "b.tiff", "--codec", "jpeg")
    assert r.returncode == 0, r.stderr
    assert "--compression" in one_line_exit_2(
        run("decompress", container, "-o", tmp_path / "c.tiff", "--compression", "webp")
    )
    assert "--codec" not in run("decompress", "--help").stdout
