"""The service on more than one machine (issue 25, part 2): uploads and results in an object
store, several instances on one PostgreSQL database. Real servers on loopback, started here:
a moto S3 server (tests/s3_server.py), PostgreSQL (service_fixtures), two `slidepress serve`
processes with their own data dirs (as on two machines). Fast tests of the store backends and
of the orphan rule first."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from .conftest import SLIDES
from .s3_server import S3Server, available
from .service_fixtures import (  # noqa: F401
    ServerProcess,
    create_token,
    free_port,
    pg_server,
    running_job,
)

pytest.importorskip("fastapi")

from sqlalchemy import update  # noqa: E402

from slidepress.service import ServiceConfig  # noqa: E402
from slidepress.service.db import Instance, Job, make_engine, sessions  # noqa: E402
from slidepress.service.supervisor import release_orphans  # noqa: E402
from slidepress.service.worker import HOST, MACHINE  # noqa: E402

BUCKET = "slidepress"
DICOM = SLIDES / "CMU-1-Small-Region-dicom"  # one of the 20 jobs: a folder upload


@pytest.fixture(scope="module")
def s3():
    why = available()
    if why:
        pytest.skip(why)
    with S3Server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    """The server's environment for this process and the servers it starts."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLIDEPRESS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("SLIDEPRESS_CACHE", str(tmp_path / "cache"))
    return s3


@pytest.fixture(scope="module")
def sample() -> Path:
    from slidepress.slide import sample_slide_path

    return sample_slide_path()


# -- the store ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_storage_backends_put_read_list_delete(where, tmp_path, request):
    import httpx

    from slidepress.service.storage import FolderStorage, ObjectStorage, storage

    if where == "s3":
        s3 = request.getfixturevalue("s3_env")
        url = f"s3://{BUCKET}/t{time.time_ns()}"
        st = storage(ServiceConfig(tmp_path / "data", storage=url))
        assert isinstance(st, ObjectStorage) and st.remote
    else:
        st = storage(ServiceConfig(tmp_path / "data", storage=str(tmp_path / "store")))
        assert isinstance(st, FolderStorage) and not st.remote
    src = tmp_path / "src"
    (src / "grid.zarr" / "c").mkdir(parents=True)
    (src / "grid.zarr" / "zarr.json").write_text("{}")
    (src / "grid.zarr" / "c" / "0").write_bytes(b"\x01" * 10)
    (src / "a.spz").write_bytes(b"spz" * 1000)
    st.put(src / "a.spz", "jobs/abc/out/a.spz")
    st.put(src / "grid.zarr", "jobs/abc/out/grid.zarr")
    st.put(src / "a.spz", "jobs/abcdef/out/a.spz")  # shares a prefix with jobs/abc
    assert st.exists("jobs/abc/out/a.spz") and st.exists("jobs/abc/out/grid.zarr")
    assert not st.exists("jobs/abc/out/b.spz")
    assert st.files("jobs/abc/out/a.spz") == [("", 3000)]
    assert st.files("jobs/abc/out/grid.zarr") == [("c/0", 10), ("zarr.json", 2)]
    assert st.files("jobs/nothing") == []
    with st.open("jobs/abc/out/a.spz") as f:
        assert f.read() == b"spz" * 1000
    assert st.local("jobs/abc/out/a.spz").read_bytes() == b"spz" * 1000  # in place or staged
    assert (st.local("jobs/abc/out/grid.zarr") / "zarr.json").read_text() == "{}"
    signed = st.presign("jobs/abc/out/a.spz", 60)
    if where == "s3":
        assert signed and "Signature" in signed
        assert httpx.get(signed).content == b"spz" * 1000
    else:
        assert signed is None
    st.delete("jobs/abc")
    assert not st.exists("jobs/abc/out/a.spz") and st.files("jobs/abc") == []
    assert st.exists("jobs/abcdef/out/a.spz")  # a sibling with a longer name is kept
    st.delete("jobs/abc")  # nothing there: fine
    if where == "s3":
        assert s3.keys(BUCKET, st.base.split("/", 3)[3]) == [
            f"{st.base.split('/', 3)[3]}/jobs/abcdef/out/a.spz"
        ]


