"""A slidepress container (.spz) as the service's input (issue 22): uploaded as it is (kept
whole, validated, a tampered one refused), or a compress job's result named as the input of a
new job (encode it, transcode it) without uploading it again; only the owner's results; a
result deleted or purged before the job ran fails that slide with a clear message."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from .service_fixtures import pg_server  # noqa: F401 - fixture
from .test_service import Api, _files_under, _tokens, sample_bytes, service  # noqa: F401

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from slidepress.service import ServiceConfig, create_app  # noqa: E402
from slidepress.service.db import make_engine, sessions  # noqa: E402


@pytest.fixture(scope="module")
def spz_bytes(tmp_path_factory) -> bytes:
    """The sample slide compressed with jpegxl by the command line."""
    out = tmp_path_factory.mktemp("spz") / "sample.spz"
    subprocess.run([sys.executable, "-m", "slidepress", "compress", "@sample", "-o", str(out),
                    "--codec", "jpegxl", "--quality", "80"],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return out.read_bytes()


def _container_result(api: Api, job: dict) -> dict:
    (res,) = [r for r in api.get(f"/api/jobs/{job['id']}/results").json()
              if r["role"] == "container"]  # fmt: skip
    return res


def _uploads_snapshot(data: Path) -> set[Path]:
    return set(_files_under(data / "uploads"))


# -- uploading a container ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sample.spz", "no-suffix"])
def test_uploaded_container_is_kept_whole_and_encodes(service, spz_bytes, name):  # noqa: F811
    alice, data = service["alice"], service["cfg"].data_dir
    r = alice.upload(spz_bytes, name)
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["kind"] == "container" and up["bytes"] == len(spz_bytes)
    stored = [p for p in _files_under(data / "uploads") if up["id"] in str(p)]
    assert len(stored) == 1 and stored[0].suffix == ".spz"  # the reader finds it by suffix
    assert stored[0].read_bytes() == spz_bytes  # kept whole, not unpacked
    job = alice.job("encode", up["id"])
    assert job["state"] == "succeeded", job
    assert job["outcomes"][0]["status"] == "done" and job["outcomes"][0]["count"] > 0
    roles = {x["role"] for x in alice.get(f"/api/jobs/{job['id']}/results").json()}
    assert "grid" in roles


def _rewrite(spz: bytes, change) -> bytes:
    """The container's entries written again (stored), `change(name, data)` -> data or None
    (dropped)."""
    src, out = zipfile.ZipFile(io.BytesIO(spz)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                zf.writestr(info.filename, data)
    return out.getvalue()


def _flip_tile_byte(spz: bytes) -> bytes:
    """One byte of a tile's data changed in place (its CRC no longer matches)."""
    zf = zipfile.ZipFile(io.BytesIO(spz))
    info = next(i for i in zf.infolist() if i.filename.startswith("L0/"))
    head = spz[info.header_offset : info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    raw = bytearray(spz)
    raw[at] ^= 0xFF
    return bytes(raw)


def _manifest_says_more_tiles(name: str, data: bytes) -> bytes:
    """The manifest claims one more stored tile than the archive holds."""
    if name != "manifest.json":
        return data
    m = json.loads(data)
    m["tiles"]["stored"] += 1
    return json.dumps(m).encode()


@pytest.mark.parametrize("how,expect", [
    ("flip", "CRC"),
    ("manifest", "tiles"),
    ("no-manifest", "manifest"),
    ("foreign-format", "not a slidepress container"),
])  # fmt: skip
def test_tampered_container_upload_is_refused_and_leaves_nothing(
    service,  # noqa: F811
    spz_bytes,
    how,
    expect,
):
    alice, data = service["alice"], service["cfg"].data_dir
    if how == "flip":
        body = _flip_tile_byte(spz_bytes)
    elif how == "manifest":
        body = _rewrite(spz_bytes, _manifest_says_more_tiles)
    elif how == "no-manifest":
        body = _rewrite(spz_bytes, lambda n, d: None if n == "manifest.json" else d)
    else:
        body = _rewrite(spz_bytes, lambda n, d: json.dumps({**json.loads(d), "format": "x"})
                        .encode() if n == "manifest.json" else d)  # fmt: skip
    before = _uploads_snapshot(data)
    n_uploads = len(alice.get("/api/uploads").json())
    r = alice.upload(body, "tampered.spz")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "not a valid slidepress container" in detail and expect in detail, detail
    assert "\n" not in detail and str(data) not in detail  # one line, no server path
    assert _uploads_snapshot(data) == before  # nothing left behind
    assert len(alice.get("/api/uploads").json()) == n_uploads


def test_dicom_zips_are_still_unpacked_as_before(service):  # noqa: F811
    """A zip without a container's manifest still goes to the DICOM unpacker (its refusals)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "not dicom")
    r = service["alice"].upload(buf.getvalue(), "folder.zip")
    assert r.status_code == 415 and "no DICOM files" in r.json()["detail"]


# -- a result as the input of a new job -----------------------------------------------------------
def test_transcode_a_compress_result_without_reuploading(service, sample_bytes, tmp_path):  # noqa: F811
    from slidepress.store.container import Container

    alice = service["alice"]
    up = alice.upload(sample_bytes, "slide.svs").json()
    first = alice.job("compress", up["id"], codec="jpegxl", quality=80)
    assert first["state"] == "succeeded", first
    res = _container_result(alice, first)
    n_uploads = len(alice.get("/api/uploads").json())
    r = alice.post("/api/jobs", json={"kind": "compress", "results": [res["id"]],
                                      "codec": "webp", "quality": 80})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["results"] == [res["id"]] and r.json()["uploads"] == []
    job = alice.wait(r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["outcomes"][0]["result"] == res["id"]
    assert len(alice.get("/api/uploads").json()) == n_uploads  # nothing uploaded again
    out = _container_result(alice, job)
    assert out["name"] == "slide.spz" and out["id"] != res["id"]
    path = tmp_path / "webp.spz"
    path.write_bytes(alice.get(out["url"]).content)
    with Container(path) as c:
        assert c.codec.name == "webp"
        lv = c.levels[0]
        region = c.read_region(0, 0, min(lv.width, 512), min(lv.height, 512), 0)
    assert region.shape[2] == 3 and region.std() > 1  # decodes to pixels, not a blank
    # and the same container as the input of an encode job, next to an upload
    both = alice.post("/api/jobs", json={"kind": "encode", "uploads": [up["id"]],
                                         "results": [out["id"]]}).json()  # fmt: skip
    both = alice.wait(both["id"])
    assert both["state"] == "succeeded" and both["summary"]["done"] == 2, both


def test_another_users_or_a_non_container_result_is_refused(service, sample_bytes):  # noqa: F811
    alice, bob = service["alice"], service["bob"]
    up = alice.upload(sample_bytes, "iso.svs").json()
    job = alice.job("compress", up["id"], codec="jpeg", quality=80)
    res = _container_result(alice, job)
    r = bob.post("/api/jobs", json={"kind": "encode", "results": [res["id"]]})
    assert r.status_code == 404 and "result" in r.json()["detail"], r.text
    r = bob.post("/api/jobs", json={"kind": "encode", "results": ["0" * 32]})
    assert r.status_code == 404
    report = next(x for x in alice.get(f"/api/jobs/{job['id']}/results").json()
                  if x["role"] != "container")  # fmt: skip
    r = alice.post("/api/jobs", json={"kind": "encode", "results": [report["id"]]})
    assert r.status_code == 422 and "not a container" in r.json()["detail"], r.text
    r = alice.post("/api/jobs", json={"kind": "encode"})
    assert r.status_code == 422 and "at least one input" in r.text


@pytest.mark.parametrize("how", ["deleted", "purged"])
def test_a_result_gone_before_the_job_ran_fails_it_clearly(tmp_path, sample_bytes, how):  # noqa: F811
    """No worker processes: the jobs run in this process, so the result goes away between
    the job being queued and the job running."""
    from slidepress.service.db import Job
    from slidepress.service.runner import run_job
    from slidepress.service.storage import purge
    from slidepress.service.worker import claim

    cfg = ServiceConfig(tmp_path, retention_days=7)
    (tok,) = _tokens(cfg, "erin")
    make = sessions(make_engine(cfg.url))

    def run(job_id: str) -> None:
        assert claim(make, "test:1") == job_id
        run_job(cfg, make, job_id, "test:1")

    with TestClient(create_app(cfg, start_workers=False)) as client:
        api = Api(client, tok)
        up = api.upload(sample_bytes, "gone.svs").json()
        first = api.post("/api/jobs", json={"kind": "compress", "uploads": [up["id"]],
                                            "codec": "jpeg"}).json()  # fmt: skip
        run(first["id"])
        assert api.get(f"/api/jobs/{first['id']}").json()["state"] == "succeeded"
        res = _container_result(api, first)
        r = api.post("/api/jobs", json={"kind": "encode", "results": [res["id"]]})
        assert r.status_code == 201, r.text
        if how == "deleted":
            assert api.delete(res["url"]).status_code == 204
        else:
            with make() as s:
                s.get(Job, first["id"]).finished_at = time.time() - 8 * 86400
                s.commit()
            assert purge(cfg, make)["jobs"] == 1
        run(r.json()["id"])
        job = api.get(f"/api/jobs/{r.json()['id']}").json()
    assert job["state"] == "failed"
    assert f"the result {res['id']} was deleted before the job ran" in job["error"], job
    assert job["error"].startswith("gone.spz:") and str(tmp_path) not in job["error"]


# -- client and command line -----------------------------------------------------------------------
def test_client_and_remote_submit_send_results(monkeypatch):
    from typer.testing import CliRunner

    from slidepress.cli import service as cli_service
    from slidepress.cli.main import app
    from slidepress.client import Client

    sent = []
    monkeypatch.setattr(Client, "_json", lambda self, m, p, **kw: sent.append(kw["json"])
                        or {"id": "j" * 32})  # fmt: skip
    c = Client("http://127.0.0.1:1", token="sp_x_y")
    c.submit("compress", results=["a" * 32], codec="webp")
    c.submit("encode", ["b" * 32])
    assert sent == [{"kind": "compress", "uploads": [], "results": ["a" * 32], "codec": "webp"},
                    {"kind": "encode", "uploads": ["b" * 32]}]  # fmt: skip
    sent.clear()
    monkeypatch.setattr(cli_service, "_client", lambda url, token: Client(url, "sp_x_y"))
    r = CliRunner().invoke(app, ["remote", "submit", "encode", "--result", "c" * 32,
                                 "--set", "format=npz"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sent == [{"kind": "encode", "uploads": [], "results": ["c" * 32], "format": "npz"}]
    r = CliRunner().invoke(app, ["remote", "submit", "encode"])
    assert r.exit_code == 2
