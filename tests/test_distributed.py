"""`slidepress batch` on a Dask LocalCluster: good slides done and bad ones reported (exit 2),
a re-run does nothing new, a changed parameter recomputes, a slide split into region tasks is
merged into exactly the grid (encode) or container (compress) a whole-slide run writes,
Ctrl-C leaves no partial outputs and a resumable run, discovery and partial clean-up."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidepress.distributed.manifest import discover
from slidepress.errors import UsageError

from .conftest import SLIDES, needs_shared

ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def _batch(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slidepress", "batch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def _rows(report: Path) -> dict[str, dict]:
    with open(report, newline="") as f:
        return {r["slide"]: r for r in csv.DictReader(f)}


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial-" in p.name]


@pytest.fixture
def archive(tmp_path: Path, shared_slides: Path) -> Path:
    """Two good slides (one in a sub-folder), a broken SVS and a junk TIFF."""
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    (root / "CMU-1-Small-Region.svs").symlink_to(shared_slides / "CMU-1-Small-Region.svs")
    (root / "sub" / "pyramid.tiff").symlink_to(
        shared_slides / "CMU-1-Small-Region_pyramid_jpeg90.tiff"
    )
    (root / "sub" / "broken.svs").symlink_to(shared_slides / "broken.svs")
    (root / "junk.tif").write_bytes(b"II*\0 this is no slide")
    (root / ".hidden.svs").write_bytes(b"never looked at")
    return root


def test_discover_folder_mirrors_layout_and_csv_passes_fields(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "dcm").mkdir()
    for p in ("a/x.svs", "b/x.svs", "notes.txt", "dcm/1.dcm", "dcm/2.dcm"):
        (root / p).write_bytes(b"")
    tasks = discover(root, tmp_path / "out")
    got = {(Path(t.item["path"]).relative_to(root).as_posix(), t.out_dir) for t in tasks}
    out = tmp_path / "out"
    # empty .dcm files are no DICOM WSI series: each is tried as a slide of its own (a real
    # series is one slide: tests/test_real_input.py)
    assert got == {("a/x.svs", str(out / "a")), ("b/x.svs", str(out / "b")),
                   ("dcm/1.dcm", str(out / "dcm")), ("dcm/2.dcm", str(out / "dcm"))}  # fmt: skip
    manifest = tmp_path / "in" / "list.csv"
    manifest.write_text("path,mpp,case\na/x.svs,0.25,P1\nb/x.svs,,P2\n")
    t1, t2 = discover(manifest, out)
    assert t1.item["mpp_override"] == 0.25 and t1.item["mpp_source"] == "table"
    assert t1.item["fields"] == {"case": "P1"} and t2.item["mpp_override"] is None
    # two slides writing the same output are refused before anything runs
    clash = tmp_path / "lists" / "clash.csv"  # slides outside its folder: outputs flat
    clash.parent.mkdir()
    clash.write_text(f"path\n{root / 'a/x.svs'}\n{root / 'b/x.svs'}\n")
    with pytest.raises(UsageError, match="same outputs"):
        discover(clash, out)
    with pytest.raises(UsageError, match="'path' column"):
        (tmp_path / "empty.csv").write_text("slide\nx\n")
        discover(tmp_path / "empty.csv", out)


def test_sweep_removes_partials_of_dead_processes_only(tmp_path: Path) -> None:
    from slidepress.distributed.runner import sweep_partials
    from slidepress.store.atomic import _HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "sub" / f".x.partial-{_HOST}-{dead.pid}-0123abcd.zarr"
    stale.mkdir(parents=True)
    (stale / "chunk").write_bytes(b"half")
    live = tmp_path / f".y.partial-{_HOST}-{os.getpid()}-0123abcd.npz"
    live.write_bytes(b"being written")
    assert sweep_partials([tmp_path]) == [stale]
    assert not stale.exists() and live.exists()


@needs_shared
def test_local_cluster_batch_rerun_and_parameter_change(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _batch(str(archive), "-o", str(out), "--workers", "2", "encode", "--workers", "1")
    assert r.returncode == 2, r.stderr  # some slides had bad input
    assert "Traceback" not in r.stderr
    rows = _rows(out / "report.csv")
    assert set(rows) == {"CMU-1-Small-Region.svs", "pyramid.tiff", "broken.svs", "junk.tif"}
    assert rows["CMU-1-Small-Region.svs"]["status"] == "done"
    assert rows["pyramid.tiff"]["status"] == "done"
    assert rows["broken.svs"]["status"] == "failed" and rows["broken.svs"]["error"]
    assert rows["junk.tif"]["status"] == "failed" and "junk.tif" in rows["junk.tif"]["error"]
    assert int(rows["pyramid.tiff"]["count"]) > 0 and float(rows["pyramid.tiff"]["ratio"]) > 1
    grid = out / "CMU-1-Small-Region.zarr"
    sub_grid = out / "sub" / "pyramid.zarr"  # the input's layout, mirrored
    assert grid.is_dir() and sub_grid.is_dir()
    md = (out / "report.md").read_text()
    assert "| 4 | 2 | 0 | 2 |" in md and "broken.svs" in md
    assert (out / "throughput.png").stat().st_size > 1000
    assert not _partials(out)
    mtime = (grid / "zarr.json").stat().st_mtime_ns

    # a re-run does nothing new: done slides are skipped (content-keyed), bad ones fail again
    r = _batch(str(archive), "-o", str(out), "--workers", "2", "encode", "--workers", "1")
    assert r.returncode == 2, r.stderr
    rows = _rows(out / "report.csv")
    assert rows["CMU-1-Small-Region.svs"]["status"] == "skipped"
    assert rows["pyramid.tiff"]["status"] == "skipped"
    assert (grid / "zarr.json").stat().st_mtime_ns == mtime

    # a changed parameter recomputes (replacing the stale outputs needs --overwrite)
    from slidepress.store import read_grid

    old_hash = read_grid(grid).metadata["params_hash"]
    good = SLIDES / "CMU-1-Small-Region.svs"
    args = [str(good), "-o", str(out), "--workers", "1", "encode", "--tissue-threshold", "0.3"]
    r = _batch(*args)
    assert r.returncode == 2 and "use --overwrite" in r.stderr, r.stderr
    r = _batch(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert _rows(out / "report.csv")["CMU-1-Small-Region.svs"]["status"] == "done"
    g = read_grid(grid)
    assert g.metadata["params_hash"] != old_hash
    assert g.metadata["tissue"]["threshold_fraction"] == 0.3


@needs_shared
def test_region_split_equals_whole_slide_run(tmp_path: Path) -> None:
    """Bands of rows on different workers, merged: the same grids (every array, every
    variant) as the plain pipeline's whole-slide run; the parts are gone afterwards."""
    from slidepress.distributed.runner import ClusterOptions, run_tasks
    from slidepress.encoders import get_encoder
    from slidepress.pipeline.batch import EncodeJob
    from slidepress.pipeline.encode import EncodeOptions, encode_slide
    from slidepress.store import read_grid

    slide = SLIDES / "CMU-1-Small-Region.svs"
    options = {"mpp": 0.7, "augment": "dihedral", "workers": 1, "previews": True}
    whole = tmp_path / "whole"
    encode_slide(slide, whole, get_encoder("mean-rgb"), EncodeOptions(**options))

    split = tmp_path / "split"
    job = EncodeJob(encoder="mean-rgb", options=options)
    opts = ClusterOptions(workers=2, region_px=1, band_rows=8)  # 16 rows: 2 bands
    tasks = discover(slide, split)
    res = run_tasks(tasks, job, opts)
    assert res.regions == 2 and [o.status for o in res.outcomes] == ["done"]
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in split.iterdir()) and len(names) == 10
    for name in names:
        if name.endswith(".zarr"):
            a, b = read_grid(whole / name), read_grid(split / name)
            for k in ("features", "mask", "coords", "tissue_fraction", "tissue_mask"):
                assert np.array_equal(getattr(a, k), getattr(b, k)), (name, k)
            assert a.metadata["params_hash"] == b.metadata["params_hash"]
            assert a.metadata["grid"] == b.metadata["grid"]
        else:  # previews
            assert (whole / name).read_bytes() == (split / name).read_bytes(), name
    assert not (split / ".slidepress-parts").exists()
    # and a re-run skips the slide before splitting it again
    res = run_tasks(tasks, job, opts)
    assert [o.status for o in res.outcomes] == ["skipped"] and res.regions == 0