def test_default_storage_is_the_data_dir_in_place(tmp_path):
    from slidepress.service.storage import in_place, publish_upload, storage

    cfg = ServiceConfig(tmp_path)
    assert in_place(cfg) and storage(cfg).root == cfg.data_dir
    up = tmp_path / "uploads" / "1" / "x" / "a.svs"
    up.parent.mkdir(parents=True)
    up.write_bytes(b"II*\x00")
    publish_upload(cfg, up)  # nothing to do: it stays where it was written
    assert up.is_file()


def test_a_missing_bucket_is_one_line_at_start_up(tmp_path, s3_env):
    from slidepress.errors import StorageError
    from slidepress.service import create_app

    with pytest.raises(StorageError, match="no such bucket") as e:
        create_app(ServiceConfig(tmp_path, storage="s3://no-such-bucket/x", workers=0))
    assert "testing" not in str(e.value)  # never a secret


@pytest.mark.parametrize("presign", [0, 60])
def test_downloads_from_the_store_stream_or_redirect(presign, tmp_path, s3_env):
    import zipfile

    import httpx
    from fastapi.testclient import TestClient

    from slidepress.service import create_app
    from slidepress.service.auth import create_token as new_token
    from slidepress.service.db import Result
    from slidepress.service.storage import storage

    cfg = ServiceConfig(tmp_path / "data", storage=f"s3://{BUCKET}/dl{time.time_ns()}",
                        presign_seconds=presign)  # fmt: skip
    app = create_app(cfg, start_workers=False)
    with app.state.sessions() as s:
        token, _ = new_token(s, "alice")
        job = Job(user_id=1, kind="compress", params={}, batch_job={}, items=[],
                  state="succeeded")  # fmt: skip
        s.add(job)
        s.flush()
        (tmp_path / "a.spz").write_bytes(b"x" * 3_000_000)
        (tmp_path / "g.zarr").mkdir()
        (tmp_path / "g.zarr" / "zarr.json").write_text("{}")
        rows = []
        for name, role in (("a.spz", "container"), ("g.zarr", "grid")):
            key = f"jobs/{job.id}/out/{name}"
            storage(cfg).put(tmp_path / name, key)
            rows.append(Result(job_id=job.id, user_id=1, name=name, path=key, role=role,
                               is_dir=name.endswith(".zarr")))  # fmt: skip
        s.add_all(rows)
        s.commit()
        spz, grid = (r.id for r in rows)
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        r = client.get(f"/api/results/{spz}", headers=auth, follow_redirects=False)
        if presign:
            assert r.status_code == 307 and "Signature" in r.headers["location"]
            assert httpx.get(r.headers["location"]).content == b"x" * 3_000_000
        else:
            assert r.status_code == 200 and r.content == b"x" * 3_000_000
            assert r.headers["content-length"] == "3000000"
            assert "a.spz" in r.headers["content-disposition"]
        r = client.get(f"/api/results/{grid}", headers=auth)  # a folder: a zip, streamed
        assert r.status_code == 200
        (tmp_path / "g.zip").write_bytes(r.content)
        assert zipfile.ZipFile(tmp_path / "g.zip").namelist() == ["g.zarr/zarr.json"]
        r = client.get(f"/api/jobs/{job.id}/download", headers=auth)
        (tmp_path / "j.zip").write_bytes(r.content)
        assert sorted(zipfile.ZipFile(tmp_path / "j.zip").namelist()) == [
            "a.spz", "g.zarr/zarr.json"]  # fmt: skip
        assert client.delete(f"/api/results/{spz}", headers=auth).status_code == 204
        assert not storage(cfg).exists(f"jobs/{job.id}/out/a.spz")
    assert not list((cfg.data_dir / "tmp").iterdir())  # no zip left behind


