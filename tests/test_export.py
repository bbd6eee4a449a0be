"""export: containers -> pyramidal TIFF and DICOM WSI, codestreams copied where carried."""

from __future__ import annotations

import zipfile
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import pytest
import tifffile
import tiffslide
from pydicom.encaps import generate_frames
from typer.testing import CliRunner
from wsidicom import WsiDicom

from slidepress.cli.main import app
from slidepress.errors import ContainerError, UsageError
from slidepress.pipeline import CompressOptions, compress_slide
from slidepress.pipeline.export import export_container, j2k_codestream
from slidepress.store.container import Container


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """One small container per codec family (the sample slide: edge tiles and glass)."""
    from slidepress.slide import sample_slide_path

    root = tmp_path_factory.mktemp("exp")
    out = {}
    for codec in ("jpeg", "jpeg2000", "jpegxl", "htj2k", "webp"):
        out[codec] = root / f"{codec}.spz"
        compress_slide(sample_slide_path(), out[codec], CompressOptions(codec=codec))
    return out


def _levels(spz: Path) -> list[np.ndarray]:
    with Container(spz) as c:
        return [c.read_region(0, 0, lv.width, lv.height, lv.index) for lv in c.levels]


def _dicom_frames(folder: Path) -> dict[int, tuple[pydicom.Dataset, list[bytes]]]:
    """Level width -> (dataset, frames as stored)."""
    out = {}
    for f in folder.iterdir():
        d = pydicom.dcmread(f)
        frames = generate_frames(d.PixelData, number_of_frames=d.NumberOfFrames)
        out[d.TotalPixelMatrixColumns] = (d, list(frames))
    return out


def _assert_frames_copied(spz: Path, folder: Path, transform=lambda b: b) -> int:
    frames = _dicom_frames(folder)
    n = 0
    with Container(spz) as c:
        for lv in c.levels:
            d, fr = frames[lv.width]
            assert len(fr) == lv.rows * lv.cols and d.DimensionOrganizationType == "TILED_FULL"
            for r, col in c.stored_tiles(lv.index):
                want = transform(c.tile_bytes(lv.index, r, col))
                got = fr[r * lv.cols + col]
                # DICOM fragments have even length: an odd codestream gets one 0x00 after EOI
                assert got == want or (len(want) % 2 and got == want + b"\0")
                n += 1
    return n


def test_jpeg_to_tiff_copies_tiles(containers, tmp_path):
    spz = containers["jpeg"]
    r = export_container(spz, tmp_path / "s.tiff", format="tiff")
    with Container(spz) as c:
        stored = sum(len(c.stored_tiles(lv.index)) for lv in c.levels)
        total = sum(lv.rows * lv.cols for lv in c.levels)
        levels, mpp = c.levels, c.levels[0].mpp
        # every stored tile is in the TIFF byte for byte (edge tiles included: padded, full)
        with tifffile.TiffFile(r.path) as tf:
            pages = [p for p in tf.pages]
            assert len(pages) == len(levels)
            fh = tf.filehandle
            for lv, page in zip(levels, pages, strict=True):
                assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
                for row, col in c.stored_tiles(lv.index):
                    i = row * lv.cols + col
                    fh.seek(page.dataoffsets[i])
                    assert fh.read(page.databytecounts[i]) == c.tile_bytes(lv.index, row, col)
    assert (r.tiles_copied, r.tiles_reencoded, r.tiles_filled) == (stored, 0, total - stored)
    assert r.reencode_psnr_db is None
    ref = _levels(spz)
    o = openslide.OpenSlide(r.path)
    assert o.level_count == len(levels)
    assert float(o.properties["openslide.mpp-x"]) == pytest.approx(mpp)
    t = tiffslide.TiffSlide(r.path)
    assert t.level_count == len(levels)
    assert float(t.properties["tiffslide.mpp-x"]) == pytest.approx(mpp)
    for lv, want in zip(levels, ref, strict=True):
        size = (lv.width, lv.height)
        assert o.level_dimensions[lv.index] == size == t.level_dimensions[lv.index]
        got = np.asarray(o.read_region((0, 0), lv.index, size))[..., :3]
        np.testing.assert_array_equal(got, want)  # glass fill decodes to exact white
        got = np.asarray(t.read_region((0, 0), lv.index, size))[..., :3]
        np.testing.assert_array_equal(got, want)


