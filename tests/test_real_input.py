"""Real inputs a user has, that once ended in internal errors (issue 19): an image with no
glass, tracebacks on request, two runs on one output, a stray .dcm in a folder of slides, and
a container bigger than its source."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidepress.errors import OutputBusyError
from slidepress.slide.discovery import dicom_folder, slides_in
from slidepress.slide.glass import estimate_glass
from slidepress.store import read_grid
from slidepress.store.atomic import _replace, output_lock

from .conftest import SHARED, SLIDES, needs_shared

PCAM = SHARED / "patches" / "pcam"
# PatchCamelyon patches that are tissue edge to edge, whose few bright grey pixels fall in
# two clusters: the glass estimate once took the median of nothing there (NaN -> crash)
NO_GLASS = ["valid/1/patch0030785.jpg", "train/0/patch0006842.jpg"]
needs_pcam = pytest.mark.skipif(not PCAM.is_dir(), reason=f"PCam patches not found at {PCAM}")
SAMPLE = Path(__file__).resolve().parents[1] / "src/slidepress/data/CMU-1-Small-Region.svs"


def cli(*args, env: dict | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """`slidepress ARGS` in a fresh process; `prelude` runs first (e.g. to plant a bug)."""
    code = f"import sys\n{prelude}\nfrom slidepress.cli.main import run\nrun()"
    full_env = {k: v for k, v in os.environ.items() if k != "SLIDEPRESS_DEBUG"}
    full_env.update(HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=300,
    )  # fmt: skip


def lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.strip().splitlines() if ln.strip()]


# -- 1. an image with no glass ---------------------------------------------------------------


def test_glass_estimate_with_candidates_in_two_clusters():
    """32 bright grey pixels at 190 and 4 at 250 among tissue: the 90th percentile of the 36
    candidates falls halfway between the clusters (220), far from both; the estimate must
    still be a real glass colour."""
    rng = np.random.default_rng(0)
    px = rng.integers(60, 170, (96 * 96, 3)).astype(np.uint8)  # saturated tissue
    px[:, 1] //= 2
    px[:32] = 190
    px[32:36] = 250
    glass = estimate_glass(px.reshape(96, 96, 3))
    assert all(0 <= c <= 255 for c in glass.colour)
    assert glass.colour in ((190, 190, 190), (250, 250, 250), (255, 255, 255))


@needs_pcam
@pytest.mark.parametrize("patch", NO_GLASS)
@pytest.mark.parametrize("command", ["encode", "compress"])
def test_all_tissue_patch_is_encoded_and_compressed(tmp_path, patch, command):
    out = tmp_path / ("o.spz" if command == "compress" else "o")
    r = cli(command, PCAM / patch, "--mpp-override", "0.972", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr
    assert out.exists()


def test_threshold_zero_encodes_every_cell_of_blank_glass(tmp_path):
    rng = np.random.default_rng(0)
    blank = np.clip(235 + rng.normal(0, 2, (300, 300, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(blank).save(tmp_path / "blank.png")
    common = ["--mpp-override", "0.972", "--patch-size", "96"]
    r = cli("encode", tmp_path / "blank.png", *common, "-o", tmp_path / "a")
    assert r.returncode == 2 and "no tissue" in r.stderr  # the detector sees none ...
    r = cli("encode", tmp_path / "blank.png", *common, "--tissue-threshold", "0", "-o",
            tmp_path / "b")  # fmt: skip
    assert r.returncode == 0, r.stderr  # ... and threshold 0 encodes every cell anyway
    g = read_grid(tmp_path / "b" / "blank.zarr")
    assert g.mask.all() and g.mask.size == 36


# -- 2. tracebacks on request ----------------------------------------------------------------

BUG = textwrap.dedent("""
    import slidepress.pipeline.encode as _e
    def planted_bug(*a, **k):
        raise RuntimeError("planted bug")
    _e.encode_rows = planted_bug
