"""Slides and outputs in object storage (issue 25, part 1), against a real S3-compatible server
on loopback: moto's `moto_server` (tests/s3_server.py), started with IAM checks on (an admin
key that may do anything, a reader key that may only read), so wrong credentials and denied
writes are the server's own answers. Every command runs as a user runs it (a subprocess,
credentials from the environment only) and its outputs are compared with a local run of the
same command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import SLIDES
from .s3_server import ADMIN, READ_ONLY, S3Server, available

SLIDE = SLIDES / "CMU-1-Small-Region.svs"
DICOM = SLIDES / "CMU-1-Small-Region-dicom"
BUCKET = "slides"
OUT = "results"
EXE = [sys.executable, "-m", "slidepress"]
# compress options small enough for seconds on 2 cores; the same for every run compared
COMPRESS = ["--codec", "jpeg", "--quality", "80", "--threads", "1"]
ENCODE = ["--encoder", "mean-rgb", "--threads", "1"]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with IAM on (tests/s3_server.py); yields the environment
    a user would set (admin credentials, endpoint, a private staging cache), plus the
    reader's keys."""
    why = available()
    if why:
        pytest.skip(why)
    if not SLIDE.is_file():
        pytest.skip(f"shared data absent: {SLIDE} (see ../shared/data/README.md)")
    with S3Server(users={"admin": ADMIN, "reader": READ_ONLY}) as server:
        client = server.client()
        for bucket in (BUCKET, OUT):
            server.make_bucket(bucket)
        client.upload_file(str(SLIDE), BUCKET, f"in/{SLIDE.name}")
        cache = tmp_path_factory.mktemp("cache")
        user_env = {**server.env, "SLIDEPRESS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        yield {"env": user_env, "client": client, "keys": server.access_keys,
               "endpoint": server.endpoint}  # fmt: skip


def run(s3, *args, env=None, cwd=None):
    full = {**os.environ, **s3["env"], **(env or {})}
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, env=full, timeout=300, cwd=cwd
    )


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def run_local(*args):
    """The same command on local files, in this process (the reference a store's run must
    equal; no interpreter start-up, which costs seconds on a busy 2-core machine)."""
    from typer.testing import CliRunner

    from slidepress.cli.main import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def get(s3, bucket, key) -> bytes:
    return s3["client"].get_object(Bucket=bucket, Key=key)["Body"].read()


def keys_under(s3, bucket, prefix) -> list[str]:
    res = s3["client"].list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in res.get("Contents", []))


def container_parts(data: bytes) -> tuple[dict, dict]:
    """(manifest without the run's own facts: when, and where the slide was; every other
    entry's bytes). The slide record names its location: the URL, or the local path."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(entries.pop("manifest.json"))
    manifest.pop("created", None)
    manifest.get("source", {}).pop("path", None)
    return manifest, entries


@pytest.fixture(scope="session")
def local_container(s3, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "slide.spz"
    run_local("compress", SLIDE, "-o", out, *COMPRESS)
    return out


def test_compress_s3_to_s3_equals_local_and_reruns_skip(s3, local_container):
    url = f"s3://{OUT}/c/slide.spz"
    r = ok(run(s3, "compress", f"s3://{BUCKET}/in/{SLIDE.name}", "-o", url, *COMPRESS))
    assert "reading s3://slides/in/CMU-1-Small-Region.svs by ranges" in r.stderr
    remote_bytes = get(s3, OUT, "c/slide.spz")
    m_remote, e_remote = container_parts(remote_bytes)
    m_local, e_local = container_parts(local_container.read_bytes())
    assert e_remote == e_local  # every coded tile, byte for byte
    assert m_remote == m_local
    manifest = json.loads(zipfile.ZipFile(__import__("io").BytesIO(remote_bytes)).read(
        "manifest.json"))  # fmt: skip
    assert manifest["source"]["path"] == f"s3://{BUCKET}/in/{SLIDE.name}"
    # a re-run finds the container up to date by its content key, as on disk
    etag = s3["client"].head_object(Bucket=OUT, Key="c/slide.spz")["ETag"]
    r = ok(run(s3, "compress", f"s3://{BUCKET}/in/{SLIDE.name}", "-o", url, *COMPRESS))
    assert "up to date, skipped" in r.stderr
    assert s3["client"].head_object(Bucket=OUT, Key="c/slide.spz")["ETag"] == etag


def _strip_run_facts(meta):
    """A grid's metadata without what differs between any two runs (creation time) and the
    slide's location (its URL, or a local path)."""
    if isinstance(meta, dict):
        return {
            k: _strip_run_facts(v) for k, v in meta.items()
            if k != "created" and not (k == "path" and isinstance(v, str))
        }  # fmt: skip
    if isinstance(meta, list):
        return [_strip_run_facts(v) for v in meta]
    return meta