def test_region_bands_keep_every_band_level_tile_in_one_band() -> None:
    """Bands are multiples of the read block (4 tile rows); a level is coded in the bands
    only when each of its tiles lies over one band (children_kept never crosses a boundary,
    the clamped last rows included); the coarser ones are left to the merge."""
    from slidepress.pipeline.coding import children_kept
    from slidepress.pipeline.compress_bands import region_bands

    assert region_bands([24, 12, 6, 3, 2, 1], 8) == ([(0, 8), (8, 16), (16, 24)], 2)
    assert region_bands([24, 12, 6, 3, 2, 1], 16) == ([(0, 16), (16, 24)], 3)
    assert region_bands([24, 12, 6, 3, 2, 1], 6)[0][1] == (4, 8)  # rounded down to 4
    assert region_bands([5, 3, 2, 1], 64) == ([(0, 5)], 4)  # one band: every level
    rng = np.random.default_rng(0)
    for rows0 in (9, 17, 33, 64, 100, 257):
        level_rows = [rows0]
        while level_rows[-1] > 1:
            level_rows.append(-(-level_rows[-1] // 2) - int(rng.integers(0, 2)) or 1)
        for band_rows in (4, 8, 12, 16, 32):
            bands, k = region_bands(level_rows, band_rows)
            for r0, r1 in bands:
                keep = np.zeros((rows0, 3), bool)
                keep[r0:r1] = rng.random((r1 - r0, 3)) < 0.5
                for lv in range(1, k):
                    lo = r0 >> lv
                    hi = r1 >> lv if r1 < rows0 else level_rows[lv]
                    keep = children_kept(keep, level_rows[lv], 3)
                    assert not keep[:lo].any() and not keep[hi:].any(), (level_rows, r0, lv)


def _same_containers(a: Path, b: Path) -> None:
    """Same entries in the same order, identical bytes; manifests equal but for 'created'."""
    import json
    import zipfile

    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        assert za.namelist() == zb.namelist()
        for name in za.namelist():
            if name != "manifest.json":
                assert za.read(name) == zb.read(name), name
        ma, mb = (json.loads(z.read("manifest.json")) for z in (za, zb))
    assert ma.pop("created") and mb.pop("created")
    fa, fb = ma.pop("fidelity"), mb.pop("fidelity")
    assert ma == mb
    assert fa["psnr_db"] == fb["psnr_db"]  # per-tile squared errors re-added in order
    for k, v in fa.items():
        if isinstance(v, float):
            assert fb[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert fb[k] == v, k


@needs_shared
@pytest.mark.parametrize(
    "codec, background, band_rows",
    [("jpeg", "skip", 4), ("png", "constant", 8), ("jpeg", "keep", 16)],
)
def test_compress_bands_merge_into_the_whole_slide_container(
    tmp_path: Path, codec: str, background: str, band_rows: int
) -> None:
    """Plan, bands and merge (what the region tasks run, here in one process) write the
    container a whole-slide `compress_slide` writes, for each background policy."""
    from slidepress.codecs import get_codec
    from slidepress.pipeline.compress import CompressOptions, compress_slide, plan_compress
    from slidepress.pipeline.compress_bands import compress_band, merge_bands, region_bands

    slide = SLIDES / "CMU-1-Small-Region.svs"
    opts = CompressOptions(codec=codec, tile=128, background=background, workers=1)
    whole = compress_slide(slide, tmp_path / "whole.spz", opts)
    out = tmp_path / "split.spz"
    c = get_codec(codec, None)
    plan = plan_compress(slide, out, opts, c)
    bands, n_levels = region_bands([g.rows for g, _, _ in plan.levels], band_rows)
    assert len(bands) > 1 and n_levels < len(plan.levels)  # some levels left to the merge
    state = plan.split_state(opts)
    parts = []
    for band in bands:
        part = tmp_path / f"part-{band[0]}.zip"
        compress_band(plan_compress(slide, out, opts, c, given=state), opts, band, n_levels, part)
        parts.append(part)
    merged = merge_bands(plan_compress(slide, out, opts, c, given=state), opts, parts, n_levels)
    assert merged.psnr == whole.psnr and merged.tiles_stored == whole.tiles_stored
    _same_containers(tmp_path / "whole.spz", out)


@needs_shared
def test_compress_region_split_on_dask_equals_whole_slide_run(tmp_path: Path) -> None:
    """`batch compress` on a slide above the threshold: region tasks on two workers, merged
    into the container of a whole-slide run; a band done by an interrupted run is not redone;
    the parts are gone afterwards and a re-run skips the slide."""
    from slidepress.distributed.regions import part_path, parts_dir
    from slidepress.distributed.runner import ClusterOptions, run_tasks
    from slidepress.pipeline.batch import CompressJob
    from slidepress.pipeline.compress import CompressOptions, compress_slide

    slide = SLIDES / "CMU-1-Small-Region.svs"
    options = {"codec": "jpeg", "tile": 128, "workers": 1}
    whole = tmp_path / "whole.spz"
    compress_slide(slide, whole, CompressOptions(**options))

    split = tmp_path / "split"
    job = CompressJob(options=options)
    opts = ClusterOptions(workers=2, region_px=1, band_rows=8)  # 24 tile rows: 3 bands
    tasks = discover(slide, split)
    res = run_tasks(tasks, job, opts)
    assert res.regions == 3 and [o.status for o in res.outcomes] == ["done"]
    assert res.outcomes[0].count > 0 and res.outcomes[0].metrics["psnr_db"] > 20
    _same_containers(whole, split / "CMU-1-Small-Region.spz")
    assert sorted(p.name for p in split.iterdir()) == ["CMU-1-Small-Region.spz"]
    assert not _partials(split)
    res = run_tasks(tasks, job, opts)
    assert [o.status for o in res.outcomes] == ["skipped"] and res.regions == 0

    # resume: a band part left by an interrupted run is kept, the others coded, then merged
    from slidepress.distributed.regions import region_job, split_job
    from slidepress.pipeline.items import SlideItem

    (split / "CMU-1-Small-Region.spz").unlink()
    item = SlideItem.of(slide)
    sj = split_job(job, region_px=1, band_rows=8)
    sj.run(item, split, None)
    assert sj.split is not None
    first = sj.split["bands"][0]
    assert region_job(job, sj.split, first).run(item, split, None).status == "done"
    parts = parts_dir(split, "CMU-1-Small-Region", sj.split["params_hash"])
    assert part_path(parts, job, tuple(first)).exists()
    regions: list[str] = []
    res = run_tasks(
        tasks, job, opts, lambda kind, d: kind == "region" and regions.append(d["status"])
    )
    assert [o.status for o in res.outcomes] == ["done"] and sorted(regions) == [
        "done", "done", "skipped"]  # fmt: skip
    _same_containers(whole, split / "CMU-1-Small-Region.spz")
    assert not (split / ".slidepress-parts").exists()


@needs_shared
@pytest.mark.slow
def test_ctrl_c_leaves_no_partials_and_the_rerun_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it: the CLI and the
    local cluster's workers) mid-run: exit 130, one line and no traceback, no `.partial-`
    file left; a re-run skips what finished and does the rest."""
    import signal
    import time

    src = SLIDES / "CMU-1-Small-Region.svs"
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(6):
        (archive / f"s{i}.svs").symlink_to(src)
    out = tmp_path / "out"
    job = ["compress", "--codec", "png", "--tile", "128", "--workers", "1"]
    args = [sys.executable, "-m", "slidepress", "batch", str(archive), "-o", str(out),
            "--workers", "1", *job]  # fmt: skip
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.spz")) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None and list(out.glob("*.spz")), "no slide finished in time"
        time.sleep(0.3)  # mid-slide: the next container is being written
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]  # the CLI prints to stderr
    assert lines[-1] == "error: interrupted; partial outputs removed", stderr
    assert [ln for ln in lines if "error" in ln.lower()] == lines[-1:], stderr
    assert "Traceback" not in stdout + stderr
    assert not _partials(out)
    finished = {p.stem for p in out.glob("*.spz")}
    assert 1 <= len(finished) < 6

    r = _batch(str(archive), "-o", str(out), "--workers", "1", *job)
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "report.csv")
    assert {Path(k).stem for k, v in rows.items() if v["status"] == "skipped"} == finished
    assert sum(v["status"] == "done" for v in rows.values()) == 6 - len(finished)
    assert not _partials(out)