""")


@pytest.mark.parametrize("debug", [False, True])
def test_internal_error_traceback_only_with_debug(tmp_path, debug):
    """A bug in one slide is recorded by the batch runner; SLIDEPRESS_DEBUG=1 prints the
    traceback it kept (report.csv never holds it)."""
    env = {"SLIDEPRESS_DEBUG": "1"} if debug else {}
    other = tmp_path / "other.svs"
    shutil.copy(SAMPLE, other)
    r = cli("encode", SAMPLE, other, "-o", tmp_path / "o", env=env, prelude=BUG)
    assert r.returncode == 1, r.stderr
    assert "internal error: RuntimeError: planted bug" in r.stderr
    if debug:
        assert "Traceback (most recent call last)" in r.stderr
        assert "planted_bug" in r.stderr
    else:
        assert "Traceback" not in r.stderr
        assert len([ln for ln in lines(r.stderr) if "internal error" in ln]) == 2
    report = (tmp_path / "o" / "report.csv").read_text()
    assert "planted bug" in report and "Traceback" not in report


# -- 4. two runs on one output ---------------------------------------------------------------


def test_output_lock_refuses_a_second_writer_and_cleans_up(tmp_path):
    target = tmp_path / "new" / "x.zarr"
    with output_lock(target):
        assert (tmp_path / "new" / ".x.zarr.lock").exists()
        with pytest.raises(OutputBusyError, match="being written by process"):
            with output_lock(target):
                pass
    assert not (tmp_path / "new").exists()  # made for the lock, left empty: removed
    with output_lock(target):  # free again
        pass


def test_replace_tolerates_a_folder_that_appears_meanwhile(tmp_path, monkeypatch):
    """A concurrent writer puts its finished folder at the target between our move-aside and
    our rename: the newer whole output wins, no ENOTEMPTY."""
    target, tmp = tmp_path / "g.zarr", tmp_path / ".g.partial"
    tmp.mkdir()
    (tmp / "mine").write_text("1")
    real = os.replace
    planted = []

    def racing(src, dst):
        if Path(dst) == target and not planted:
            planted.append(1)
            target.mkdir()
            (target / "theirs").write_text("2")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", racing)
    _replace(tmp, target)
    assert sorted(p.name for p in target.iterdir()) == ["mine"]
    assert [p.name for p in tmp_path.iterdir()] == ["g.zarr"]  # nothing moved aside is left


@pytest.mark.parametrize("command", ["encode", "compress"])
def test_second_run_on_a_busy_output_says_so(tmp_path, command):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    target = out_dir / ("CMU-1-Small-Region.zarr" if command == "encode" else "x.spz")
    dest = out_dir if command == "encode" else target
    with output_lock(target):
        r = cli(command, SAMPLE, "-o", dest)
    assert r.returncode == 2, r.stderr
    assert len(lines(r.stderr)) == 1 and "is being written by process" in r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == []


@pytest.mark.parametrize("command", ["encode", "compress"])
def test_two_runs_at_once_on_one_output(tmp_path, command):
    out = tmp_path / ("o" if command == "encode" else "o.spz")
    exe = [sys.executable, "-m", "slidepress", command, str(SAMPLE), "-o", str(out)]
    procs = [subprocess.Popen(exe, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, err in results:
        assert "internal error" not in err
        if rc == 2:
            assert "is being written by" in err
    if command == "encode":
        assert read_grid(out / "CMU-1-Small-Region.zarr").mask.any()
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    else:
        from slidepress.store.container import Container

        with Container(out) as c:
            assert c.manifest["codec"]["name"]
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# -- 5. a stray .dcm in a folder of slides ---------------------------------------------------


def _ct_dicom() -> Path:
    """A real single-image DICOM file (CT) that pydicom's wheel ships."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


def _mixed_folder(root: Path) -> Path:
    """Two slides (one in a sub-folder), a junk .svs and a lone DICOM image."""
    (root / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE, root / "a.svs")
    shutil.copy(SAMPLE, root / "sub" / "b.svs")
    (root / "junk.svs").write_bytes(np.random.default_rng(0).bytes(5000))
    shutil.copy(_ct_dicom(), root / "ct.dcm")
    return root


