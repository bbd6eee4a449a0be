"""The supervisor (one per instance): keeps `workers` worker processes alive, says that its
instance is alive, hands back the jobs of dead workers and dead instances, and purges old
results when retention is set.

Several instances (`slidepress serve` on several machines, API-only ones with `--workers 0`,
job runners with `--workers-only`) share one database. Each registers itself in `instances`
and refreshes `seen_at` every heartbeat; each worker refreshes its job's `heartbeat_at`. A
running job is orphaned when its worker died (a dead worker of ours), when its instance is
gone (unregistered, silent for `heartbeat_timeout`, or its process dead on this machine) or
when its own heartbeat is older than `heartbeat_timeout` (a hung worker). Any instance's
supervisor then queues it again to resume (finished slides are skipped by content key,
progress starts from 0) or, after `max_attempts` runs, fails it with a message saying so. A
job whose worker and instance are alive is never touched, whichever instance it belongs to;
the conditional UPDATEs (here, in the claim and when a job finishes) keep two instances from
handling one job twice.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..store.atomic import pid_alive
from .config import ServiceConfig
from .db import Instance, Job, make_engine, now, sessions
from .logs import event
from .runner import gave_up
from .storage import remove_job_files, sweep_scratch
from .worker import HOST, MACHINE, instance_of, new_instance_id, worker_id, worker_main


# -- instances ----------------------------------------------------------------------------------
def register(make: sessionmaker[Session], instance: str, workers: int, http: bool) -> None:
    with make() as s:
        s.merge(Instance(id=instance, host=HOST, pid=os.getpid(), machine=MACHINE,
                         workers=workers, http=http, started_at=now(), seen_at=now()))  # fmt: skip
        s.commit()
    event("instance.started", instance=instance, workers=workers, http=http)


def beat(make: sessionmaker[Session], instance: str, workers: int, http: bool) -> None:
    """Say the instance is alive; registered again if another took it for gone meanwhile."""
    with make() as s:
        res = s.execute(update(Instance).where(Instance.id == instance).values(seen_at=now()))
        s.commit()
    if res.rowcount == 0:
        register(make, instance, workers, http)


def unregister(make: sessionmaker[Session], instance: str) -> None:
    with make() as s:
        s.execute(delete(Instance).where(Instance.id == instance))
        s.commit()


def _gone(cfg: ServiceConfig, inst: Instance | None, t: float) -> bool:
    if inst is None:  # stopped cleanly (after requeueing its jobs), or removed as gone
        return True
    if t - inst.seen_at > cfg.stale_seconds:
        return True
    return inst.machine == MACHINE and not pid_alive(inst.pid)


# -- orphaned jobs ------------------------------------------------------------------------------
def _worker_alive_here(worker: str, instances: dict[str, Instance]) -> bool:
    """Whether the worker process of `worker` (`INSTANCE/PID`) is on this machine and alive:
    a worker outlives a SIGKILLed instance by its stop (SIGTERM from the kernel, then the
    blocks in flight)."""
    instance, _, pid = worker.rpartition("/")
    inst = instances.get(instance)
    return (inst is not None and inst.machine == MACHINE and pid.isdigit()
            and pid_alive(int(pid)))  # fmt: skip


def release_orphans(cfg: ServiceConfig, make: sessionmaker[Session],
                    dead: set[str] | None = None) -> list[str]:  # fmt: skip
    """Running jobs whose worker is gone: a dead worker of ours (`dead`), a worker of a gone
    instance, or a heartbeat older than `stale_seconds`. Each is queued again to resume, or
    failed once it has used its attempts; gone instances are then unregistered. Returns the
    ids handled."""
    handled, waiting = [], set()
    with make() as s:
        jobs = s.scalars(select(Job).where(Job.state == "running")).all()
        instances = {i.id: i for i in s.scalars(select(Instance))}
        t = now()
        for job in jobs:
            worker, attempts = job.worker, job.attempts  # the UPDATE below syncs `job`
            instance = instance_of(worker)
            if instance is None:  # `host:pid`, written before instances existed
                host, _, pid = worker.partition(":")
                instance_gone = host == HOST and pid.isdigit() and not pid_alive(int(pid))
            else:
                instance_gone = _gone(cfg, instances.get(instance), t)
            died = dead is not None and worker in dead
            stale = job.heartbeat_at is None or t - job.heartbeat_at > cfg.stale_seconds
            if instance_gone and not (died or stale) and _worker_alive_here(worker, instances):
                instance_gone = False  # its worker is still stopping: the next sweep (it
                # could otherwise still be writing an output the requeued run writes too)
                waiting.add(instance)  # keep its row until then: it says where the worker is
            gone = died or instance_gone
            if not (gone or stale):
                continue
            if job.cancel_requested:
                values = {"state": "cancelled", "message": "cancelled by the user",
                          "finished_at": now()}  # fmt: skip
            elif attempts >= cfg.max_attempts:
                values = {"state": "failed", "error": gave_up(attempts),
                          "finished_at": now(), "progress": 1.0}  # fmt: skip
            else:
                values = {"state": "queued", "progress": 0.0, "started_at": None,
                          "message": "its worker stopped (crash or restart of the service); "
                          "queued again to resume"}  # fmt: skip
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "running", Job.worker == worker)
                .values(worker="", **values)
            )
            s.commit()
            if res.rowcount == 1:
                handled.append(job.id)
                what = {"queued": "requeued"}.get(values["state"], values["state"])
                reason = ("worker gone" if died else "instance gone" if instance_gone
                          else "heartbeat stale")  # fmt: skip
                event(
                    f"job.{what}",
                    30 if what == "failed" else 20,
                    job=job.id,
                    user=job.user_id,
                    worker=worker,
                    attempts=attempts,
                    reason=reason,
                )
                if values["state"] != "queued":
                    remove_job_files(cfg, job.id)
        for iid, inst in instances.items():
            if _gone(cfg, inst, t) and iid not in waiting:
                s.execute(delete(Instance).where(Instance.id == iid,
                                                 Instance.seen_at == inst.seen_at))  # fmt: skip
                s.commit()
                event("instance.gone", instance=iid)
    return handled


# -- the supervisor -----------------------------------------------------------------------------
class Supervisor:
    """Keeps `cfg.workers` worker processes alive, keeps this instance registered, and hands
    back the jobs of dead workers and dead instances. `http`: whether the instance also
    serves the API (shown in `instances`)."""

    def __init__(self, cfg: ServiceConfig, *, http: bool = True):
        self.cfg = cfg
        self.http = http
        self.instance = new_instance_id()
        self.make = sessions(make_engine(cfg.url, migrate_schema=False))
        self.ctx = mp.get_context("spawn")
        self.procs: list[mp.process.BaseProcess] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")

    def _spawn(self) -> mp.process.BaseProcess:
        p = self.ctx.Process(
            target=worker_main, args=(self.cfg.to_dict(), os.getpid(), self.instance),
            daemon=True, name="slidepress-worker",
        )  # fmt: skip
        p.start()
        return p

    def start(self) -> None:
        register(self.make, self.instance, self.cfg.workers, self.http)
        release_orphans(self.cfg, self.make)  # left by a previous run, here or elsewhere
        sweep_scratch(self.cfg, self.make)
        self.procs = [self._spawn() for _ in range(self.cfg.workers)]
        self._thread.start()

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs)

    def _watch(self) -> None:
        last_beat = last_stale_check = last_purge = 0.0
        check_every = min(5.0, self.cfg.stale_seconds / 3)
        while not self._stop.wait(min(1.0, self.cfg.heartbeat_seconds)):
            if time.monotonic() - last_beat >= self.cfg.heartbeat_seconds:
                last_beat = time.monotonic()
                with contextlib.suppress(Exception):  # the database away: try again next beat
                    beat(self.make, self.instance, self.cfg.workers, self.http)
            if self.cfg.retention_days and time.monotonic() - last_purge > 3600:
                last_purge = time.monotonic()
                from .storage import purge

                with contextlib.suppress(Exception):
                    purge(self.cfg, self.make)
            dead = {worker_id(self.instance, p.pid) for p in self.procs if not p.is_alive()}
            if dead:
                with contextlib.suppress(Exception):
                    release_orphans(self.cfg, self.make, dead)
                self.procs = [p if p.is_alive() else self._spawn() for p in self.procs]
            if time.monotonic() - last_stale_check > check_every:
                last_stale_check = time.monotonic()
                with contextlib.suppress(Exception):
                    release_orphans(self.cfg, self.make)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the workers (each puts its running job back in the queue), then unregister."""
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
            release_orphans(self.cfg, self.make,
                            {worker_id(self.instance, p.pid) for p in self.procs})  # fmt: skip
        with contextlib.suppress(Exception):
            unregister(self.make, self.instance)
