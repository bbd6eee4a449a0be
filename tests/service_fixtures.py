"""Fixtures for the service tests: a job database (SQLite, and a throwaway PostgreSQL server
of the machine's postgresql package), an app with its worker processes, a real server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
IN_CI = bool(os.environ.get("CI"))


def _pg_bin() -> Path | None:
    for cand in [PG_BIN, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    return None


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses root: run the server as the package's `postgres` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PgServer:
    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.root = Path(tempfile.mkdtemp(prefix="slidepress-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        self.bindir = bindir
        run = lambda *a: subprocess.run(_as_postgres(list(a)), check=True,  # noqa: E731
                                        capture_output=True, text=True, timeout=120)  # fmt: skip
        run(str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync")  # fmt: skip
        run(str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
            "-o", f"-k {self.sock} -c listen_addresses='' -c fsync=off", "start")  # fmt: skip

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self.sock}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=str(self.sock), user="postgres", dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data),
                                     "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | None]:
    """A PostgreSQL server on a local socket for this test session (CI must have one)."""
    try:
        import psycopg  # noqa: F401

        server = PgServer()
    except Exception as e:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and could not start: {e}")
        yield None
        return
    yield server
    server.stop()


def database_url(kind: str, pg: PgServer | None, data_dir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{data_dir / 'jobs.db'}"
    if pg is None:
        pytest.skip("no PostgreSQL server here (install Debian's postgresql; CI runs these)")
    return pg.new_database()


# -- a real server process -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLIDEPRESS = [sys.executable, "-m", "slidepress"]


def create_token(data_dir: Path, name: str, database: str | None = None) -> str:
    cmd = [*SLIDEPRESS, "token", "create", name, "--data-dir", str(data_dir)]
    if database:
        cmd += ["--database", database]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


class ServerProcess:
    """`slidepress serve` in its own process group (so SIGKILL takes its workers too)."""

    def __init__(self, data_dir: Path, database: str | None = None, workers: int = 2,
                 extra: list[str] = ()):  # fmt: skip
        self.data_dir, self.database, self.workers, self.extra = data_dir, database, workers, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        import httpx

        cmd = [*SLIDEPRESS, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
               "--workers", str(self.workers), "--log-level", "warning", *self.extra]  # fmt: skip
        if self.database:
            cmd += ["--database", self.database]
        self.log = open(self.data_dir / f"server-{time.time_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json()["workers"] > 0:
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def kill(self) -> None:
        """SIGKILL the whole process group: the web process and its workers."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def running_job(make, worker: str, heartbeat: float | None, attempts: int = 1) -> str:
    """A job row as a worker leaves it while running (for the orphan-rule tests)."""
    from slidepress.service.db import Job

    with make() as s:
        job = Job(user_id=1, kind="encode", params={}, batch_job={}, items=[], state="running",
                  worker=worker, attempts=attempts, heartbeat_at=heartbeat)  # fmt: skip
        s.add(job)
        s.commit()
        return job.id