def test_results_as_inputs_and_the_viewer_with_the_store(tmp_path, sample, s3_env):
    """With `--storage s3://...` an upload and a compress job's container live only in the
    store: a container is still the input of encode, compare and export jobs (its original
    found from the compress job's record), the viewer's DeepZoom tiles of both are served
    (staged into the cache), and deleting a job removes its objects."""
    import httpx

    from .test_service_compare_export import _run

    prefix = f"inputs{time.time_ns()}"
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    srv = ServerProcess(data, workers=1, extra=["--storage", f"s3://{BUCKET}/{prefix}"])
    srv.start(timeout=120)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=srv.url, timeout=120, headers=auth) as http:
            up = http.post("/api/uploads", params={"filename": "slide.svs"},
                           content=sample.read_bytes()).raise_for_status().json()  # fmt: skip
            assert not [p for p in (data / "uploads").rglob("*") if p.is_file()]  # store only
            cz, res = _run(http, {"kind": "compress", "uploads": [up["id"]], "codec": "jpeg",
                                  "quality": 60})  # fmt: skip
            container = res["slide.spz"]
            assert not (data / "jobs" / cz["id"]).exists()  # published, scratch dropped
            results = [container["id"]]
            jobs = {"compress": cz["id"]}
            for body in ({"kind": "encode", "encoder": "mean-rgb", "format": "npz"},
                         {"kind": "compare", "encoder": "mean-rgb"},
                         {"kind": "export", "format": "tiff"}):  # fmt: skip
                j, out = _run(http, {**body, "results": results})
                jobs[body["kind"]] = j["id"]
                assert all(o["status"] == "done" for o in j["outcomes"]), j["outcomes"]
                assert out and all(r["bytes"] > 0 for r in out.values())
                if body["kind"] == "compare":  # the original: the upload, only in the store
                    assert j["originals"] == [{"upload": up["id"], "label": "slide.svs"}]
            assert "slide.tiff" in out
            # the viewer: the upload and the container, tiles read from staged copies
            for what, rid in (("uploads", up["id"]), ("results", container["id"])):
                dzi = http.get(f"/api/{what}/{rid}/deepzoom.dzi")
                assert dzi.status_code == 200 and 'Width="2220"' in dzi.text, dzi.text
                for level, tile in ((12, "1_1"), (8, "0_0")):
                    r = http.get(f"/api/{what}/{rid}/deepzoom_files/{level}/{tile}.jpeg")
                    assert r.status_code == 200, r.text
                    assert r.headers["content-type"] == "image/jpeg"
                    assert r.content[:3] == b"\xff\xd8\xff"
            # a container gone from the store (deleted behind the service's back): 410
            (spz,) = [k for k in s3_env.keys(BUCKET, f"{prefix}/jobs/{cz['id']}/")
                      if k.endswith("/slide.spz")]  # fmt: skip
            s3_env.client().delete_object(Bucket=BUCKET, Key=spz)
            r = http.post("/api/jobs", json={"kind": "encode", "results": results})
            assert r.status_code == 410 and "gone from the server's storage" in r.text, r.text
            # deleting a job removes its objects from the bucket
            for kind, jid in reversed(jobs.items()):
                assert s3_env.keys(BUCKET, f"{prefix}/jobs/{jid}/") or kind == "compress"
                assert http.delete(f"/api/jobs/{jid}").status_code == 204
                assert s3_env.keys(BUCKET, f"{prefix}/jobs/{jid}/") == [], kind
            gone = http.get(f"/api/results/{container['id']}/deepzoom.dzi")
            assert gone.status_code == 404  # its record went with the job
    finally:
        srv.stop()


# -- the orphan rule ----------------------------------------------------------------------------
def _instance(make, iid: str, machine: str, pid: int, seen: float) -> None:
    with make() as s:
        s.add(Instance(id=iid, host=iid.split(":")[0], pid=pid, machine=machine, workers=1,
                       http=True, started_at=seen, seen_at=seen))  # fmt: skip
        s.commit()


