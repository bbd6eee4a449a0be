"""Worker processes: each claims a queued job (fairly between users) and hands it to the job
runner (`runner.py`); the supervisor of its instance (`supervisor.py`) keeps them alive.

A worker's id (`Job.worker`) is its instance's id (`host:pid:random`, one per `slidepress
serve`) and its pid, so any instance sharing the database can tell whose job a running job is
and whether that instance is still alive (`supervisor.release_orphans`).

Fairness: an idle worker takes the oldest queued job of the user with the fewest running
jobs, so one user's queue of many jobs does not hold back another user's one job. Each worker
runs under an address-space limit (RLIMIT_AS, `worker_memory_gb`) and the service's plain
image pixel limit, so one job cannot take the machine: over the limit it fails with a
message, and the worker lives on. Files it writes are private (umask 077).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import socket
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .config import ServiceConfig
from .db import Job, make_engine, now, sessions
from .logs import setup as setup_logs

HOST = socket.gethostname()[:48]


def _machine() -> str:
    """Processes with the same value can check each other's pids: one boot of one host, one
    pid namespace (two containers on one host differ)."""
    parts = [HOST]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


MACHINE = _machine()


class Stopped(BaseException):  # noqa: N818
    """The worker was told to stop (service shutdown): the job goes back to the queue."""


def new_instance_id() -> str:
    """This `slidepress serve`'s id: host, pid and a random part (pids repeat)."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_id(instance: str, pid: int | None = None) -> str:
    """A worker's id (in `Job.worker`): its instance's id and its pid."""
    return f"{instance}/{pid or os.getpid()}"


def instance_of(worker: str) -> str | None:
    """The instance id in a worker id; None for an id written before instances existed
    (`host:pid`)."""
    instance, sep, _ = worker.rpartition("/")
    return instance if sep else None


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


def worker_main(config: dict[str, Any], parent_pid: int, instance: str) -> None:
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
    me = worker_id(instance)
    if cfg.storage:  # inputs staged from an object store: a bounded cache in the data dir
        from ..remote import CACHE_ENV

        os.environ.setdefault(CACHE_ENV, str(cfg.data_dir / "cache"))
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