def download_prefix(s3, bucket, prefix, target: Path) -> Path:
    for key in keys_under(s3, bucket, prefix):
        dest = target / key[len(prefix) :].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(get(s3, bucket, key))
    return target


def test_encode_s3_to_s3_equals_local_and_reruns_skip(s3, tmp_path):
    from slidepress.store import read_grid

    run_local("encode", SLIDE, "-o", tmp_path / "local", *ENCODE)
    url = f"s3://{BUCKET}/in/{SLIDE.name}"
    ok(run(s3, "encode", url, "-o", f"s3://{OUT}/e/", *ENCODE))
    stem = SLIDE.stem
    keys = keys_under(s3, OUT, "e/")
    assert f"e/{stem}.tissue.png" in keys and f"e/{stem}.pca.png" in keys
    assert "e/report.csv" in keys and f"e/{stem}.zarr/zarr.json" in keys
    for preview in ("tissue", "pca"):
        assert (
            get(s3, OUT, f"e/{stem}.{preview}.png")
            == (tmp_path / "local" / f"{stem}.{preview}.png").read_bytes()
        )
    grid_dir = download_prefix(s3, OUT, f"e/{stem}.zarr", tmp_path / "remote" / f"{stem}.zarr")
    remote_grid, local_grid = read_grid(grid_dir), read_grid(tmp_path / "local" / f"{stem}.zarr")
    for name, arr in local_grid.arrays().items():
        np.testing.assert_array_equal(remote_grid.arrays()[name], arr)
    assert _strip_run_facts(remote_grid.metadata) == _strip_run_facts(local_grid.metadata)
    assert url in json.dumps(remote_grid.metadata)
    # the zarr chunks themselves are byte-identical too (same writer, same arrays)
    local_files = {
        p.relative_to(tmp_path / "local" / f"{stem}.zarr").as_posix(): p.read_bytes()
        for p in (tmp_path / "local" / f"{stem}.zarr").rglob("*") if p.is_file()
    }  # fmt: skip
    remote_files = {
        p.relative_to(grid_dir).as_posix(): p.read_bytes() for p in grid_dir.rglob("*")
        if p.is_file()
    }  # fmt: skip
    assert local_files.keys() == remote_files.keys()
    chunks = [k for k in local_files if not k.endswith("zarr.json")]
    assert chunks and all(local_files[k] == remote_files[k] for k in chunks)
    # a grid at a URL converts to another at a URL (the zarr prefix staged with its chunks)
    ok(run(s3, "convert", f"s3://{OUT}/e/{stem}.zarr", "-o", f"s3://{OUT}/e/{stem}.npz"))
    (tmp_path / "g.npz").write_bytes(get(s3, OUT, f"e/{stem}.npz"))
    converted = read_grid(tmp_path / "g.npz")
    np.testing.assert_array_equal(converted.features, local_grid.features)
    assert converted.metadata == remote_grid.metadata
    # re-run: skipped by content key, nothing re-uploaded
    before = s3["client"].head_object(Bucket=OUT, Key=f"e/{stem}.zarr/zarr.json")["ETag"]
    r = ok(run(s3, "encode", url, "-o", f"s3://{OUT}/e/", *ENCODE))
    assert "up to date, skipped" in r.stderr
    assert s3["client"].head_object(Bucket=OUT, Key=f"e/{stem}.zarr/zarr.json")["ETag"] == before