def test_orphan_rule_requeues_dead_instances_jobs_never_a_live_ones(tmp_path):
    cfg = ServiceConfig(tmp_path, stale_seconds=20, max_attempts=3)
    make = sessions(make_engine(cfg.url))
    with make() as s:
        from slidepress.service.auth import create_token as new_token

        new_token(s, "u")
    t = time.time()
    live = "hostb:10:aaaa"  # another machine, says it is alive
    silent = "hostc:11:bbbb"  # another machine, silent past the timeout
    dead_here = f"{HOST}:999999999:cccc"  # this machine, its process gone
    alive_here = f"{HOST}:{os.getpid()}:dddd"  # this machine, alive (this process)
    _instance(make, live, "other-machine", 10, t)
    _instance(make, silent, "other-machine", 11, t - 60)
    _instance(make, dead_here, MACHINE, 999999999, t)
    _instance(make, alive_here, MACHINE, os.getpid(), t)
    keep = running_job(make, f"{live}/100", t)
    keep_here = running_job(make, f"{alive_here}/101", t)
    of_silent = running_job(make, f"{silent}/102", t)  # its own heartbeat fresh: instance gone
    of_dead = running_job(make, f"{dead_here}/999999998", t)  # its worker gone too
    # the instance died but its worker (this process here) is still stopping: not yet
    stopping = running_job(make, f"{dead_here}/{os.getpid()}", t)
    unknown = running_job(make, "hostd:12:eeee/104", t)  # no such instance registered
    hung = running_job(make, f"{live}/105", t - 60)  # live instance, job heartbeat stale
    spent = running_job(make, f"{silent}/106", t, attempts=3)
    handled = release_orphans(cfg, make)
    assert set(handled) == {of_silent, of_dead, unknown, hung, spent}
    with make() as s:
        state = {j.id: (j.state, j.worker) for j in s.query(Job)}
        assert state[keep] == ("running", f"{live}/100")
        assert state[keep_here] == ("running", f"{alive_here}/101")
        assert state[stopping] == ("running", f"{dead_here}/{os.getpid()}")
        for jid in (of_silent, of_dead, unknown, hung):
            assert state[jid] == ("queued", "")
        assert state[spent][0] == "failed" and "interrupted 3 times" in s.get(Job, spent).error
        # the gone unregistered, but the one whose worker is still stopping kept for now
        assert {i.id for i in s.query(Instance)} == {live, alive_here, dead_here}
    assert release_orphans(cfg, make) == []  # nothing twice
    # the worker went on beating its job past the timeout? no: once its heartbeat is stale
    # the job is handed on whatever the worker's pid says (the fallback on any machine)
    with make() as s:
        s.execute(update(Job).where(Job.id == stopping).values(heartbeat_at=t - 60))
        s.commit()
    assert release_orphans(cfg, make) == [stopping]
    with make() as s:
        assert {i.id for i in s.query(Instance)} == {live, alive_here}


def test_api_only_instance_registers_and_runs_no_job(tmp_path):
    from fastapi.testclient import TestClient

    from slidepress.service import create_app

    cfg = ServiceConfig(tmp_path, workers=0)
    app = create_app(cfg)
    with TestClient(app) as client:
        assert client.get("/api/health").json()["workers"] == 0
        with sessions(make_engine(cfg.url))() as s:
            rows = s.query(Instance).all()
        assert len(rows) == 1 and rows[0].workers == 0 and rows[0].machine == MACHINE
    with sessions(make_engine(cfg.url))() as s:
        assert s.query(Instance).count() == 0  # a clean stop unregisters


# -- two instances, one database, one store -----------------------------------------------------
def _events(server: ServerProcess, name: str) -> list[dict]:
    server.log.flush()
    out = []
    for line in Path(server.log.name).read_text().splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("event") == name:
                out.append(d)
    return out