def test_discovery_a_lone_dcm_does_not_hide_the_slides(tmp_path):
    root = _mixed_folder(tmp_path / "in")
    names = lambda ps: [str(p.relative_to(root)) for p in ps]  # noqa: E731
    assert names(slides_in(root)) == ["a.svs", "ct.dcm", "junk.svs"]
    assert names(slides_in(root, recursive=True)) == ["a.svs", "ct.dcm", "junk.svs", "sub/b.svs"]
    assert dicom_folder(root).others == [root / "ct.dcm"]


@needs_shared
def test_discovery_dicom_series_is_one_slide_and_its_neighbours_their_own(tmp_path):
    series = SLIDES / "CMU-1-Small-Region-dicom"
    assert slides_in(series) == [series]
    folder = tmp_path / "case"
    shutil.copytree(series, folder)
    shutil.copy(SAMPLE, folder / "extra.svs")
    shutil.copy(_ct_dicom(), folder / "ct.dcm")
    assert slides_in(folder) == [folder, folder / "ct.dcm", folder / "extra.svs"]
    layout = dicom_folder(folder)
    assert len(layout.series) == 1 and len(next(iter(layout.series.values()))) == 7
    # the folder still opens as the DICOM slide, with the same content key as the series alone
    from slidepress.pipeline.provenance import content_sha256
    from slidepress.slide import open_slide

    assert content_sha256(folder) == content_sha256(series)
    with open_slide(folder) as s:
        assert s.info.reader == "wsidicom"
    # an overview instance alone is no slide: tried (and refused) as a file of its own
    lone = tmp_path / "lone"
    lone.mkdir()
    overview = next(f for f in series.glob("*.dcm") if f.stat().st_size == 89294)
    shutil.copy(overview, lone / "overview.dcm")
    assert slides_in(lone) == [lone / "overview.dcm"]


def test_encode_a_mixed_folder_runs_every_slide(tmp_path):
    root = _mixed_folder(tmp_path / "in")
    r = cli("encode", root, root / "sub", "-o", tmp_path / "out")
    assert r.returncode == 2, r.stderr  # two bad files, reported and skipped
    rows = {row["slide"]: row for row in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert rows["a.svs"]["status"] == "done" and rows["b.svs"]["status"] == "done"
    assert "not a whole-slide image" in rows["ct.dcm"]["error"]
    assert rows["junk.svs"]["status"] == "failed"
    assert "internal error" not in r.stderr


def test_service_zip_without_a_wsi_series_is_refused(tmp_path):
    from slidepress.service.uploads import UploadRejected, extract_dicom_zip

    z = tmp_path / "u.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(_ct_dicom(), "folder/ct.dcm")
    with pytest.raises(UploadRejected, match="no whole-slide image") as e:
        extract_dicom_zip(z, tmp_path / "target", max_bytes=1 << 30)
    assert e.value.status == 415
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.zip"]


# -- 6. a container bigger than its source ---------------------------------------------------


@needs_pcam
def test_compress_says_when_the_container_grew(tmp_path):
    """A 96 px JPEG patch re-coded at jpegxl q90 takes more bytes than the JPEG; the sample
    slide at the same settings takes fewer."""
    out = tmp_path / "o"
    r = cli("compress", PCAM / NO_GLASS[0], SAMPLE, "--mpp-override", "0.5", "-o", out)
    assert r.returncode == 0, r.stderr
    rows = {row["slide"]: row for row in csv.DictReader(open(out / "report.csv"))}
    assert rows[Path(NO_GLASS[0]).name]["grew"] == "True"
    assert rows[SAMPLE.name]["grew"] == "False"
    warnings = [ln for ln in lines(r.stderr) if ln.startswith("warning:")]
    assert len(warnings) == 1 and "bigger" in warnings[0]
    assert Path(NO_GLASS[0]).name in warnings[0]