def test_info_read_decompress_export_from_and_to_s3(s3, local_container, tmp_path):
    url = f"s3://{BUCKET}/in/{SLIDE.name}"
    r = ok(run(s3, "info", url, "--json"))
    d = json.loads(r.stdout)
    local = json.loads(run_local("info", SLIDE, "--json").stdout)
    assert d["path"] == url
    assert {**d, "path": None} == {**local, "path": None}
    ok(run(s3, "info", url, "--thumbnail", f"s3://{OUT}/i/thumb.png"))
    run_local("info", SLIDE, "--thumbnail", tmp_path / "thumb.png")
    assert get(s3, OUT, "i/thumb.png") == (tmp_path / "thumb.png").read_bytes()

    spz = f"s3://{OUT}/i/slide.spz"
    s3["client"].upload_file(str(local_container), OUT, "i/slide.spz")
    region = ["--x", 256, "--y", 512, "--w", 300, "--h", 200]
    ok(run(s3, "read", spz, *region, "-o", f"s3://{OUT}/i/region.png"))
    run_local("read", local_container, *region, "-o", tmp_path / "region.png")
    assert get(s3, OUT, "i/region.png") == (tmp_path / "region.png").read_bytes()

    ok(run(s3, "decompress", spz, "-o", f"s3://{OUT}/i/slide.tiff", "--threads", 1))
    run_local("decompress", local_container, "-o", tmp_path / "slide.tiff", "--threads", 1)
    assert get(s3, OUT, "i/slide.tiff") == (tmp_path / "slide.tiff").read_bytes()

    ok(run(s3, "export", spz, "-o", f"s3://{OUT}/i/export.tiff", "--threads", 1))
    run_local("export", local_container, "-o", tmp_path / "export.tiff", "--threads", 1)
    assert get(s3, OUT, "i/export.tiff") == (tmp_path / "export.tiff").read_bytes()
    # an existing output is replaced only on request, as on disk
    r = run(s3, "decompress", spz, "-o", f"s3://{OUT}/i/slide.tiff")
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_batch_on_dask_from_s3_prefix_to_s3(s3, local_container):
    s3["client"].upload_file(str(SLIDE), BUCKET, f"batch/a/{SLIDE.name}")
    s3["client"].upload_file(str(SLIDE), BUCKET, "batch/b/second.svs")
    args = ["batch", f"s3://{BUCKET}/batch/", "-o", f"s3://{OUT}/b/", "--workers", 2]
    ok(run(s3, *args, "compress", *COMPRESS))
    keys = keys_under(s3, OUT, "b/")
    assert {"b/a/CMU-1-Small-Region.spz", "b/b/second.spz", "b/report.csv", "b/report.md"} <= set(
        keys
    ), keys
    _, e_local = container_parts(local_container.read_bytes())
    for key in ("b/a/CMU-1-Small-Region.spz", "b/b/second.spz"):
        assert container_parts(get(s3, OUT, key))[1] == e_local
    report = get(s3, OUT, "b/report.csv").decode()
    assert "s3://results/b/a/CMU-1-Small-Region.spz" in report
    assert "s3://slides/batch/b/second.svs" in report


