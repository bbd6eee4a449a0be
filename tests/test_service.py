"""The REST service through its HTTP API (FastAPI TestClient, real worker processes), on
SQLite and on PostgreSQL: auth, isolation, uploads, jobs, results, bad input."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import SLIDES, needs_shared
from .service_fixtures import database_url, pg_server  # noqa: F401 - fixture

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from slidepress.service import ServiceConfig, create_app  # noqa: E402
from slidepress.service.auth import create_token, revoke  # noqa: E402
from slidepress.service.db import make_engine, sessions  # noqa: E402

LIMIT = 8 * 1024 * 1024


class Api:
    """A TestClient with a user's token."""

    def __init__(self, client: TestClient, token: str):
        self.c, self.h = client, {"Authorization": f"Bearer {token}"}

    def get(self, path, **kw):
        return self.c.get(path, headers=self.h, **kw)

    def post(self, path, headers=None, **kw):
        return self.c.post(path, headers={**self.h, **(headers or {})}, **kw)

    def delete(self, path, **kw):
        return self.c.delete(path, headers=self.h, **kw)

    def job(self, kind: str, upload_id: str, **options) -> dict:
        """Submit and wait."""
        r = self.post("/api/jobs", json={"kind": kind, "uploads": [upload_id], **options})
        assert r.status_code == 201, r.text
        return self.wait(r.json()["id"])

    def upload(self, data: bytes, filename: str):
        return self.post("/api/uploads", params={"filename": filename}, content=data)

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish: {job}")


def _tokens(cfg: ServiceConfig, *names: str) -> list[str]:
    make = sessions(make_engine(cfg.url))
    with make() as s:
        return [create_token(s, n)[0] for n in names]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory, pg_server):  # noqa: F811
    data = tmp_path_factory.mktemp(f"service-{request.param}")
    cfg = ServiceConfig(
        data,
        database_url=database_url(request.param, pg_server, data),
        workers=2,
        max_upload_bytes=LIMIT,
        poll_seconds=0.1,
        heartbeat_seconds=0.3,
    )
    alice, bob, carol = _tokens(cfg, "alice", "bob", "carol")
    with TestClient(create_app(cfg)) as client:
        yield {
            "cfg": cfg,
            "client": client,
            "alice": Api(client, alice),
            "bob": Api(client, bob),
            "carol_token": carol,
        }


@pytest.fixture(scope="module")
def sample_bytes() -> bytes:
    from slidepress.slide import sample_slide_path

    return sample_slide_path().read_bytes()


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# -- auth ------------------------------------------------------------------------------------------
def test_health_needs_no_token_and_reports_workers(service):
    r = service["client"].get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["workers"] == 2


