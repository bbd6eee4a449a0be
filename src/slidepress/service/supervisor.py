"""The supervisor (in the web process): keeps `workers` worker processes alive, hands the jobs
of dead ones back, and purges old results when retention is set.

A worker that dies (SIGKILL, out of memory, the service killed) leaves its job `running` with
a stale heartbeat: the supervisor (or the next start of the service) queues it again to
resume (finished slides are skipped by content key, progress starts from 0) or, after
`max_attempts` runs, fails it with a message saying so.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import threading
import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ..store.atomic import pid_alive
from .config import ServiceConfig
from .db import Job, make_engine, now, sessions
from .logs import event
from .runner import gave_up
from .worker import HOST, job_dir, worker_id, worker_main


# -- orphaned jobs ------------------------------------------------------------------------------
def release_orphans(cfg: ServiceConfig, make: sessionmaker[Session],
                    dead: set[str] | None = None) -> list[str]:  # fmt: skip
    """Running jobs whose worker is gone: a dead worker of ours, a dead process on this host,
    or a heartbeat older than `stale_seconds` (another host). Each is queued again to resume,
    or failed once it has used its attempts. Returns the ids handled."""
    handled = []
    with make() as s:
        for job in s.scalars(select(Job).where(Job.state == "running")).all():
            host, _, pid = job.worker.partition(":")
            gone = (dead is not None and job.worker in dead) or (
                host == HOST and pid.isdigit() and not pid_alive(int(pid))
            )
            stale = job.heartbeat_at is None or now() - job.heartbeat_at > cfg.stale_seconds
            if not (gone or stale):
                continue
            if job.cancel_requested:
                values = {"state": "cancelled", "message": "cancelled by the user",
                          "finished_at": now()}  # fmt: skip
            elif job.attempts >= cfg.max_attempts:
                values = {"state": "failed", "error": gave_up(job.attempts),
                          "finished_at": now(), "progress": 1.0}  # fmt: skip
            else:
                values = {"state": "queued", "progress": 0.0, "started_at": None,
                          "message": "its worker stopped (crash or restart of the service); "
                          "queued again to resume"}  # fmt: skip
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "running", Job.worker == job.worker)
                .values(worker="", **values)
            )
            s.commit()
            if res.rowcount == 1:
                handled.append(job.id)
                what = {"queued": "requeued"}.get(values["state"], values["state"])
                event(f"job.{what}", 30 if what == "failed" else 20, job=job.id,
                      user=job.user_id, worker=job.worker, attempts=job.attempts,
                      reason="worker gone" if gone else "heartbeat stale")  # fmt: skip
                if values["state"] != "queued":
                    shutil.rmtree(job_dir(cfg, job.id), ignore_errors=True)
    return handled


# -- the supervisor (web process) ---------------------------------------------------------------
class Supervisor:
    """Keeps `cfg.workers` worker processes alive and hands back the jobs of dead ones."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.make = sessions(make_engine(cfg.url, migrate_schema=False))
        self.ctx = mp.get_context("spawn")
        self.procs: list[mp.process.BaseProcess] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")

    def _spawn(self) -> mp.process.BaseProcess:
        p = self.ctx.Process(
            target=worker_main, args=(self.cfg.to_dict(), os.getpid()), daemon=True,
            name="slidepress-worker",
        )  # fmt: skip
        p.start()
        return p

    def start(self) -> None:
        release_orphans(self.cfg, self.make)  # left by a previous run of the service
        self.procs = [self._spawn() for _ in range(self.cfg.workers)]
        self._thread.start()

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs)

    def _watch(self) -> None:
        last_stale_check = last_purge = 0.0
        while not self._stop.wait(1.0):
            if self.cfg.retention_days and time.monotonic() - last_purge > 3600:
                last_purge = time.monotonic()
                from .storage import purge

                with contextlib.suppress(Exception):
                    purge(self.cfg, self.make)
            dead = {worker_id(p.pid) for p in self.procs if not p.is_alive()}
            if dead:
                with contextlib.suppress(Exception):
                    release_orphans(self.cfg, self.make, dead)
                self.procs = [p if p.is_alive() else self._spawn() for p in self.procs]
            if time.monotonic() - last_stale_check > 5:
                last_stale_check = time.monotonic()
                with contextlib.suppress(Exception):
                    release_orphans(self.cfg, self.make)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the workers: each puts its running job back in the queue."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        with contextlib.suppress(Exception):
            release_orphans(self.cfg, self.make, {worker_id(p.pid) for p in self.procs})