def test_jpeg_to_dicom_copies_tiles_and_opens_in_openslide(containers, tmp_path):
    spz = containers["jpeg"]
    r = export_container(spz, tmp_path / "dcm", format="dicom")
    assert r.tiles_reencoded == 0 and r.tiles_copied == _assert_frames_copied(spz, r.path)
    ref = _levels(spz)
    with Container(spz) as c:
        levels, name = c.levels, c.source_name
    with WsiDicom.open(r.path) as w:
        assert len(w.levels) == len(levels)
        assert w.mpp.width == pytest.approx(levels[0].mpp)
        for lv, want in zip(levels, ref, strict=True):
            got = np.asarray(w.read_region((0, 0), lv.index, (lv.width, lv.height)).convert("RGB"))
            np.testing.assert_array_equal(got, want)
    d = _dicom_frames(r.path)[levels[0].width][0]
    assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy
    assert list(d.ImageType)[2:] == ["VOLUME", "NONE"]
    assert d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert d.PhotometricInterpretation == "YBR_FULL_422"  # libjpeg-turbo's 4:2:0 tiles
    assert d.TotalPixelMatrixRows == levels[0].height and d.LabelText == name
    measures = d.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.PixelSpacing[0]) == pytest.approx(levels[0].mpp / 1000)
    # a fresh UID set per export
    again = export_container(spz, tmp_path / "dcm2", format="dicom")
    d2 = _dicom_frames(again.path)[levels[0].width][0]
    assert d2.StudyInstanceUID != d.StudyInstanceUID
    assert d2.SeriesInstanceUID != d.SeriesInstanceUID and d2.SOPInstanceUID != d.SOPInstanceUID
    # OpenSlide 4 reads the JPEG DICOM WSI: exact pixels at level 0
    o = openslide.OpenSlide(sorted(r.path.iterdir())[0])
    assert o.level_dimensions[0] == (levels[0].width, levels[0].height)
    got = np.asarray(o.read_region((0, 0), 0, o.level_dimensions[0]))[..., :3]
    np.testing.assert_array_equal(got, ref[0])


@pytest.mark.parametrize(
    "codec, syntax, transform",
    [
        ("jpeg2000", "1.2.840.10008.1.2.4.91", j2k_codestream),  # the JP2 box's codestream
        ("jpegxl", "1.2.840.10008.1.2.4.112", lambda b: b),
    ],
)
def test_jpeg2000_and_jpegxl_to_dicom_copy_codestreams(
    containers, tmp_path, codec, syntax, transform
):
    spz = containers[codec]
    r = export_container(spz, tmp_path / "dcm", format="dicom")
    assert r.tiles_reencoded == 0 and syntax in r.codestream
    assert r.tiles_copied == _assert_frames_copied(spz, r.path, transform)
    ref = _levels(spz)
    with WsiDicom.open(r.path) as w:
        assert len(w.levels) == len(ref)
        got = np.asarray(w.read_region((0, 0), 0, ref[0].shape[1::-1]).convert("RGB"))
    np.testing.assert_array_equal(got, ref[0])


def test_htj2k_to_dicom_is_reencoded_losslessly(containers, tmp_path):
    spz = containers["htj2k"]
    r = export_container(spz, tmp_path / "dcm", format="dicom")
    assert r.tiles_copied == 0 and r.tiles_reencoded > 0 and r.reencode_psnr_db == float("inf")
    ref = _levels(spz)
    with WsiDicom.open(r.path) as w:
        got = np.asarray(w.read_region((0, 0), 0, ref[0].shape[1::-1]).convert("RGB"))
    np.testing.assert_array_equal(got, ref[0])


