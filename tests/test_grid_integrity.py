"""Damaged grids fail loudly (one line, exit 2, nothing written) instead of reading as zeros;
missing labels are not classes. Grids are real: the bundled sample slide encoded once."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress.errors import FormatError, UsageError
from slidepress.store import EmbeddingGrid, read_grid, write_grid
from slidepress.store.formats.integrity import DIGESTS_KEY

FORMATS = ["zarr", "npz", "mha", "h5"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> EmbeddingGrid:
    from slidepress.encoders import get_encoder
    from slidepress.pipeline import EncodeOptions, encode_slide
    from slidepress.slide import sample_slide_path

    out = tmp_path_factory.mktemp("enc")
    res = encode_slide(
        sample_slide_path(), out, get_encoder("mean-rgb"), EncodeOptions(previews=False)
    )
    g = read_grid(res.outputs[0])
    assert g.mask.any() and not g.mask.all()  # both kinds of cell: zeros must be meaningful
    return g


def _write(grid: EmbeddingGrid, tmp_path: Path, fmt: str) -> Path:
    return write_grid(grid, tmp_path / f"g.{fmt}")


def _convert(src: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out.npz"
    r = subprocess.run(
        [sys.executable, "-m", "slidepress", "convert", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},  # one line per message, not rich's wrapping
    )
    return r, out


def _assert_one_line_error(r: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    text = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, text
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    assert "Traceback" not in text
    for n in needles:
        assert n in text, text
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- clean round trips --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("float16", [False, True])
def test_clean_round_trip_is_exact_and_verified(grid, tmp_path, fmt, float16):
    path = write_grid(grid, tmp_path / f"g.{fmt}", float16=float16)
    back = read_grid(path)
    want = grid
    if float16:
        want = EmbeddingGrid(**{**grid.arrays(), "features": grid.features.astype(np.float16)},
                             metadata=grid.metadata)  # fmt: skip
    assert back.equals(want)
    assert DIGESTS_KEY not in back.metadata  # digests live beside the metadata, not in it


def test_convert_chain_through_all_formats_is_exact(grid, tmp_path):
    path = write_grid(grid, tmp_path / "a.zarr")
    for i, fmt in enumerate(["npz", "mha", "h5", "zarr", "h5", "npz"]):
        path = write_grid(read_grid(path), tmp_path / f"b{i}.{fmt}")
    assert read_grid(path).equals(grid)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [">f4", "<f8"])
def test_other_feature_dtypes_are_not_reported_as_damage(tmp_path, fmt, dtype):
    """Byte order may change on the way back (zarr gives native); float64 stays float64."""
    feats = np.random.default_rng(3).random((6, 7, 3)).astype(dtype)
    g = EmbeddingGrid.from_features(feats, metadata={"x": float("nan")})
    back = read_grid(write_grid(g, tmp_path / f"g.{fmt}"))
    assert back.features.dtype.newbyteorder("=") == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back.features, feats)


def test_grids_without_digests_still_read(grid, tmp_path):
    """Grids written before digests existed: accepted, checked only structurally."""
    z = _write(grid, tmp_path, "zarr")
    meta = json.loads((z / "zarr.json").read_text())
    del meta["attributes"][DIGESTS_KEY]
    (z / "zarr.json").write_text(json.dumps(meta))
    n = _write(grid, tmp_path, "npz")
    _rewrite_npz(n, drop=DIGESTS_KEY)
    h = _write(grid, tmp_path, "h5")
    with h5py.File(h, "r+") as f:
        del f.attrs[DIGESTS_KEY]
    for p in (z, n, h):
        assert read_grid(p).equals(grid), p


# -- zarr ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array,chunk",
    [("features", "c/0/0/0"), ("mask", "c/0/0"), ("tissue_mask", "c/1/1")],
)
def test_zarr_missing_chunk_is_damage(grid, tmp_path, array, chunk):
    path = _write(grid, tmp_path, "zarr")
    (path / array / chunk).unlink()
    with pytest.raises(FormatError, match=rf"g\.zarr: {array} damaged \(chunk {chunk} missing"):
        read_grid(path)


def test_zarr_missing_all_zero_chunk_is_damage_too(tmp_path):
    """An all-background chunk is written like any other, so its absence is noticed."""
    feats = np.zeros((300, 20, 2), np.float32)
    feats[:10] = 1.0  # the second row of chunks (rows 256-299) is all zero, mask all False
    g = EmbeddingGrid.from_features(feats)
    path = write_grid(g, tmp_path / "z.zarr")
    assert read_grid(path).equals(g)
    (path / "mask" / "c/1/0").unlink()
    with pytest.raises(FormatError, match=r"mask damaged \(chunk c/1/0 missing"):
        read_grid(path)


@pytest.mark.parametrize("array,chunk", [("features", "c/0/0/0"), ("mask", "c/0/0")])
def test_zarr_flipped_byte_in_chunk(grid, tmp_path, array, chunk):
    path = _write(grid, tmp_path, "zarr")
    target = path / array / chunk
    _flip(target, target.stat().st_size // 2)
    with pytest.raises(FormatError, match=rf"{array} damaged \(chunk checksum mismatch\)"):
        read_grid(path)


def test_zarr_missing_array_and_edited_metadata(grid, tmp_path):
    path = _write(grid, tmp_path, "zarr")
    shutil.rmtree(path / "coords")
    with pytest.raises(FormatError, match="array 'coords' missing"):
        read_grid(path)
    path = write_grid(grid, tmp_path / "m.zarr")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["slidepress"]["encoder"]["name"] = "another-encoder"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"metadata damaged \(checksum mismatch\)"):
        read_grid(path)


# -- npz ----------------------------------------------------------------------------------


def _rewrite_npz(path: Path, drop: str | None = None, edit: str | None = None) -> None:
    """Rewrite the zip (valid CRCs): without member `drop`, or with one value of `edit` changed."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if drop:
        del members[f"{drop}.npy"]
    if edit:
        arr = np.load(io.BytesIO(members[f"{edit}.npy"]))
        flat = arr.reshape(-1)
        flat[np.flatnonzero(flat)[0] if flat.any() else 0] = 0 if flat.any() else 1
        buf = io.BytesIO()
        np.save(buf, arr)
        members[f"{edit}.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)


@pytest.mark.parametrize("array", ["features", "mask"])
def test_npz_member_rewritten_with_other_values(grid, tmp_path, array):
    path = _write(grid, tmp_path, "npz")
    _rewrite_npz(path, edit=array)
    with pytest.raises(FormatError, match=rf"g\.npz: {array} damaged \(checksum mismatch\)"):
        read_grid(path)


def test_npz_missing_member(grid, tmp_path):
    path = _write(grid, tmp_path, "npz")
    _rewrite_npz(path, drop="mask")
    with pytest.raises(FormatError, match="member 'mask' missing"):
        read_grid(path)


def test_npz_flipped_byte_fails_the_zip_crc(grid, tmp_path):
    path = _write(grid, tmp_path, "npz")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("features.npy")
    _flip(path, info.header_offset + 30 + len(info.filename) + info.compress_size // 2)
    with pytest.raises(FormatError, match=r"g\.npz: features damaged"):
        read_grid(path)


# -- h5 -----------------------------------------------------------------------------------


def test_h5_dataset_rewritten_with_other_values(grid, tmp_path):
    path = _write(grid, tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        f["grid/mask"][0, 0] = not f["grid/mask"][0, 0]
    with pytest.raises(FormatError, match=r"g\.h5: mask damaged \(checksum mismatch\)"):
        read_grid(path)


def test_h5_flipped_byte_fails_fletcher32(grid, tmp_path):
    path = _write(grid, tmp_path, "h5")
    with h5py.File(path, "r") as f:
        assert f["features"].fletcher32
        chunk = f["features"].id.get_chunk_info(0)
    _flip(path, chunk.byte_offset + chunk.size // 2)
    with pytest.raises(FormatError, match=r"g\.h5: features damaged \(checksum"):
        read_grid(path)


def test_h5_missing_dataset(grid, tmp_path):
    path = _write(grid, tmp_path, "h5")
    with h5py.File(path, "r+") as f:
        del f["grid/tissue_fraction"]
    with pytest.raises(FormatError, match="dataset 'grid/tissue_fraction' missing"):
        read_grid(path)


# -- mha ----------------------------------------------------------------------------------


def _mha_data_offset(path: Path) -> int:
    data = path.read_bytes()
    return data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")


def test_mha_flipped_byte_in_pixels(grid, tmp_path):
    path = _write(grid, tmp_path, "mha")
    _flip(path, _mha_data_offset(path) + 40)
    with pytest.raises(FormatError, match=r"g\.mha: "):
        read_grid(path)


def test_mha_header_array_edited(grid, tmp_path):
    """A header value changed in place (same length): the digest notices."""
    path = _write(grid, tmp_path, "mha")
    data = path.read_bytes()
    start = data.index(b'"encoder": {"name": "mean-rgb"')
    edited = data[:start] + data[start:].replace(b"mean-rgb", b"mean-rgx", 1)
    path.write_bytes(edited)
    with pytest.raises(FormatError, match=r"metadata damaged \(checksum mismatch\)"):
        read_grid(path)


# -- the CLI: one line, exit 2, nothing written ---------------------------------------------


def _damage(kind: str, grid: EmbeddingGrid, tmp_path: Path) -> Path:
    if kind == "zarr-missing-features-chunk":
        p = _write(grid, tmp_path, "zarr")
        (p / "features" / "c/0/0/0").unlink()
    elif kind == "zarr-missing-mask-chunk":
        p = _write(grid, tmp_path, "zarr")
        (p / "mask" / "c/0/0").unlink()
    elif kind == "zarr-flipped-byte":
        p = _write(grid, tmp_path, "zarr")
        _flip(p / "features" / "c/0/0/0", 40)
    elif kind == "npz-edited-member":
        p = _write(grid, tmp_path, "npz")
        _rewrite_npz(p, edit="features")
    elif kind in ("npz-truncated", "h5-truncated", "mha-truncated"):
        p = _write(grid, tmp_path, kind.split("-")[0])
        p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("zarr-missing-features-chunk", "features damaged (chunk c/0/0/0 missing"),
        ("zarr-missing-mask-chunk", "mask damaged (chunk c/0/0 missing"),
        ("zarr-flipped-byte", "features damaged (chunk checksum mismatch)"),
        ("npz-edited-member", "features damaged (checksum mismatch)"),
        ("npz-truncated", "not a readable npz grid"),
        ("h5-truncated", "not a readable h5 grid"),
        ("mha-truncated", "truncated"),
    ],
)
def test_cli_convert_damaged_grid_one_line(grid, tmp_path, kind, needle):
    src = _damage(kind, grid, tmp_path)
    r, out = _convert(src, tmp_path)
    _assert_one_line_error(r, out, src.name, needle)


def test_cli_convert_clean_grid_still_works(grid, tmp_path):
    src = _write(grid, tmp_path, "mha")
    r, out = _convert(src, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MetaImage" not in r.stderr and read_grid(out).equals(grid)


# -- labels -------------------------------------------------------------------------------

MISSING = ["", "NaN", "nan", "NA", "None", "  ", "N/A", "null"]


@pytest.mark.parametrize("missing", MISSING)
def test_classify_missing_label_is_an_error_naming_the_line(tmp_path, missing):
    from slidepress.slidemodel.data import read_labels

    p = tmp_path / "l.csv"
    p.write_text(f"slide,label\na,x\nb,y\nc,{missing}\nd,x\n")
    with pytest.raises(UsageError, match=r"line 4 \(slide c\): label is missing"):
        read_labels(p, "classify")


def test_short_row_and_empty_slide_are_errors(tmp_path):
    from slidepress.slidemodel.data import read_labels

    p = tmp_path / "l.csv"
    p.write_text("slide,label\na,x\nb\nc,y\n")  # b has no label cell at all
    with pytest.raises(UsageError, match=r"line 3 \(slide b\): label is missing"):
        read_labels(p, "classify")
    p.write_text("slide,label\na,x\n,y\n")
    with pytest.raises(UsageError, match="line 3: empty slide name"):
        read_labels(p, "classify")


@pytest.mark.parametrize(
    "text,task,msg",
    [
        ("slide,value\na,1\nb,NaN\n", "regress", r"line 3 \(slide b\): value is missing"),
        ("slide,value\na,1\nb,inf\n", "regress", r"line 3 \(slide b\): value='inf' is not finite"),
        ("slide,value\na,1\nb,\n", "regress", "value is missing"),
        ("slide,time,event\na,1,1\nb,nan,1\n", "survival", r"line 3 .*time is missing"),
        ("slide,time,event\na,1,1\nb,-inf,1\n", "survival", "time='-inf' is not finite"),
        ("slide,time,event\na,1,1\nb,2,NA\n", "survival", "event is missing"),
    ],
)
def test_regress_and_survival_reject_missing_and_infinite(tmp_path, text, task, msg):
    from slidepress.slidemodel.data import read_labels

    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(UsageError, match=msg):
        read_labels(p, task)


def _toy_grids(tmp_path: Path, n: int = 4) -> Path:
    gdir = tmp_path / "grids"
    gdir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        f = rng.normal(0, 1, (8, 8, 2)).astype(np.float32)
        write_grid(EmbeddingGrid.from_features(f, np.ones((8, 8), bool)), gdir / f"s{i}.npz")
    return gdir


@pytest.mark.parametrize("missing", ["NaN", ""])
def test_cli_train_refuses_missing_labels(tmp_path, missing):
    pytest.importorskip("torch")
    from slidepress.cli.main import app

    gdir = _toy_grids(tmp_path)
    lab = tmp_path / "labels.csv"
    lab.write_text(f"slide,label\ns0,a\ns1,b\ns2,{missing}\ns3,a\n")
    r = CliRunner().invoke(app, ["train", "slide-model", str(gdir), str(lab),
                                 "--task", "classify", "-o", str(tmp_path / "run")])  # fmt: skip
    text = r.output.strip()
    assert r.exit_code == 2, text
    assert "line 4 (slide s2): label is missing" in text and "Traceback" not in text
    assert len([ln for ln in text.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_cli_train_refuses_a_damaged_grid(tmp_path):
    pytest.importorskip("torch")
    from slidepress.cli.main import app

    gdir = _toy_grids(tmp_path)
    _rewrite_npz(gdir / "s1.npz", edit="features")
    lab = tmp_path / "labels.csv"
    lab.write_text("slide,label\ns0,a\ns1,b\ns2,b\ns3,a\n")
    r = CliRunner().invoke(app, ["train", "slide-model", str(gdir), str(lab),
                                 "--task", "classify", "-o", str(tmp_path / "run")])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "s1.npz: features damaged (checksum mismatch)" in r.output
    assert not (tmp_path / "run" / "config.json").exists()
