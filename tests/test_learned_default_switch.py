"""The learned codec's default weights are codec-he-shallow-f32; containers coded with
codec-he-shallow (the default before, as an older slidepress wrote them: no `weights` param,
that folder's hash) still decode bit for bit, the manifest finding the folder by the hash it
records (zoo.by_sha256, store/manifest.py); so does a container whose recorded `weights` folder
is not on this machine. Unknown hashes are refused in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress import zoo
from slidepress.cli.main import app
from slidepress.codecs import get_codec
from slidepress.codecs.learned import codec as learned_codec
from slidepress.errors import ContainerError
from slidepress.pipeline.compress import CompressOptions, compress_slide
from slidepress.store.container import MANIFEST, Container

from .torch_blocker import PREAMBLE

OLD, NEW = (zoo.shipped_path(n) for n in ("codec-he-shallow", "codec-he-shallow-f32"))
OLD_SHA, NEW_SHA = (zoo.WEIGHTS.get(n).sha256 for n in ("codec-he-shallow", "codec-he-shallow-f32"))
OPTS = CompressOptions(codec="learned", quality=3, mpp=4.0)  # the sample slide: 2 x 2 tiles


def _levels(path: Path) -> list[np.ndarray]:
    with Container(path) as c:
        return [c.read_region(0, 0, lv.width, lv.height, level=lv.index) for lv in c.levels]


def _blobs(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as z:
        return [z.read(n) for n in sorted(z.namelist()) if n.endswith(".slc")]


@pytest.fixture(scope="module")
def old(tmp_path_factory, sample_svs_module) -> tuple[Path, list[np.ndarray]]:
    """A container as the slidepress whose default was codec-he-shallow wrote it, and the
    pixels that slidepress decoded it to."""
    path = tmp_path_factory.mktemp("old") / "old.spz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(learned_codec, "WEIGHTS", OLD)
        compress_slide(sample_svs_module, path, OPTS)
        pixels = _levels(path)
    return path, pixels


@pytest.fixture(scope="module")
def sample_svs_module() -> Path:
    from slidepress.slide import sample_slide_path

    return sample_slide_path()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """`src` with its manifest edited (entries as the writer stores them, manifest last)."""
    with zipfile.ZipFile(src) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist() if i.filename != MANIFEST]
        manifest = json.loads(z.read(MANIFEST))
    edit(manifest)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in [*entries, (MANIFEST, json.dumps(manifest, indent=1).encode())]:
            z.writestr(name, data)
    return dst


def _equal(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_the_default_is_f32_and_new_containers_record_its_hash(tmp_path, sample_svs_module):
    assert zoo.used_by("codec", "learned").name == "codec-he-shallow-f32"
    assert learned_codec.WEIGHTS == NEW == zoo.default_path("codec", "learned")
    out = tmp_path / "new.spz"
    compress_slide(sample_svs_module, out, OPTS)
    with Container(out) as c:
        recorded = c.manifest["codec"]
        assert recorded["model"]["weights_sha256"] == NEW_SHA
        assert "weights" not in recorded["params"]  # the default: no path recorded
        assert c.codec.model.folder == NEW


def test_old_container_decodes_bit_identically_with_the_new_default(old):
    path, want = old
    with Container(path) as c:
        recorded = c.manifest["codec"]
        assert recorded["model"]["weights_sha256"] == OLD_SHA
        assert "weights" not in recorded["params"]  # as an older slidepress wrote it
        assert c.codec.model.folder == OLD and c.codec.model.weights_sha256 == OLD_SHA
    _equal(_levels(path), want)
    # the old folder decodes these tiles to other pixels than the default would: the lookup
    # is what keeps them (the guard's JPEG-XL tiles decode the same either way)
    blobs = [b for b in _blobs(path) if not learned_codec.is_guard_tile(b)]
    assert blobs
    by_old = get_codec("learned", 3, weights=str(OLD)).decode_batch(blobs)
    by_new = get_codec("learned", 3).decode_batch(blobs)
    assert any(not np.array_equal(a, b) for a, b in zip(by_old, by_new, strict=True))


_CHILD = (
    PREAMBLE
    + """
import hashlib
from slidepress.store.container import Container

