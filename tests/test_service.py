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


# -- issue 21 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expect",
    [
        ("切片🔬.svs", "切片🔬.svs"),
        ("Präparat.svs", "Präparat.svs"),
        ("Pra\u0308parat.svs", "Präparat.svs"),  # NFD in, NFC stored
        ("my slide\t(1).svs", "my_slide(1).svs"),
        (".svs", "upload.svs"),
    ],
)
def test_unicode_names_keep_letters_and_the_extension(service, sample_bytes, name, expect):
    r = service["alice"].upload(sample_bytes[:4096], name)
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == expect
    data = service["cfg"].data_dir / "uploads"
    assert [p for p in _files_under(data) if p.name == expect]


def _dicom_zip(payload: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of a 'DICOM folder' whose one member has a DICOM preamble, then `payload`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("folder/IM0001.dcm", b"\0" * 128 + b"DICM" + payload)
    return buf.getvalue()


def test_zip_bomb_is_refused_before_unpacking_and_leaves_nothing(service):
    data = service["cfg"].data_dir / "uploads"
    before = set(_files_under(data))
    bomb = _dicom_zip(b"\0" * (6 << 20))  # 6 MB of zeros in ~6 KB: 1000:1
    assert len(bomb) < 20_000
    t0 = time.monotonic()
    r = service["alice"].upload(bomb, "bomb.zip")
    assert r.status_code == 413, r.text
    assert "compressed" in r.json()["detail"] and "limit" in r.json()["detail"]
    assert time.monotonic() - t0 < 5
    # a modest ratio but more than the upload limit unpacked: stopped at the limit
    rng = np.random.default_rng(0)
    mixed = b"".join(rng.bytes(1024) + b"\0" * 30_000 for _ in range(LIMIT // 30_000 + 50))
    z = _dicom_zip(mixed)
    assert len(z) < LIMIT
    r = service["alice"].upload(z, "big.zip")
    assert r.status_code == 413, r.text
    assert "unpacks to more than" in r.json()["detail"] and "upload limit" in r.json()["detail"]
    assert set(_files_under(data)) == before
    assert not list((service["cfg"].data_dir / "uploads").rglob(".partial-*"))


def test_storage_quota_caps_uploads_zips_and_jobs(tmp_path, sample_bytes):
    quota = len(sample_bytes) + (1 << 20)  # one sample and a MB more
    cfg = ServiceConfig(tmp_path, quota_bytes=quota)
    (tok,) = _tokens(cfg, "erin")
    with TestClient(create_app(cfg, start_workers=False)) as client:
        api = Api(client, tok)
        assert api.upload(sample_bytes, "a.svs").status_code == 201
        me = api.get("/api/me").json()
        assert me["quota_bytes"] == quota and me["used_bytes"] == len(sample_bytes)
        r = api.upload(sample_bytes, "b.svs")  # over the remaining MB
        assert r.status_code == 507 and "quota" in r.json()["detail"], r.text
        z = _dicom_zip(np.random.default_rng(1).bytes(3 << 19), zipfile.ZIP_STORED)[:]
        r = api.upload(z[: (1 << 20) - 1000] if len(z) > (1 << 20) else z, "c.zip")
        assert r.status_code in (413, 415, 507)
        mixed = b"".join(np.random.default_rng(2).bytes(1024) + b"\0" * 20_000 for _ in range(200))
        r = api.upload(_dicom_zip(mixed), "d.zip")  # ~4 MB unpacked, ~0.2 MB sent
        assert r.status_code == 413 and "quota" in r.json()["detail"], r.text
        assert [u["filename"] for u in api.get("/api/uploads").json()] == ["a.svs"]
        filler = b"II*\x00" + b"\0" * ((1 << 20) - 4)  # exactly the remaining MB
        assert api.upload(filler, "f.tiff").status_code == 201
        r = api.upload(sample_bytes[:4096], "g.svs")
        assert r.status_code == 507 and "quota" in r.json()["detail"]
        up = api.get("/api/uploads").json()[0]["id"]
        r = api.post("/api/jobs", json={"kind": "encode", "uploads": [up]})
        assert r.status_code == 507


def test_plain_image_over_the_service_pixel_limit_fails_fast_and_clearly(service, tmp_path):
    """16000 x 16000 px in a ~1 MB PNG: decoded whole it took 4.5 GiB; the service's pixel
    limit (max_image_megapixels, 100 by default) refuses it in seconds."""
    from .test_hostile_slides import png_bomb

    path = png_bomb(tmp_path / "huge.png", side=16000)
    alice = service["alice"]
    up = alice.upload(path.read_bytes(), "huge.png")
    assert up.status_code == 201, up.text
    t0 = time.monotonic()
    job = alice.job("encode", up.json()["id"], mpp_override=0.5)
    assert time.monotonic() - t0 < 20
    assert job["state"] == "failed", job
    err = job["error"]
    assert "huge.png" in err and "max_image_megapixels" in err
    assert "--limit" not in err and "SLIDEPRESS_LIMIT" not in err


def test_job_errors_name_the_upload_and_the_request_field(service, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    pink = np.clip(rng.normal([200, 120, 170], 30, (600, 600, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pink).save(tmp_path / "x.png")  # no dpi: no mpp
    alice, data = service["alice"], service["cfg"].data_dir
    up = alice.upload((tmp_path / "x.png").read_bytes(), "Präparat 7.png").json()
    job = alice.job("encode", up["id"])
    assert job["state"] == "failed", job
    err = job["error"] + json.dumps(job["outcomes"])
    assert "Präparat_7.png" in err and "mpp_override" in err
    assert "--mpp" not in err and str(data) not in err and "/uploads/" not in err


def test_job_errors_never_show_server_paths():
    from slidepress.service.messages import for_user

    entry = {
        "upload": "u" * 32,
        "label": "Präparat.mrxs",
        "item": {"path": "/srv/sp/uploads/1/abc/Präparat.mrxs"},
    }
    msg = for_user(
        "Level files not found in /srv/sp/uploads/1/abc/Präparat/Data0001.dat; "
        "raise it with --limit max_pixels=N (or SLIDEPRESS_LIMIT_MAX_PIXELS=N) if "
        "the file is genuine",
        Path("/srv/sp"),
        [entry],
    )
    assert "/srv" not in msg and "--limit" not in msg and "Data0001.dat" in msg


def test_claim_is_fair_between_users(tmp_path):
    """alice queued 8 jobs, then bob 1: the second worker to ask takes bob's, not alice's 2nd."""
    from slidepress.service.db import Job
    from slidepress.service.worker import claim

    cfg = ServiceConfig(tmp_path)
    _tokens(cfg, "alice", "bob")
    make = sessions(make_engine(cfg.url))
    with make() as s:
        t = time.time()
        alice = [Job(user_id=1, kind="encode", params={}, batch_job={}, items=[],
                     created_at=t + i) for i in range(8)]  # fmt: skip
        bob = Job(user_id=2, kind="encode", params={}, batch_job={}, items=[], created_at=t + 9)
        s.add_all([*alice, bob])
        s.commit()
        ids = [j.id for j in alice], bob.id
    assert claim(make, "w:1") == ids[0][0]
    assert claim(make, "w:2") == ids[1]  # bob's one job does not wait behind alice's queue
    assert claim(make, "w:3") == ids[0][1]


def test_requeued_job_starts_again_from_zero(tmp_path):
    from slidepress.service.db import Job
    from slidepress.service.supervisor import release_orphans
    from slidepress.service.worker import claim

    cfg = ServiceConfig(tmp_path)
    _tokens(cfg, "alice")
    make = sessions(make_engine(cfg.url))
    with make() as s:
        job = Job(user_id=1, kind="encode", params={}, batch_job={}, items=[])
        s.add(job)
        s.commit()
    claim(make, "otherhost:1")
    with make() as s:
        s.get(Job, job.id).progress, s.get(Job, job.id).heartbeat_at = 0.46, time.time() - 600
        s.commit()
    assert release_orphans(cfg, make) == [job.id]
    with make() as s:
        j = s.get(Job, job.id)
        assert (j.state, j.progress, j.started_at) == ("queued", 0.0, None)
        assert "queued again" in j.message


def test_security_headers_and_no_store_on_the_api(service):
    c = service["client"]
    api = service["alice"].get("/api/me")
    for r in (api, c.get("/"), c.get("/api/health")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert api.headers["cache-control"] == "no-store"
    assert c.get("/api/health").headers["cache-control"] == "no-store"


def test_listings_page_with_limit_and_offset(service, sample_bytes):
    alice = service["alice"]
    for i in range(3):
        alice.upload(sample_bytes[:4096], f"page{i}.svs")
    everything = alice.get("/api/uploads")
    total = int(everything.headers["x-total-count"])
    assert total == len(everything.json()) >= 3
    page = alice.get("/api/uploads", params={"limit": 2, "offset": total - 3})
    assert [u["id"] for u in page.json()] == [u["id"] for u in everything.json()][-3:-1]
    assert page.headers["x-total-count"] == str(total)
    assert alice.get("/api/jobs", params={"limit": 1}).status_code == 200
    assert alice.get("/api/jobs", params={"limit": 0}).status_code == 422
    assert alice.get("/api/jobs", params={"state": "nope"}).status_code == 422


def test_retention_purges_old_finished_jobs_and_unused_uploads(tmp_path, sample_bytes):
    from slidepress.service.db import Job, Upload
    from slidepress.service.storage import purge, usage

    cfg = ServiceConfig(tmp_path, retention_days=7)
    (tok,) = _tokens(cfg, "frank")
    with TestClient(create_app(cfg, start_workers=False)) as client:
        api = Api(client, tok)
        old, fresh = (api.upload(sample_bytes[:4096], f"{n}.svs").json()["id"] for n in "ab")
        done = api.post("/api/jobs", json={"kind": "encode", "uploads": [old]}).json()["id"]
        api.post(f"/api/jobs/{done}/cancel")
        make = sessions(make_engine(cfg.url))
        with make() as s:
            s.get(Upload, old).created_at -= 8 * 86400
            s.get(Job, done).finished_at = time.time() - 8 * 86400
            s.commit()
        assert usage(make())[0]["uploads"] == 2
        assert purge(cfg, make) == {"jobs": 1, "uploads": 1, "bytes": 4096}
        assert [u["id"] for u in api.get("/api/uploads").json()] == [fresh]
        assert api.get(f"/api/jobs/{done}").status_code == 404
        assert not (cfg.data_dir / "uploads" / "1" / old).exists()


def test_settings_precedence_flag_env_file_default(tmp_path, monkeypatch):
    conf = tmp_path / "slidepress.toml"
    conf.write_text(f'data_dir = "{tmp_path / "d"}"\nworkers = 3\nquota_gb = 2\n'
                    "retention_days = 30\n")  # fmt: skip
    monkeypatch.setenv("SLIDEPRESS_CONFIG", str(conf))
    monkeypatch.setenv("SLIDEPRESS_WORKERS", "4")
    monkeypatch.setenv("SLIDEPRESS_QUOTA_GB", "5")
    cfg = ServiceConfig.resolve({"quota_gb": 1.5})
    assert (cfg.workers, cfg.quota_bytes, cfg.retention_days) == (4, int(1.5 * 2**30), 30)
    shown = cfg.settings()
    assert shown["quota_gb"] == {"value": 1.5, "source": "flag"}
    assert shown["workers"]["source"] == "env" and shown["retention_days"]["source"] == "file"
    assert shown["max_upload_gb"]["source"] == "default" and shown["data_dir"]["source"] == "file"
    conf.write_text("wrokers = 2\n")
    from slidepress.errors import UsageError

    with pytest.raises(UsageError, match="unknown setting 'wrokers'"):
        ServiceConfig.resolve({"data_dir": tmp_path})


def test_health_shows_settings_to_admins_only(tmp_path):
    cfg = ServiceConfig(tmp_path, admins="root", database_url=f"sqlite:///{tmp_path}/x.db")
    root, bob = _tokens(cfg, "root", "bob")
    with TestClient(create_app(cfg, start_workers=False)) as client:
        assert "settings" not in client.get("/api/health").json()
        r = client.get("/api/health", headers={"Authorization": f"Bearer {bob}"})
        assert "settings" not in r.json()
        r = client.get("/api/health", headers={"Authorization": f"Bearer {root}"}).json()
        assert r["settings"]["workers"] == {"value": 2, "source": "default"}
        assert "x.db" not in json.dumps(r)  # the database URL may hold a password


def test_routes_declare_response_models(service):
    spec = service["client"].get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
            if k := ok.get("content", {}).get("application/json"):
                assert k.get("schema") not in (None, {}), (method, path)
    schemas = spec["components"]["schemas"]
    assert {"JobOut", "UploadOut", "ResultOut", "Health", "Me"} <= set(schemas)


def test_root_path_setting_prefixes_every_url(tmp_path, sample_bytes):
    cfg = ServiceConfig(tmp_path, root_path="slidepress/")
    (tok,) = _tokens(cfg, "gina")
    with TestClient(create_app(cfg, start_workers=False)) as client:
        api = Api(client, tok)
        # a proxy that strips the prefix, and one that passes it on
        for path in ("/api/me", "/slidepress/api/me"):
            assert api.get(path).json()["user"] == "gina"
        assert client.get("/static/app.css").status_code == 200
        assert '<base href="/slidepress/">' in client.get("/").text
        assert "/slidepress/openapi.json" in client.get("/docs").text
        assert client.get("/openapi.json").json()["servers"] == [{"url": "/slidepress"}]


def test_worker_memory_limit_turns_a_runaway_allocation_into_memoryerror():
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from slidepress.service.worker import limit_memory\n"
        "limit_memory(3 * 2**30)\n"
        "try:\n    np.ones(4 * 2**30, np.uint8)\nexcept MemoryError:\n    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.stdout.strip() == "refused", out.stderr[-2000:]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_migrations_from_empty_and_from_the_pre_migration_schema(db, tmp_path, pg_server):  # noqa: F811
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, select

    from slidepress.service.db import MIGRATIONS, Base, User, _alembic_config

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    assert MIGRATIONS.is_dir() and head

    def check(url: str) -> None:
        with make_engine(url).connect() as conn:
            ctx = MigrationContext.configure(conn)
            assert ctx.get_current_revision() == head
            assert compare_metadata(ctx, Base.metadata) == []  # the models, exactly

    (tmp_path / "a").mkdir()
    check(database_url(db, pg_server, tmp_path / "a"))  # an empty database
    # a database the service made before migrations (create_all), with a user in it
    (tmp_path / "b").mkdir()
    url = database_url(db, pg_server, tmp_path / "b")
    old = create_engine(url)
    before = ("users", "tokens", "uploads", "jobs", "results")  # issue 12's tables
    Base.metadata.create_all(old, tables=[Base.metadata.tables[t] for t in before])
    with sessions(old)() as s:
        s.add(User(name="kept"))
        s.commit()
    old.dispose()
    check(url)
    with sessions(make_engine(url))() as s:
        assert s.scalars(select(User.name)).all() == ["kept"]


def test_resumable_upload_in_parts_with_offsets(service, sample_bytes):
    import hashlib

    alice, data = service["alice"], service["cfg"].data_dir
    body = sample_bytes
    size = len(body)
    r = alice.post("/api/uploads/resumable", params={"filename": "Präparat.svs", "size": size})
    assert r.status_code == 201, r.text
    sid, where = r.json()["id"], f"/api/uploads/resumable/{r.json()['id']}"

    def put(start: int, end: int, payload: bytes | None = None):
        chunk = body[start : end + 1] if payload is None else payload
        return alice.c.put(where, content=chunk, headers={
            **alice.h, "Content-Range": f"bytes {start}-{end}/{size}"})  # fmt: skip

    assert put(0, 999_999, body[:600_000]).json()["offset"] == 600_000  # cut short: kept
    wrong = put(0, 99)
    assert wrong.status_code == 409 and "offset 600000" in wrong.json()["detail"]
    assert put(600_000, size + 5).status_code == 416
    assert alice.get(where).json()["offset"] == 600_000
    half = put(600_000, 1_200_000)
    assert half.status_code == 200 and half.json()["upload"] is None
    done = put(1_200_001, size - 1).json()["upload"]
    assert done["filename"] == "Präparat.svs" and done["kind"] == "tiff"
    assert done["sha256"] == hashlib.sha256(body).hexdigest() and done["bytes"] == size
    assert done["id"] == sid and alice.get(f"/api/uploads/{sid}").status_code == 200
    assert alice.get(where).status_code == 404  # the session is gone with its last part
    assert not [p for p in _files_under(data / "uploads") if p.name == "data"]
    big = alice.post("/api/uploads/resumable", params={"filename": "x.svs", "size": LIMIT + 1})
    assert big.status_code == 413
    bob = service["bob"]
    other = alice.post("/api/uploads/resumable", params={"filename": "y.svs", "size": 10}).json()
    assert bob.get(f"/api/uploads/resumable/{other['id']}").status_code == 404
    assert alice.delete(f"/api/uploads/resumable/{other['id']}").status_code == 204


def test_client_resumes_a_dropped_upload(service, sample_bytes, tmp_path):
    import hashlib

    import httpx

    from slidepress.client import Client

    token = service["alice"].h["Authorization"].split()[1]

    class Dropping:  # the TestClient, with the 2nd and 3rd part dropped before they arrive
        def __init__(self) -> None:
            self.puts = 0

        def request(self, method, path, headers=None, **kw):
            if method == "PUT":
                self.puts += 1
                if self.puts in (2, 3):
                    raise httpx.WriteError("connection reset by peer")
            h = {**service["alice"].h, **(headers or {})}
            return service["client"].request(method, path, headers=h, **kw)

        def close(self) -> None:
            pass

    path = tmp_path / "resume.svs"
    path.write_bytes(sample_bytes)
    c = Client("http://testserver", token)
    c._http = Dropping()
    seen = []
    up = c.upload(path, progress=lambda sent, total: seen.append(sent), resumable=True,
                  part_size=500_000)  # fmt: skip
    assert up["sha256"] == hashlib.sha256(sample_bytes).hexdigest()
    assert up["bytes"] == len(sample_bytes) and c._http.puts == 6  # 4 parts + 2 retried
    assert seen[-1] == len(sample_bytes)