@pytest.mark.parametrize("fmt", ["tiff", "dicom"])
def test_uncarried_codec_is_reencoded_with_loss_reported(containers, tmp_path, fmt):
    spz = containers["webp"]
    out = tmp_path / ("s.tiff" if fmt == "tiff" else "dcm")
    r = export_container(spz, out, format=fmt, quality=95)
    assert r.tiles_copied == 0 and r.tiles_reencoded > 0 and r.notes
    assert 38 < r.reencode_psnr_db < 60
    ref = _levels(spz)[0]
    if fmt == "tiff":
        got = np.asarray(openslide.OpenSlide(out).read_region((0, 0), 0, ref.shape[1::-1]))[..., :3]
    else:
        with WsiDicom.open(out) as w:
            got = np.asarray(w.read_region((0, 0), 0, ref.shape[1::-1]).convert("RGB"))
    mse = np.mean((got.astype(float) - ref) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38


def test_refusals_and_atomic_output(containers, tmp_path):
    spz = containers["jpeg"]
    out = tmp_path / "s.tiff"
    export_container(spz, out)
    with pytest.raises(UsageError, match="--overwrite"):
        export_container(spz, out)
    export_container(spz, out, overwrite=True)
    folder = tmp_path / "dcm"
    folder.mkdir()
    with pytest.raises(UsageError, match="--overwrite"):
        export_container(spz, folder, format="dicom")
    with pytest.raises(UsageError, match="tiff, dicom"):
        export_container(spz, tmp_path / "x.tiff", format="png")
    with pytest.raises(UsageError, match="name it .tiff"):
        export_container(spz, tmp_path / "x.png")
    # a tile that declares another size (CRC rewritten: a tampered, not a damaged, file)
    bad, victim = tmp_path / "bad.spz", "L0/00002_00003.jpg"
    assert Container(spz).has_tile(0, 2, 3)
    with zipfile.ZipFile(spz) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == victim:
                small = np.full((128, 128, 3), 200, np.uint8)
                data = imagecodecs.jpeg8_encode(small, level=90)
            dst.writestr(info, data)
    for fmt, target in (("tiff", tmp_path / "bad.tiff"), ("dicom", tmp_path / "bad_dcm")):
        with pytest.raises(ContainerError, match=victim):
            export_container(bad, target, format=fmt)
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_cli_export(containers, tmp_path):
    out = tmp_path / "c.tiff"
    r = CliRunner().invoke(app, ["export", str(containers["jpeg"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "copied" in r.output and out.exists()
    r = CliRunner().invoke(app, ["export", str(containers["jpeg"]), "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(
        app, ["export", str(containers["webp"]), "-o", str(tmp_path / "d"), "--format", "dicom"]
    )
    assert r.exit_code == 0, r.output
    assert "re-encoded" in r.output and "dB" in r.output


def test_cli_export_options_are_the_export_job_spec(containers, tmp_path):
    """`export`'s --format/--quality/--threads/--overwrite come from jobs/options.EXPORT (the
    service's export job's spec): the same defaults, ranges and choices, one line, exit 2."""
    from slidepress.jobs.options import EXPORT

    spz = str(containers["jpeg"])
    import typer

    command = typer.main.get_command(app).commands["export"]
    defaults = {p.name: p.default for p in command.params if not p.hidden}
    assert {o.name: o.default for o in EXPORT.options} == {
        k: v for k, v in defaults.items() if k not in ("container", "output", "help")
    }
    for args, words in ((["--format", "png"], "tiff, dicom"), (["--quality", "0"], "quality"),
                        (["--threads", "0"], "threads")):  # fmt: skip
        r = CliRunner().invoke(app, ["export", spz, "-o", str(tmp_path / "x.tiff"), *args])
        assert r.exit_code == 2 and words in r.output, r.output
        assert not (tmp_path / "x.tiff").exists()
    r = CliRunner().invoke(app, ["export", spz, "-o", str(tmp_path / "w.tiff"), "--workers", "1"])
    assert r.exit_code == 0, r.output  # the old spelling of --threads
    submit = typer.main.get_command(app).commands["remote"].commands["submit"]
    assert next(p for p in submit.params if p.name == "kind").help == (
        "encode, compress, compare or export."
    )