h = hashlib.sha256()
with Container(sys.argv[1]) as c:
    for lv in c.levels:
        h.update(c.read_region(0, 0, lv.width, lv.height, level=lv.index).tobytes())
    print(c.codec.model.folder.name, h.hexdigest())
"""
)


def test_old_container_decodes_without_torch(old):
    """The lookup is the zoo's hash (numpy, hashlib): a base install finds the old folder."""
    path, want = old
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    h = hashlib.sha256()
    for a in want:
        h.update(a.tobytes())
    assert r.stdout.split() == ["codec-he-shallow", h.hexdigest()]


@pytest.mark.parametrize("recorded", ["missing", "other-shipped"])
def test_recorded_weights_folder_is_found_by_its_hash(old, tmp_path, recorded):
    """A `weights` path that is not on this machine (or holds other weights): the folder
    whose hash the manifest records decodes."""
    path, want = old
    folder = str(tmp_path / "gone" / "codec-he-shallow") if recorded == "missing" else str(NEW)

    def edit(m: dict) -> None:
        m["codec"]["params"]["weights"] = folder

    moved = _rewrite(path, tmp_path / "moved.spz", edit)
    with Container(moved) as c:
        assert c.codec.model.folder == OLD
    _equal(_levels(moved), want)


@pytest.mark.parametrize("case", ["unknown-hash", "unknown-hash-missing-folder"])
def test_unknown_weights_are_refused_in_one_line(old, tmp_path, case):
    path, _ = old

    def edit(m: dict) -> None:
        m["codec"]["model"]["weights_sha256"] = "0" * 64
        if case.endswith("missing-folder"):
            m["codec"]["params"]["weights"] = str(tmp_path / "gone")

    bad = _rewrite(path, tmp_path / "bad.spz", edit)
    with pytest.raises(ContainerError) as e:
        Container(bad)
    message = str(e.value)
    assert "\n" not in message and message.startswith("bad.spz: manifest:")
    if case == "unknown-hash":
        assert "other weights" in message and "000000000000" in message
    else:
        assert "not a learned-codec weights folder" in message
    r = CliRunner().invoke(app, ["decompress", str(bad), "-o", str(tmp_path / "out.tiff")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.spz" in lines[0]
    assert not (tmp_path / "out.tiff").exists()


def test_by_sha256_finds_shipped_and_registered_weights(tmp_path):
    assert zoo.by_sha256(OLD_SHA).name == "codec-he-shallow"
    assert zoo.by_sha256(NEW_SHA, "codec", "learned").name == "codec-he-shallow-f32"
    assert zoo.by_sha256(NEW_SHA, "encoder") is None
    assert zoo.by_sha256(NEW_SHA, "codec", "pathae") is None  # not weights pathae loads
    assert zoo.by_sha256("0" * 64) is None
    mine = tmp_path / "mine"
    shutil.copytree(NEW, mine)
    mine.joinpath("encoder.safetensors").chmod(0o644)
    with open(mine / "encoder.safetensors", "ab") as f:
        f.write(b"\0")  # other weights, unknown to the zoo until registered
    sha = zoo.weights_sha256(mine)
    assert zoo.by_sha256(sha, "codec", "learned") is None
    w = zoo.register(mine, "mine-codec")
    try:
        assert zoo.by_sha256(sha, "codec", "learned") is w  # a folder of the format learned loads
        assert zoo.by_sha256(sha, "codec", "pathae") is None
    finally:
        zoo.WEIGHTS.remove("mine-codec")


def test_any_codec_with_a_model_hash_finds_its_weights(tmp_path, sample_svs_module):
    """Not the learned codec's alone: a pathae container whose recorded `weights` folder is
    not on this machine decodes with the shipped folder of the recorded hash."""
    pytest.importorskip("torch")
    out = tmp_path / "ae.spz"
    compress_slide(sample_svs_module, out, CompressOptions(codec="pathae", quality=2, mpp=4.0))
    want = _levels(out)

    def edit(m: dict) -> None:
        m["codec"]["params"]["weights"] = str(tmp_path / "gone" / "pathae-he-f8c8")

    moved = _rewrite(out, tmp_path / "moved.spz", edit)
    with Container(moved) as c:
        assert Path(c.codec.params["weights"]) == zoo.shipped_path("pathae-he-f8c8")
    _equal(_levels(moved), want)