def test_a_killed_upload_leaves_no_object(s3, tmp_path):
    """A run killed mid-upload (SIGKILL, no cleanup) between the parts of a multipart upload:
    the object never appears under its key; a whole upload then publishes it."""
    big = tmp_path / "big.spz"
    big.write_bytes(np.random.default_rng(0).bytes(11 << 20))  # three 5 MiB parts
    script = tmp_path / "kill.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "import s3fs\n"
        "from slidepress import remote\n"
        "remote.UPLOAD_PART_BYTES = 5 << 20\n"
        "real = s3fs.S3FileSystem._call_s3\n"
        "parts = []\n"
        "async def call(self, method, *a, **k):\n"
        "    if method == 'upload_part':\n"
        "        parts.append(1)\n"
        "        if len(parts) == 2:\n"
        "            os._exit(9)  # killed: no abort, no cleanup\n"
        "    return await real(self, method, *a, **k)\n"
        "s3fs.S3FileSystem._call_s3 = call\n"
        "remote.upload(Path(sys.argv[1]), sys.argv[2])\n"
    )  # fmt: skip
    url = f"s3://{OUT}/k/big.spz"
    env = {**os.environ, **s3["env"]}
    r = subprocess.run([sys.executable, script, big, url], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 9, r.stderr
    assert keys_under(s3, OUT, "k/") == []
    # an upload that fails with an error (not a kill) leaves nothing either
    r = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from slidepress import remote\n"
        "remote.UPLOAD_PART_BYTES = 5 << 20\n"
        "remote.upload(Path(sys.argv[1]), sys.argv[2])\n")
        , big, url], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert get(s3, OUT, "k/big.spz") == big.read_bytes()