def test_two_instances_share_the_jobs_and_finish_a_killed_ones(
    tmp_path,
    sample,
    s3_env,
    pg_server,  # noqa: F811
):
    from slidepress.client import Client

    if pg_server is None:
        pytest.skip("no PostgreSQL server here (install Debian's postgresql; CI runs these)")
    os.environ.pop("SLIDEPRESS_CACHE")  # each instance stages into its own data dir
    url = pg_server.new_database()
    prefix = f"multi{time.time_ns()}"
    store = f"s3://{BUCKET}/{prefix}"
    dirs = [tmp_path / "a", tmp_path / "b"]  # one data dir per "machine": scratch only
    for d in dirs:
        d.mkdir()
    token = create_token(dirs[0], "alice", url)
    extra = ["--storage", store, "--heartbeat-timeout", "6", "--max-attempts", "3",
             "--max-jobs-per-user", "25",
             "--log-format", "json"]  # fmt: skip
    servers = [ServerProcess(d, url, workers=1, extra=extra) for d in dirs]
    t0 = time.monotonic()
    try:
        for srv in servers:
            srv.start(timeout=120)
        clients = [Client(srv.url, token) for srv in servers]
        # 20 jobs, each its own upload, alternately through each instance
        uploads, jobs = [], []
        for i in range(20):
            c = clients[i % 2]
            copy = tmp_path / f"s{i:02d}.svs"
            copy.write_bytes(sample.read_bytes())
            up = c.upload(DICOM if i == 3 and DICOM.is_dir() else copy)  # a folder too
            uploads.append(up)
            jobs.append(c.submit("encode", [up["id"]], encoder="mean-rgb", format="npz")["id"])
        # the uploads are in the store, not on either instance's disk
        keys = s3_env.keys(BUCKET, prefix + "/uploads/")
        svs = [k for k in keys if k.endswith(".svs")]
        assert len(svs) == (19 if DICOM.is_dir() else 20)
        if DICOM.is_dir():  # the DICOM folder: one object per file, under its folder
            dcm = [k for k in keys if f"/{uploads[3]['id']}/{DICOM.name}/" in k]
            assert len(dcm) == len(list(DICOM.glob("*.dcm"))) and len(keys) == 19 + len(dcm)
        for d in dirs:
            assert not [p for p in (d / "uploads").rglob("*") if p.is_file()]
        done = [clients[i % 2].wait(j, timeout=300, check=False) for i, j in enumerate(jobs)]
        assert [j["state"] for j in done] == ["succeeded"] * 20, [j["error"] for j in done]
        assert [j["attempts"] for j in done] == [1] * 20
        with sessions(make_engine(url, migrate_schema=False))() as s:
            workers = {s.get(Job, j).worker for j in jobs}
        instances = {w.rpartition("/")[0] for w in workers}
        assert len(instances) == 2  # both instances ran jobs
        started = [e["job"] for srv in servers for e in _events(srv, "job.started")]
        assert sorted(started) == sorted(jobs)  # every job started once, on one instance
        # results: in the store, registered, downloadable through the other instance
        for i, j in enumerate(jobs):
            results = clients[(i + 1) % 2].results(j)
            grid = [r for r in results if r["name"].endswith(".npz")]
            assert len(grid) == 1 and grid[0]["bytes"] > 0
        got = clients[1].download(jobs[0], tmp_path / "dl")
        assert any(p.suffix == ".npz" for p in got)
        npz = [p for p in got if p.suffix == ".npz"][0]
        key = f"{prefix}/jobs/{jobs[0]}/out/{npz.name}"
        assert s3_env.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == npz.read_bytes()
        for d in dirs:  # outputs went to the store; nothing stays in the scratch
            assert not [p for p in (d / "jobs").rglob("*") if p.is_file()]
        print(f"20 jobs on 2 instances: {time.monotonic() - t0:.1f} s")

        # one instance killed mid-job: the other requeues the job and finishes it
        long_ups = []
        for i in range(4):
            copy = tmp_path / f"long{i}.svs"
            copy.write_bytes(sample.read_bytes())
            long_ups.append(clients[0].upload(copy)["id"])
        job = clients[0].submit("compress", long_ups, codec="jpegxl", quality=80)["id"]
        owner = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and owner is None:
            j = clients[0].job(job)
            assert j["state"] in ("queued", "running"), j
            if j["state"] == "running" and j["progress"] > 0.1:
                with sessions(make_engine(url, migrate_schema=False))() as s:
                    worker = s.get(Job, job).worker
                pid = int(worker.rpartition("/")[0].split(":")[1])  # host:pid:random/worker
                owner = next(k for k, srv in enumerate(servers) if srv.proc.pid == pid)
            time.sleep(0.05)
        assert owner is not None, "the long job never ran"
        t_kill = time.monotonic()
        servers[owner].kill()
        survivor = clients[1 - owner]
        final = survivor.wait(job, timeout=300, check=False)
        assert final["state"] == "succeeded", final
        assert final["attempts"] == 2
        with sessions(make_engine(url, migrate_schema=False))() as s:
            assert s.get(Job, job).worker.startswith(f"{HOST}:{servers[1 - owner].proc.pid}:")
        containers = [r for r in survivor.results(job) if r["role"] == "container"]
        assert sorted(r["name"] for r in containers) == [f"long{i}.spz" for i in range(4)]
        keys = s3_env.keys(BUCKET, f"{prefix}/jobs/{job}/")
        assert not [k for k in keys if ".partial" in k]
        print(f"killed instance's job finished by the other {time.monotonic() - t_kill:.1f} s "
              "after the kill")  # fmt: skip
    finally:
        for srv in servers:
            srv.stop()


