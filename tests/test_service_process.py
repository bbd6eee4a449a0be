"""The service as a real process on loopback: killed with SIGKILL mid-job and restarted,
concurrent uploads, orphaned jobs resumed or failed."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .service_fixtures import (  # noqa: F401
    ServerProcess,
    create_token,
    database_url,
    pg_server,
    running_job,
)

pytest.importorskip("fastapi")

from slidepress.client import Client, ServiceError  # noqa: E402
from slidepress.service import ServiceConfig  # noqa: E402
from slidepress.service.db import Job, make_engine, sessions  # noqa: E402
from slidepress.service.supervisor import release_orphans
from slidepress.service.worker import HOST  # noqa: E402


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from slidepress.slide import sample_slide_path

    return sample_slide_path()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_sigkill_mid_job_then_restart_resumes_and_lists_no_partials(
    db,
    tmp_path,
    sample,
    pg_server,  # noqa: F811
):
    data = tmp_path / "data"
    data.mkdir()
    url = database_url(db, pg_server, data)
    token = create_token(data, "alice", url)
    server = ServerProcess(data, url, workers=1).start()
    try:
        c = Client(server.url, token)
        ids = []
        for i in range(4):  # same pixels, four names: four slides to compress
            copy = tmp_path / f"s{i}.svs"
            copy.write_bytes(sample.read_bytes())
            ids.append(c.upload(copy)["id"])
        job = c.submit("compress", ids, codec="jpegxl", quality=80)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # past the first slide, inside a later one
            j = c.job(job["id"])
            if j["state"] == "running" and j["progress"] > 0.3:
                break
            assert j["state"] in ("queued", "running"), j
            time.sleep(0.05)
        server.kill()
        assert c.job  # the client object survives; the server is gone
        with pytest.raises(ServiceError, match="cannot reach"):
            c.job(job["id"])
        with sessions(make_engine(url))() as s:
            assert s.get(Job, job["id"]).state == "running"  # as the kill left it
        server = ServerProcess(data, url, workers=1).start()
        c = Client(server.url, token)
        assert c.health()["status"] == "ok"
        final = c.wait(job["id"], timeout=180, check=False)
        assert final["state"] == "succeeded", final
        assert final["attempts"] == 2
        statuses = [o["status"] for o in final["outcomes"]]
        assert "skipped" in statuses and len(statuses) == 4  # finished slides not redone
        results = c.results(job["id"])
        containers = [r for r in results if r["role"] == "container"]
        assert sorted(r["name"] for r in containers) == [f"s{i}.spz" for i in range(4)]
        assert not any(".partial-" in r["path"] for r in results)
        out = data / "jobs" / job["id"] / "out"
        assert not [p for p in out.rglob("*") if ".partial-" in p.name]
        from slidepress.store.container import Container

        for r in containers:
            with Container(out / r["path"]) as box:
                assert box.verify() == []
        assert c.submit("encode", ids[:1])["state"] == "queued"  # still serving
    finally:
        server.stop()


def test_twenty_concurrent_uploads_all_accounted_for(tmp_path, sample):
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    server = ServerProcess(data, workers=1).start()
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    try:
        copies = []
        for i in range(20):
            p = tmp_path / f"u{i:02d}.svs"
            p.write_bytes(sample.read_bytes())
            copies.append(p)

        def send(path: Path) -> dict:
            with Client(server.url, token) as c:
                return c.upload(path)

        with ThreadPoolExecutor(20) as pool:
            ups = list(pool.map(send, copies))
        assert len({u["id"] for u in ups}) == 20
        assert all(u["sha256"] == digest for u in ups)
        listed = Client(server.url, token).uploads()
        assert sorted(u["filename"] for u in listed) == [p.name for p in copies]
        stored = [p for p in (data / "uploads").rglob("*.svs")]
        assert len(stored) == 20
        assert all(hashlib.sha256(p.read_bytes()).hexdigest() == digest for p in stored)
        assert not [p for p in (data / "uploads").rglob(".partial-*")]
    finally:
        server.stop()


def test_orphaned_jobs_are_resumed_once_then_failed_with_a_message(tmp_path):
    cfg = ServiceConfig(tmp_path, stale_seconds=30, max_attempts=2)
    make = sessions(make_engine(cfg.url))
    with make() as s:
        from slidepress.service.auth import create_token as new_token

        new_token(s, "u")
    dead = f"{HOST}:999999999"  # no such pid
    first = running_job(make, dead, attempts=1, heartbeat=time.time())
    second = running_job(make, dead, attempts=2, heartbeat=time.time())
    alive = running_job(make, "otherhost:1", heartbeat=time.time())  # fresh heartbeat: kept
    stale = running_job(make, "otherhost:2", attempts=1, heartbeat=time.time() - 600)
    handled = release_orphans(cfg, make)
    assert set(handled) == {first, second, stale}
    with make() as s:
        assert s.get(Job, first).state == "queued"
        assert "queued again" in s.get(Job, first).message
        assert s.get(Job, second).state == "failed"
        assert "interrupted 2 times" in s.get(Job, second).error
        assert s.get(Job, alive).state == "running"
        assert s.get(Job, stale).state == "queued"


def test_remote_cli_nic_workflow_and_mha_to_numpy(tmp_path):
    """`slidepress remote upload|submit|wait|download`: the NIC web-app workflow, 8 dihedral
    grids as .mha, loaded as numpy."""
    import os
    import subprocess

    from .service_fixtures import SLIDEPRESS

    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    server = ServerProcess(data, workers=1).start()
    env = {**os.environ, "SLIDEPRESS_TOKEN": token, "SLIDEPRESS_URL": server.url}

    def remote(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*SLIDEPRESS, "remote", *args], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    try:
        up = remote("upload", "@sample")
        assert up.returncode == 0, up.stderr
        upload_id = up.stdout.strip()
        sub = remote("submit", "encode", upload_id, "--set", "augment=dihedral",
                     "--set", "format=mha")  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        assert remote("wait", job_id).returncode == 0
        got = remote("download", job_id, "-o", str(tmp_path / "out"))
        assert got.returncode == 0, got.stderr
        mhas = sorted((tmp_path / "out").glob("*.mha"))
        assert [p.name for p in mhas] == [f"CMU-1-Small-Region.d{k}.mha" for k in range(8)]
        npz = Client.mha_to_npz(mhas[0])
        g0, g4 = Client.load_grid(npz), Client.load_grid(mhas[4])
        assert g0.features.shape == (23, 17, 3)
        assert (g4.features[:, ::-1] == g0.features).all()  # d4: mirrored left-right
        again = remote("download", job_id, "-o", str(tmp_path / "out"))
        assert again.returncode == 2 and "exists" in again.stderr  # never overwrites silently
        for dest in ("/proc/x", "/proc/x.zip", str(mhas[0])):  # unwritable, or a file
            r = remote("download", job_id, "-o", dest)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        bad = subprocess.run([*SLIDEPRESS, "remote", "wait", job_id],
                             env={**env, "SLIDEPRESS_TOKEN": "sp_wrong"}, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert bad.returncode == 2 and "401" in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


def test_token_cli_create_list_revoke(tmp_path):
    import subprocess

    from .service_fixtures import SLIDEPRESS

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*SLIDEPRESS, "token", *args, "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    token = create_token(tmp_path, "alice")
    key, secret = token[3:19], token[20:]  # sp_<16 hex>_<secret, which may hold '_'>
    listed = cli("list")
    assert listed.returncode == 0 and f"{key}  alice  active" in listed.stdout
    assert secret not in listed.stdout + listed.stderr  # the secret is not stored
    assert cli("revoke", key).returncode == 0
    assert f"{key}  alice  revoked" in cli("list").stdout
    bad = cli("create", "../evil")
    assert bad.returncode == 2 and "user name" in bad.stderr
    assert cli("revoke", "nobody").returncode == 2
    ro = subprocess.run([*SLIDEPRESS, "token", "create", "a", "--data-dir", "/proc/nope"],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ro.returncode == 2 and "cannot write" in ro.stderr and "Traceback" not in ro.stderr


def test_serve_refuses_a_taken_port_and_an_unusable_data_dir(tmp_path):
    import socket
    import subprocess

    from .service_fixtures import SLIDEPRESS

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*SLIDEPRESS, "serve", *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        r = serve("--data-dir", str(tmp_path / "d"), "--port", port)
    assert r.returncode == 2 and "cannot listen" in r.stderr
    (tmp_path / "file").write_text("x")
    r = serve("--data-dir", str(tmp_path / "file"), "--port", port)
    assert r.returncode == 2 and "not a folder" in r.stderr
    assert "Traceback" not in r.stderr


# -- issue 21: one server with JSON logs, shared by the tests below -------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("served") / "data"  # made by the service: 0700
    data.parent.mkdir(exist_ok=True)
    token = create_token(data, "alice")
    server = ServerProcess(data, workers=1, extra=["--log-format", "json", "--admins", "alice"])
    server.start()
    yield server, token
    server.stop()


def _log_lines(server) -> list[dict]:
    import json

    server.log.flush()
    out = []
    for line in Path(server.log.name).read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _no_mpp_png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([200, 120, 170], 30, (400, 400, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pink).save(path)
    return path


def test_data_dir_database_uploads_and_results_are_private(served, sample):
    import stat

    server, token = served
    c = Client(server.url, token)
    up = c.upload(sample)
    job = c.wait(c.submit("encode", [up["id"]], format="npz")["id"], timeout=180)
    data = server.data_dir
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(data) == 0o700
    assert mode(data / "slidepress.db") == 0o600
    files = [*(data / "uploads").rglob("*"), *(data / "jobs" / job["id"]).rglob("*")]
    assert any(p.suffix == ".npz" for p in files) and any(p.suffix == ".svs" for p in files)
    for p in files:
        assert mode(p) == (0o700 if p.is_dir() else 0o600), (p, oct(mode(p)))


def test_workers_run_under_a_memory_limit(served):
    import psutil

    server, _ = served
    kids = psutil.Process(server.proc.pid).children(recursive=True)
    workers = [p for p in kids if "spawn_main" in " ".join(p.cmdline())]
    assert workers
    for w in workers:
        soft, _ = w.rlimit(psutil.RLIMIT_AS)
        assert soft != psutil.RLIM_INFINITY and soft >= 4 * 2**30


def test_job_and_upload_events_are_one_json_line_each(served, sample, tmp_path):
    import socket

    server, token = served
    c = Client(server.url, token)
    ok = c.wait(c.submit("encode", [c.upload(sample)["id"]])["id"], timeout=180)
    bad = c.wait(c.submit("encode", [c.upload(_no_mpp_png(tmp_path / "p.png"))["id"]])["id"],
                 timeout=180, check=False)  # fmt: skip
    assert bad["state"] == "failed"
    # a client that goes away mid-upload: one line, no traceback
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /api/uploads?filename=cut.svs HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n"
                     b"Content-Length: 50000000\r\n\r\nII*\x00" + b"\0" * (1 << 20))  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = _log_lines(server)
        if any(e["event"] == "upload.disconnected" for e in lines):
            break
        time.sleep(0.2)
    events = {(e["event"], e.get("job")) for e in lines}
    for job, end in ((ok, "job.succeeded"), (bad, "job.failed")):
        assert ("job.started", job["id"]) in events and (end, job["id"]) in events
    done = next(e for e in lines if e["event"] == "job.succeeded" and e["job"] == ok["id"])
    assert done["user"] == "alice" and done["seconds"] > 0 and done["kind"] == "encode"
    cut = [e for e in lines if e["event"] == "upload.disconnected"]
    assert len(cut) == 1 and cut[0]["filename"] == "cut.svs"
    text = Path(server.log.name).read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text


def test_serve_shows_each_setting_and_its_source(served):
    import httpx

    server, token = served
    text = Path(server.log.name).read_text()
    assert "workers = 1 (flag)" in text and "quota_gb = 0.0 (default)" in text
    health = httpx.get(server.url + "/api/health", headers={"Authorization": f"Bearer {token}"})
    assert health.json()["settings"]["log_format"] == {"value": "json", "source": "flag"}


def test_remote_cli_list_status_cancel_delete_and_failed_download(served, sample, tmp_path):
    import os
    import subprocess

    from .service_fixtures import SLIDEPRESS

    server, token = served
    env = {**os.environ, "SLIDEPRESS_TOKEN": token, "SLIDEPRESS_URL": server.url}

    def remote(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*SLIDEPRESS, "remote", *args], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    c = Client(server.url, token)
    up = c.upload(_no_mpp_png(tmp_path / "nompp.png"))["id"]
    failed = c.wait(c.submit("encode", [up])["id"], timeout=180, check=False)
    assert failed["state"] == "failed"
    got = remote("download", failed["id"], "-o", str(tmp_path / "out"))
    assert got.returncode == 2 and "failed" in got.stderr and "nothing to download" in got.stderr
    assert not (tmp_path / "out").exists()
    assert remote("download", failed["id"], "-o", str(tmp_path / "o.zip")).returncode == 2
    st = remote("status", failed["id"])
    assert st.returncode == 2 and '"state": "failed"' in st.stdout
    listed = remote("list")
    assert listed.returncode == 0 and failed["id"] in listed.stdout
    assert up in remote("list", "uploads").stdout
    # a queued job behind a long one (one worker): cancel it, then delete it and the upload
    # six slides under their own names (the same upload six times would be coded once and
    # skipped five times: a second, and the encode behind it could finish before the cancel)
    bigs = []
    for i in range(6):
        copy = tmp_path / f"big{i}.svs"
        copy.write_bytes(sample.read_bytes())
        bigs.append(c.upload(copy)["id"])
    slow = c.submit("compress", bigs, codec="jpegxl")
    queued = c.submit("encode", [up], mpp_override=0.5)
    cancel = remote("cancel", queued["id"])
    assert cancel.returncode == 0, cancel.stderr
    assert c.wait(queued["id"], check=False)["state"] == "cancelled"
    c.wait(slow["id"], timeout=300, check=False)
    ok = c.wait(c.submit("encode", [up], mpp_override=0.5, format="npz")["id"], timeout=180)
    (tmp_path / "dl").mkdir()
    assert remote("download", ok["id"], "-o", str(tmp_path / "dl")).returncode == 0
    again = remote("download", ok["id"], "-o", str(tmp_path / "dl"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "overwrite=True" not in again.stderr
    d = remote("delete", ok["id"], failed["id"], queued["id"], slow["id"], up, *bigs)
    assert d.returncode == 0, d.stderr
    assert c.jobs() == [] or all(j["id"] not in (ok["id"], failed["id"]) for j in c.jobs())
    assert up not in [u["id"] for u in c.uploads()]


def test_admin_usage_and_purge_commands(tmp_path, sample):
    from typer.testing import CliRunner

    from slidepress.cli.service import admin_app

    data = tmp_path / "data"
    token = create_token(data, "alice")
    create_token(data, "bob")
    server = ServerProcess(data, workers=1).start()
    try:
        Client(server.url, token).upload(sample)
    finally:
        server.stop()
    run = CliRunner().invoke
    usage = run(admin_app, ["usage", "--data-dir", str(data)])
    assert usage.exit_code == 0, usage.output
    rows = [line.split("\t") for line in usage.stdout.strip().splitlines()]
    assert rows[0][0] == "user" and ["alice", "1", str(sample.stat().st_size), "0", "0"] in rows
    assert ["bob", "0", "0", "0", "0"] in rows
    kept = run(admin_app, ["purge", "--older-than-days", "1", "--data-dir", str(data)])
    assert kept.exit_code == 0 and "purged 0 job(s) and 0 upload(s)" in kept.output
    gone = run(admin_app, ["purge", "--older-than-days", "0", "--user", "alice",
                           "--data-dir", str(data)])  # fmt: skip
    assert gone.exit_code == 0 and "1 upload(s)" in gone.output, gone.output
    assert not list((data / "uploads").rglob("*.svs"))
