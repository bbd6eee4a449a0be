"""Worker processes: each claims a queued job (fairly between users) and hands it to the job
runner (`runner.py`); the supervisor in the web process (`supervisor.py`) keeps them alive.

Fairness: an idle worker takes the oldest queued job of the user with the fewest running
jobs, so one user's queue of many jobs does not hold back another user's one job. Each worker
runs under an address-space limit (RLIMIT_AS, `worker_memory_gb`) and the service's plain
image pixel limit, so one job cannot take the machine: over the limit it fails with a
message, and the worker lives on. Files it writes are private (umask 077).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .config import ServiceConfig
from .db import Job, make_engine, now, sessions
from .logs import setup as setup_logs

HOST = socket.gethostname()


class Stopped(BaseException):  # noqa: N818
    """The worker was told to stop (service shutdown): the job goes back to the queue."""


def worker_id(pid: int | None = None) -> str:
    return f"{HOST}:{pid or os.getpid()}"


def job_dir(cfg: ServiceConfig, job_id: str) -> Path:
    return cfg.data_dir / "jobs" / job_id


# -- the worker process ------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the web process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _on_term(signum: int, frame: object) -> None:
    raise Stopped()


def private_umask() -> None:
    """Files the service writes are its user's only (0600, folders 0700)."""
    os.umask(0o077)


def limit_memory(nbytes: int) -> None:
    """Cap this process's address space: an allocation past it raises MemoryError (the job
    fails) instead of the machine swapping or the OOM killer picking a process."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))


def worker_main(config: dict[str, Any], parent_pid: int) -> None:
    """Entry point of a worker process (spawned: nothing inherited from the web process)."""
    from .. import limits

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the web process, which stops us
    _die_with_parent()
    private_umask()
    cfg = ServiceConfig(**config)
    setup_logs(cfg.log_format)
    limits.configure(max_image_pixels=min(limits.current().max_image_pixels,
                                          cfg.max_image_pixels))  # fmt: skip
    limit_memory(cfg.worker_memory_limit)
    make = sessions(make_engine(cfg.url, migrate_schema=False))  # the web process did
    me = worker_id()
    from .runner import run_job

    try:
        while os.getppid() == parent_pid:
            job_id = claim(make, me)
            if job_id is None:
                time.sleep(cfg.poll_seconds)
                continue
            run_job(cfg, make, job_id, me)
    except Stopped:
        return


def claim(make: sessionmaker[Session], me: str) -> str | None:
    """Take a queued job, fairly: the oldest of the user with the fewest running jobs (ties:
    the oldest job). A conditional UPDATE, so two workers never take the same."""
    with make() as s:
        running = defaultdict(int, s.execute(
            select(Job.user_id, func.count()).where(Job.state == "running")
            .group_by(Job.user_id)).all())  # fmt: skip
        # each user's oldest queued job: one row per user, however long their queue
        oldest = (select(Job.user_id, func.min(Job.created_at).label("first"))
                  .where(Job.state == "queued").group_by(Job.user_id).subquery())  # fmt: skip
        heads = s.execute(
            select(Job.id, Job.user_id, Job.created_at).join(
                oldest, (Job.user_id == oldest.c.user_id) & (Job.created_at == oldest.c.first))
            .where(Job.state == "queued")
        ).all()  # fmt: skip
        heads.sort(key=lambda r: (running[r.user_id], r.created_at))
        for jid, _, _ in heads:
            res = s.execute(
                update(Job)
                .where(Job.id == jid, Job.state == "queued")
                .values(
                    state="running",
                    worker=me,
                    attempts=Job.attempts + 1,
                    started_at=now(),
                    heartbeat_at=now(),
                    progress=0.0,
                    message="starting",
                    error="",
                )  # fmt: skip
            )
            s.commit()
            if res.rowcount == 1:
                return jid
    return None