@pytest.mark.parametrize(
    "header", [None, "Bearer nope", "Bearer sp_0123456789abcdef_" + "x" * 43, "Basic abc"]
)
def test_missing_or_wrong_token_is_401(service, header):
    headers = {"Authorization": header} if header else {}
    for path in ("/api/uploads", "/api/jobs", "/api/me"):
        r = service["client"].get(path, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert "token" in r.json()["detail"]


def test_revoked_token_is_401(service):
    cfg = service["cfg"]
    api = Api(service["client"], service["carol_token"])
    assert api.get("/api/me").json()["user"] == "carol"
    with sessions(make_engine(cfg.url))() as s:
        assert revoke(s, "carol") == 1
    assert api.get("/api/me").status_code == 401


def test_tokens_are_stored_hashed(service):
    from sqlalchemy import select

    from slidepress.service.db import Token

    with sessions(make_engine(service["cfg"].url))() as s:
        hashes = [t.hash for t in s.scalars(select(Token))]
    token = service["alice"].h["Authorization"].split()[1]
    assert hashes and all(len(h) == 64 and h not in token and token not in h for h in hashes)


# -- the NIC workflow ------------------------------------------------------------------------------
def test_upload_encode_dihedral_and_download(service, sample_bytes, tmp_path):
    alice = service["alice"]
    up = alice.upload(sample_bytes, "CMU-1-Small-Region.svs")
    assert up.status_code == 201, up.text
    up = up.json()
    assert up["kind"] == "tiff" and up["bytes"] == len(sample_bytes)
    job = alice.post(
        "/api/jobs",
        json={"kind": "encode", "uploads": [up["id"]], "augment": "dihedral", "format": "npz"},
    )
    assert job.status_code == 201, job.text
    job = alice.wait(job.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["outcomes"][0]["status"] == "done"
    assert "/" not in job["outcomes"][0]["path"]  # no server paths shown
    results = alice.get(f"/api/jobs/{job['id']}/results").json()
    names = sorted(r["name"] for r in results)
    assert [n for n in names if n.endswith(".npz")] == [
        f"CMU-1-Small-Region.d{k}.npz" for k in range(8)
    ]
    assert {
        "CMU-1-Small-Region.d0.pca.png",
        "CMU-1-Small-Region.d0.tissue.png",
        "report.csv",
    } <= set(names)
    # one file: a real grid, equal to encoding the slide locally
    grid = next(r for r in results if r["name"] == "CMU-1-Small-Region.d0.npz")
    body = alice.get(grid["url"])
    assert body.status_code == 200
    (tmp_path / "g.npz").write_bytes(body.content)
    from slidepress.store import read_grid

    g = read_grid(tmp_path / "g.npz")
    assert g.features.shape == (23, 17, 3) and g.mask.any()
    assert g.metadata["encoder"]["name"] == "mean-rgb"
    # the whole job as a zip
    z = alice.get(f"/api/jobs/{job['id']}/download")
    assert z.status_code == 200
    members = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert len(members) == len(results) and "report.csv" in members
    png = alice.get(next(r for r in results if r["name"].endswith(".pca.png"))["url"])
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


def test_default_encode_is_the_cli_default_zarr_delivered_as_a_zip(service, sample_bytes, tmp_path):
    """No options: the CLI's defaults (slidepress.jobs.options), so a zarr grid (it was npz
    here and zarr on the command line); its folder comes as one zip."""
    from slidepress.store import read_grid

    alice = service["alice"]
    up = alice.upload(sample_bytes, "CMU-1-Small-Region.svs").json()
    job = alice.job("encode", up["id"])
    assert job["state"] == "succeeded", job
    assert job["params"]["format"] == "zarr"
    results = {r["name"]: r for r in alice.get(f"/api/jobs/{job['id']}/results").json()}
    body = alice.get(results["CMU-1-Small-Region.zarr.zip"]["url"])
    assert body.status_code == 200
    zipfile.ZipFile(io.BytesIO(body.content)).extractall(tmp_path)
    g = read_grid(tmp_path / "CMU-1-Small-Region.zarr")
    assert g.features.shape == (23, 17, 3) and g.metadata["encoder"]["name"] == "mean-rgb"


def test_compress_job_reports_quality_and_previews(service, sample_bytes):
    alice = service["alice"]
    up = alice.upload(sample_bytes, "slide.svs").json()
    job = alice.post(
        "/api/jobs",
        json={"kind": "compress", "uploads": [up["id"]], "codec": "jpeg", "quality": 80},
    ).json()
    job = alice.wait(job["id"])
    assert job["state"] == "succeeded", job
    o = job["outcomes"][0]
    assert o["psnr_db"] > 25 and o["bpp"] > 0 and o["ratio"] > 0
    results = {r["name"]: r for r in alice.get(f"/api/jobs/{job['id']}/results").json()}
    assert {"slide.spz", "slide.tissue.png", "slide.compare.png"} <= set(results)
    from PIL import Image

    pair = Image.open(io.BytesIO(alice.get(results["slide.compare.png"]["url"]).content))
    assert pair.size[0] > 2 * 256  # original | reconstruction
    left = np.asarray(pair)[:, : (pair.size[0] - 8) // 2].astype(float)
    right = np.asarray(pair)[:, (pair.size[0] + 8) // 2 :].astype(float)
    assert 0 < np.abs(left - right).mean() < 20  # lossy, but the same place


# -- isolation -------------------------------------------------------------------------------------
def test_another_users_ids_are_404(service, sample_bytes):
    alice, bob = service["alice"], service["bob"]
    up = alice.upload(sample_bytes, "mine.svs").json()
    job = alice.job("encode", up["id"])
    res = alice.get(f"/api/jobs/{job['id']}/results").json()[0]
    for path in (
        f"/api/uploads/{up['id']}",
        f"/api/jobs/{job['id']}",
        f"/api/jobs/{job['id']}/results",
        f"/api/jobs/{job['id']}/download",
        res["url"],
    ):
        assert bob.get(path).status_code == 404, path
    assert bob.delete(f"/api/uploads/{up['id']}").status_code == 404
    assert bob.delete(f"/api/jobs/{job['id']}").status_code == 404
    assert bob.post(f"/api/jobs/{job['id']}/cancel").status_code == 404
    r = bob.post("/api/jobs", json={"kind": "encode", "uploads": [up["id"]]})
    assert r.status_code == 404
    assert up["id"] not in [u["id"] for u in bob.get("/api/uploads").json()]
    assert job["id"] not in [j["id"] for j in bob.get("/api/jobs").json()]
    assert alice.get(res["url"]).status_code == 200


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expect",
    [
        ("../../etc/passwd", "passwd.tiff"),
        ("/etc/shadow.svs", "shadow.svs"),
        ("..\\..\\win.svs", "win.svs"),
        ("....", "upload.tiff"),
    ],
)
def test_filenames_stay_inside_the_data_dir(service, sample_bytes, name, expect):
    data = service["cfg"].data_dir
    r = service["alice"].upload(sample_bytes[:4096], name)
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == expect.removesuffix(".tiff") or r.json()["filename"]
    stored = [p for p in _files_under(data / "uploads") if p.name == expect]
    assert stored, (expect, _files_under(data / "uploads"))
    assert all(data in p.resolve().parents for p in _files_under(data))
    assert not Path("/etc/passwd.tiff").exists()


def test_upload_over_the_limit_is_413_and_leaves_nothing(service):
    data = service["cfg"].data_dir / "uploads"
    before = set(_files_under(data))
    big = b"II*\x00" + b"\x00" * (LIMIT + 10)
    r = service["alice"].upload(big, "big.svs")
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted while streaming
        yield b"II*\x00"
        for _ in range(LIMIT // (1 << 20) + 2):
            yield b"\x00" * (1 << 20)

    r = service["alice"].post("/api/uploads", params={"filename": "big2.svs"}, content=chunks())
    assert r.status_code == 413
    assert set(_files_under(data)) == before


@pytest.mark.parametrize("payload", [b"hello, this is a text file\n" * 20, b"%PDF-1.7\n" * 50, b""])
def test_non_slide_upload_is_refused(service, payload):
    data = service["cfg"].data_dir / "uploads"
    before = set(_files_under(data))
    r = service["alice"].upload(payload, "notes.svs")
    assert r.status_code in (400, 415), r.text
    assert set(_files_under(data)) == before


def test_zip_without_dicom_is_415(service):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.txt", "x" * 200)
    r = service["alice"].upload(buf.getvalue(), "slide.zip")
    assert r.status_code == 415 and "DICOM" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"kind": "encode"}',
        b'{"kind": "paint", "uploads": ["' + b"a" * 32 + b'"]}',
    ],
)
def test_malformed_job_requests_are_422(service, body):
    r = service["alice"].post(
        "/api/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "extra",
    [
        {"kind": "encode", "colour": "blue"},
        {"kind": "encode", "encoder": "nope"},
        {"kind": "encode", "encoder": "torchscript:/etc/passwd"},
        {"kind": "encode", "format": "exe"},
        {"kind": "compress", "codec": "gif"},
        {"kind": "compress", "codec": "ae-kl"},  # needs weights the server was not given
        {"kind": "compress", "codec": "jpeg", "quality": 500},
        {"kind": "compress", "tile": 100},
        {"kind": "encode", "patch_size": -1},
    ],
)
def test_unknown_or_invalid_options_are_422(service, sample_bytes, extra):
    up = service["alice"].upload(sample_bytes[:4096], "x.svs").json()
    r = service["alice"].post("/api/jobs", json={"uploads": [up["id"]], **extra})
    assert r.status_code == 422, r.text
    detail = json.dumps(r.json()["detail"])
    assert any(
        k in detail
        for k in ("extra", "unknown", "outside", "multiple", "greater", "literal", "Input should")
    ), detail


def test_job_on_a_slide_without_tissue_fails_with_that_message(service, tmp_path):
    from slidepress.synthetic.slides import write_pyramid_tiff

    blank = write_pyramid_tiff(
        tmp_path / "blank.tiff", np.full((1024, 1024, 3), 243, np.uint8), mpp=0.5
    )
    alice = service["alice"]
    up = alice.upload(blank.read_bytes(), "blank.tiff").json()
    job = alice.job("encode", up["id"])
    assert job["state"] == "failed"
    assert "no tissue" in job["error"]
    assert alice.get(f"/api/jobs/{job['id']}/results").json() == []


def test_broken_slide_fails_the_job_clearly(service):
    alice = service["alice"]
    truncated = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 200  # a TIFF header, no valid IFD
    up = alice.upload(truncated, "cut.svs").json()
    job = alice.job("compress", up["id"])
    assert job["state"] == "failed" and "cut.svs" in job["error"]
    assert "Traceback" not in job["error"] and "internal error" not in job["error"]


@needs_shared
def test_dicom_folder_as_zip(service, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted((SLIDES / "CMU-1-Small-Region-dicom").glob("*.dcm")):
            zf.write(f, f"CMU-1-dicom/{f.name}")
    alice = service["alice"]
    up = alice.upload(buf.getvalue(), "CMU-1-dicom.zip")
    assert up.status_code == 201, up.text
    assert up.json()["kind"] == "dicom"
    job = alice.job("encode", up.json()["id"])
    assert job["state"] == "succeeded", job


# -- lifecycle ----------------------------------------------------------------------------------
def test_delete_job_result_and_upload(service, sample_bytes):
    alice, data = service["alice"], service["cfg"].data_dir
    up = alice.upload(sample_bytes, "del.svs").json()
    job = alice.job("encode", up["id"])
    results = alice.get(f"/api/jobs/{job['id']}/results").json()
    one = results[0]
    assert alice.delete(one["url"]).status_code == 204
    assert alice.get(one["url"]).status_code == 404
    assert alice.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not (data / "jobs" / job["id"]).exists()
    assert alice.delete(f"/api/uploads/{up['id']}").status_code == 204
    assert not any(up["id"] in str(p) for p in _files_under(data / "uploads"))


def test_queue_limits_cancel_and_jobs_without_workers(tmp_path, sample_bytes):
    cfg = ServiceConfig(tmp_path, max_active_jobs_per_user=2)
    (tok,) = _tokens(cfg, "dave")
    with TestClient(create_app(cfg, start_workers=False)) as client:
        api = Api(client, tok)
        up = api.upload(sample_bytes, "q.svs").json()
        jobs = [
            api.post("/api/jobs", json={"kind": "encode", "uploads": [up["id"]]}) for _ in range(3)
        ]
        assert [j.status_code for j in jobs] == [201, 201, 429]
        assert "limit" in jobs[2].json()["detail"]
        assert api.delete(f"/api/uploads/{up['id']}").status_code == 409  # in use
        first = jobs[0].json()["id"]
        assert api.get(f"/api/jobs/{first}/results").json() == []
        r = api.post(f"/api/jobs/{first}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert api.post(f"/api/jobs/{first}/cancel").status_code == 409
        assert (
            api.post("/api/jobs", json={"kind": "encode", "uploads": [up["id"]]}).status_code == 201
        )


def test_web_page_and_openapi_are_served(service):
    c = service["client"]
    page = c.get("/")
    assert page.status_code == 200 and "slidepress" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN or other host
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/static/app.js").status_code == 200
    spec = c.get("/openapi.json").json()
    assert "/api/jobs" in spec["paths"] and "/api/uploads" in spec["paths"]
    docs = c.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text  # no CDN: works offline
    assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_cancel_a_running_job_leaves_no_outputs(service, sample_bytes):
    alice, data = service["alice"], service["cfg"].data_dir
    ids = [alice.upload(sample_bytes, f"c{i}.svs").json()["id"] for i in range(4)]
    job = alice.post("/api/jobs", json={"kind": "compress", "uploads": ids, "codec": "jpegxl"})
    job_id = job.json()["id"]
    deadline = time.monotonic() + 60
    while alice.get(f"/api/jobs/{job_id}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = alice.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200
    final = alice.wait(job_id)
    assert final["state"] == "cancelled", final
    assert alice.get(f"/api/jobs/{job_id}/results").json() == []
    assert not (data / "jobs" / job_id).exists()


@pytest.mark.parametrize("name", ["bomb", "loop", "png_bomb"])
def test_hostile_uploads_fail_their_job_fast_and_clearly(service, tmp_path, name):
    from .test_hostile_slides import SUFFIX, make

    path = make(tmp_path, name)
    alice = service["alice"]
    up = alice.upload(path.read_bytes(), f"h{SUFFIX.get(name, '.tiff')}")
    assert up.status_code == 201, up.text
    t0 = time.monotonic()
    job = alice.job("encode", up.json()["id"], mpp_override=0.5)
    assert time.monotonic() - t0 < 30
    assert job["state"] == "failed"
    assert job["error"] and "internal error" not in job["error"]
    assert "Traceback" not in job["error"] and "\n" not in job["error"]
    assert alice.get(f"/api/jobs/{job['id']}/results").json() == []