@pytest.mark.parametrize(
    "case",
    ["wrong credentials", "missing bucket", "missing key", "denied write", "read-only https"],
)
def test_store_errors_are_one_line_naming_the_url(s3, case, tmp_path):
    slide = f"s3://{BUCKET}/in/{SLIDE.name}"
    out = f"s3://{OUT}/err/x.spz"
    env = {}
    if case == "wrong credentials":
        env = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "s3cr3t-wrong"}
        url = slide
    elif case == "missing bucket":
        url = slide = f"s3://no-such-bucket/in/{SLIDE.name}"
    elif case == "missing key":
        url = slide = f"s3://{BUCKET}/in/missing.svs"
    elif case == "denied write":
        reader = s3["keys"]["reader"]
        env = {"AWS_ACCESS_KEY_ID": reader[0], "AWS_SECRET_ACCESS_KEY": reader[1]}
        url = out
    else:
        url = out = "https://127.0.0.1:9/x.spz"
    r = run(s3, "compress", slide, "-o", out, *COMPRESS, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert url in lines[0]
    for secret in (s3["env"]["AWS_SECRET_ACCESS_KEY"], *s3["keys"]["reader"], "s3cr3t-wrong",
                   "AKIAWRONG"):  # fmt: skip
        assert secret not in r.stderr
    assert keys_under(s3, OUT, "err/") == []


@pytest.fixture
def store_env(s3, monkeypatch, tmp_path):
    """This process as a user's: the store's credentials and endpoint in the environment."""
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLIDEPRESS_CACHE", str(tmp_path / "cache"))
    return s3


def test_tiff_read_by_ranges_equals_local_pixels_and_fetches_little(store_env):
    """A pyramidal TIFF is read by ranges: its structure is staged sparse, the tiles a read
    touches are fetched, and the pixels are the local file's."""
    from slidepress import remote
    from slidepress.pipeline.items import SlideItem
    from slidepress.slide import open_slide

    local = SLIDES / "CMU-1-Small-Region_pyramid_jpeg90.tiff"
    if not local.is_file():
        pytest.skip(f"shared data absent: {local}")
    store_env["client"].upload_file(str(local), BUCKET, f"ranged/{local.name}")
    before = remote.fetched_bytes()
    item = SlideItem.of(f"s3://{BUCKET}/ranged/{local.name}")
    assert remote.is_sparse(item.path)
    with open_slide(item.path) as r, open_slide(local) as ref:
        assert r.info.reader == ref.info.reader == "tifffile"
        assert r.info.level_dimensions == ref.info.level_dimensions
        thumb, _ = r.thumbnail(512)
        np.testing.assert_array_equal(thumb, ref.thumbnail(512)[0])
        np.testing.assert_array_equal(
            r.read_region((1000, 1200), 0, (256, 256)), ref.read_region((1000, 1200), 0, (256, 256))
        )
    fetched = remote.fetched_bytes() - before
    assert 0 < fetched < 0.4 * local.stat().st_size, fetched
    # another reader by name needs the whole file: staged whole, same pixels
    with open_slide(item.path, reader="openslide") as r, open_slide(local, "openslide") as ref:
        np.testing.assert_array_equal(
            r.read_region((0, 0), 1, (300, 300)), ref.read_region((0, 0), 1, (300, 300))
        )


def test_dicom_prefix_is_staged_whole_and_said_so(s3):
    if not DICOM.is_dir():
        pytest.skip(f"shared data absent: {DICOM}")
    for f in sorted(DICOM.iterdir()):
        s3["client"].upload_file(str(f), BUCKET, f"dicom/{DICOM.name}/{f.name}")
    url = f"s3://{BUCKET}/dicom/{DICOM.name}"
    r = ok(run(s3, "info", url + "/", "--json"))
    assert f"staging {url}" in r.stderr
    d, local = json.loads(r.stdout), json.loads(run_local("info", DICOM, "--json").stdout)
    assert d["reader"] == local["reader"] == "wsidicom"
    assert {**d, "path": None} == {**local, "path": None}


def test_mpp_csv_and_batch_manifest_as_urls(store_env):
    from slidepress.cli.common import slide_items
    from slidepress.distributed.manifest import discover

    c = store_env["client"]
    c.put_object(Bucket=BUCKET, Key="tables/mpp.csv", Body=b"slide,mpp\nCMU-1-Small-Region,0.5\n")
    c.put_object(Bucket=BUCKET, Key="in/manifest.csv",
                 Body=f"path,mpp,case\n{SLIDE.name},0.25,A1\n".encode())  # fmt: skip
    url = f"s3://{BUCKET}/in/{SLIDE.name}"
    (item,) = slide_items([url], mpp_csv=f"s3://{BUCKET}/tables/mpp.csv")
    assert (item.url, item.mpp_override, item.mpp_source) == (url, 0.5, "table")
    (task,) = discover(f"s3://{BUCKET}/in/manifest.csv", f"s3://{OUT}/m")
    assert task.item["path"] == url and task.item["mpp_override"] == 0.25
    assert task.item["fields"] == {"case": "A1"} and task.out_dir == f"s3://{OUT}/m"


@pytest.mark.parametrize("kind", ["compare", "export"])
def test_compare_and_export_to_s3_refuse_an_existing_output_unless_overwrite(
    store_env, local_container, kind
):
    """compare and export have no content key: a re-run into the same `s3://` folder is
    refused (naming the URL, nothing fetched or replaced) unless `overwrite`, as on disk."""
    from slidepress.pipeline.batch import run_slide
    from slidepress.pipeline.compare import CompareJob
    from slidepress.pipeline.export import ExportJob

    def job(overwrite: bool = False):
        if kind == "compare":
            opts = {"encoder": "mean-rgb", "overwrite": overwrite}
            return CompareJob(options=opts, original=str(SLIDE))
        return ExportJob(options={"format": "tiff", "workers": 1, "overwrite": overwrite})

    out = f"s3://{OUT}/rerun-{kind}/"
    first = run_slide(str(local_container), job(), out)
    assert first.status == "done", first.error
    assert all(o.startswith(out) for o in first.outputs) and first.outputs
    keys = keys_under(store_env, OUT, f"rerun-{kind}/")
    assert len(keys) == {"compare": 3, "export": 1}[kind], keys  # compare: OUTPUTS
    etags = {k: store_env["client"].head_object(Bucket=OUT, Key=k)["ETag"] for k in keys}
    again = run_slide(str(local_container), job(), out)
    assert again.status == "failed" and again.output_exists, again.error
    assert "--overwrite" in again.error and out in again.error, again.error
    assert {k: store_env["client"].head_object(Bucket=OUT, Key=k)["ETag"] for k in keys} == etags
    replaced = run_slide(str(local_container), job(overwrite=True), out)
    assert replaced.status == "done", replaced.error
    assert keys_under(store_env, OUT, f"rerun-{kind}/") == keys


def test_neighbouring_ranges_share_one_request(store_env, monkeypatch):
    """Tile ranges a few KB apart are fetched as one request (a GET costs as much as ~4 KB of
    egress); each range's bytes are still exactly its own; far ranges get their own request."""
    from slidepress import remote

    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    store_env["client"].put_object(Bucket=BUCKET, Key="ranges/blob", Body=data)
    url = f"s3://{BUCKET}/ranges/blob"
    near = [(1000 + 5000 * i, 4000) for i in range(20)]  # 1 KB gaps
    far = [(2_900_000, 100), (100, 50)]  # out of order on purpose
    fs, _ = remote.filesystem(url)  # fsspec caches instances: the one read_ranges uses
    calls = []
    real = fs.cat_ranges  # async stores mirror their sync methods onto the instance

    def spy(paths, starts, ends, **kw):
        calls.append(len(starts))
        return real(paths, starts, ends, **kw)

    monkeypatch.setattr(fs, "cat_ranges", spy)
    got = remote.read_ranges(url, near + far)
    assert got == [data[o : o + n] for o, n in near + far]
    assert calls == [2]  # [100, 101000) merged with the near run; the far one alone


def test_compress_rerun_to_s3_reads_only_the_container_index(store_env, monkeypatch, tmp_path):
    """A re-run of compress to `s3://` fetches only what its skip check reads of the existing
    container (the zip's end records, central directory and manifest, by ranges), not the
    container; it still skips, refuses other parameters without overwrite (nothing
    replaced), replaces them with it, and refuses an object that is no container."""
    from slidepress import remote
    from slidepress.pipeline.batch import CompressJob, run_slide

    c = store_env["client"]
    slide = {"path": f"s3://{BUCKET}/in/{SLIDE.name}"}
    out, key = f"s3://{OUT}/index/", f"index/{SLIDE.stem}.spz"
    opts = {"codec": "jpeg", "quality": 80, "workers": 1}
    first = run_slide(slide, CompressJob(options=opts), out)
    assert first.status == "done", first.error
    head = c.head_object(Bucket=OUT, Key=key)
    size = head["ContentLength"]

    before = remote.fetched_bytes()
    again = run_slide(slide, CompressJob(options=opts), out)
    fetched = remote.fetched_bytes() - before
    assert again.status == "skipped", again.error
    assert again.bytes_out == size and again.count == first.count
    assert fetched < 0.1 * size, (fetched, size)  # the index: one 64 KiB tail read or less
    assert c.head_object(Bucket=OUT, Key=key)["ETag"] == head["ETag"]

    # an index beyond the first read (a large container's): fetched in further reads, and
    # the sparse copy opens exactly as the whole object does
    from slidepress.store import container as spz

    whole = tmp_path / "whole.spz"
    whole.write_bytes(get(store_env, OUT, key))
    with monkeypatch.context() as m:
        m.setattr(spz, "INDEX_TAIL_BYTES", 700)
        m.setattr(spz, "INDEX_READ_BYTES", 100)
        before = remote.fetched_bytes()
        assert spz.fetch_index(f"s3://{OUT}/{key}", tmp_path / "sparse.spz")
        assert remote.fetched_bytes() - before < 0.1 * size
    with spz.Container(tmp_path / "sparse.spz") as a, spz.Container(whole) as b:
        assert a.manifest == b.manifest and a.levels == b.levels
        assert a._names == b._names and (tmp_path / "sparse.spz").stat().st_size == size
    assert not spz.fetch_index(f"s3://{OUT}/index/missing.spz", tmp_path / "none.spz")

    other = {**opts, "quality": 60}
    refused = run_slide(slide, CompressJob(options=other), out)
    assert refused.status == "failed" and refused.output_exists, refused.error
    assert "--overwrite" in refused.error and f"s3://{OUT}/{key}" in refused.error
    assert c.head_object(Bucket=OUT, Key=key)["ETag"] == head["ETag"]
    replaced = run_slide(slide, CompressJob(options={**other, "overwrite": True}), out)
    assert replaced.status == "done", replaced.error
    assert c.head_object(Bucket=OUT, Key=key)["ETag"] != head["ETag"]
    assert run_slide(slide, CompressJob(options=other), out).status == "skipped"

    c.put_object(Bucket=OUT, Key="index/junk.spz", Body=b"PK\x05\x06 not a container")
    junk = run_slide(slide, CompressJob(options=opts, output=f"s3://{OUT}/index/junk.spz"), out)
    assert junk.status == "failed" and junk.output_exists, junk.error
    assert get(store_env, OUT, "index/junk.spz") == b"PK\x05\x06 not a container"


# Loaded by every Python process of the run below (PYTHONPATH): the first process to upload a
# container is a Dask worker, which dies (SIGKILL, no clean-up) right after the first part of
# a multipart upload of it has reached the store (parts made small so a small container goes
# in parts). It writes its pid and the URL first, so the test knows whom it killed.
KILL_HOOK = """
import os
_mark = os.environ.get("SLIDEPRESS_TEST_KILL_MARK")
if _mark:
    import signal
    from slidepress import remote

    _put = remote._put

    def _dying_put(source, url):
        if not url.endswith(".spz"):
            return _put(source, url)
        try:
            fd = os.open(_mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # killed once already: the retry uploads normally
            return _put(source, url)
        os.write(fd, f"{os.getpid()} {url}".encode())
        os.close(fd)
        import s3fs

        call = s3fs.S3FileSystem._call_s3

        async def dying_call(self, method, *a, **k):
            out = await call(self, method, *a, **k)
            if method == "upload_part":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        s3fs.S3FileSystem._call_s3 = dying_call
        remote.UPLOAD_PART_BYTES = 64 << 10
        return _put(source, url)

    remote._put = _dying_put
"""


def test_a_dask_worker_killed_mid_upload_is_retried_with_nothing_half_written(
    s3, local_container, tmp_path
):
    """`batch s3:// -o s3:// --workers 2 compress`, one worker SIGKILLed mid multipart upload
    of a container: the scheduler reruns its task on a (restarted) worker, the run succeeds,
    every container equals a local run's, and the store holds only whole objects under
    final keys (no temporary or probe keys). The killed upload stays open, invisible, in the
    store (S3 keeps the parts of an upload nobody completed or aborted until a lifecycle
    rule `AbortIncompleteMultipartUpload` removes them); its key holds the retry's object."""
    for i in range(3):
        s3["client"].upload_file(str(SLIDE), BUCKET, f"killed/s{i}.svs")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    mark = tmp_path / "killed"
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "SLIDEPRESS_TEST_KILL_MARK": str(mark), "SLIDEPRESS_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    args = ["batch", f"s3://{BUCKET}/killed/", "-o", f"s3://{OUT}/killed/", "--workers", 2]
    r = ok(run(s3, *args, "compress", *COMPRESS, env=env))
    _, url = mark.read_text().split(" ", 1)  # a worker died mid-upload of this container
    killed_key = url.removeprefix(f"s3://{OUT}/")
    keys = keys_under(s3, OUT, "killed/")
    containers = [f"killed/s{i}.spz" for i in range(3)]
    assert set(keys) - {"killed/throughput.png"} == {*containers, "killed/report.csv",
                                                     "killed/report.md"}, keys  # fmt: skip
    assert killed_key in containers
    _, e_local = container_parts(local_container.read_bytes())
    for key in containers:
        assert container_parts(get(s3, OUT, key))[1] == e_local, key
    with open(tmp_path / "report.csv", "wb") as f:
        f.write(get(s3, OUT, "killed/report.csv"))
    import csv

    with open(tmp_path / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["status"] for row in rows) == ["done"] * 3, rows
    uploads = s3["client"].list_multipart_uploads(Bucket=OUT, Prefix="killed/").get("Uploads", [])
    assert [u["Key"] for u in uploads] == [killed_key], uploads  # the dead one, never completed
    for u in uploads:  # what a lifecycle rule does in production
        s3["client"].abort_multipart_upload(Bucket=OUT, Key=u["Key"], UploadId=u["UploadId"])
    assert container_parts(get(s3, OUT, killed_key))[1] == e_local
    work = tmp_path / "cache" / "work"  # the dead worker's work folder, swept by the retry
    assert not work.is_dir() or not list(work.iterdir()), list(work.iterdir())
    assert "Traceback" not in r.stderr