def test_api_only_instance_and_a_workers_only_process(tmp_path):
    """`serve --workers 0` (the API) and `serve --workers-only` (the jobs, no HTTP) on one
    database and one store: a job submitted to the first runs in the second."""
    import signal
    import subprocess

    import httpx

    from slidepress.client import Client

    from .service_fixtures import SLIDEPRESS

    data = tmp_path / "data"
    token = create_token(data, "alice")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*SLIDEPRESS, "serve", "--data-dir", str(data), "--port", str(port),
           "--workers", "0", "--log-level", "warning"]  # fmt: skip
    log = open(tmp_path / "api.log", "w")  # noqa: SIM115
    web = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    jobs = subprocess.Popen([*SLIDEPRESS, "serve", "--data-dir", str(data), "--workers-only",
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/api/health", timeout=2).json()["workers"] == 0:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.2)
        c = Client(url, token)
        up = c.upload(SLIDES / "CMU-1-Small-Region.svs")
        job = c.wait(c.submit("encode", [up["id"]], encoder="mean-rgb", format="npz")["id"],
                     timeout=180)  # fmt: skip
        assert job["state"] == "succeeded"
        with sessions(make_engine(ServiceConfig(data).url))() as s:
            worker = s.get(Job, job["id"]).worker
            http = {i.id: i.http for i in s.query(Instance)}
        assert http[worker.rpartition("/")[0]] is False  # run by the workers-only instance
        assert sorted(http.values()) == [False, True]
        listed = subprocess.run([*SLIDEPRESS, "admin", "instances", "--data-dir", str(data)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        rows = [line.split("\t") for line in listed.stdout.strip().splitlines()[1:]]
        assert sorted(r[1] for r in rows) == ["api", "workers-only"], listed.stdout
        jobs.send_signal(signal.SIGTERM)
        assert jobs.wait(60) == 0
        with sessions(make_engine(ServiceConfig(data).url))() as s:
            assert [i.http for i in s.query(Instance)] == [True]  # it unregistered
    finally:
        for p in (web, jobs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        log.close()
