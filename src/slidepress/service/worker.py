"""Worker processes: claim a queued job, run it through the pipeline's batch runner, record
progress, outcomes and results; and the supervisor in the web process that keeps them alive.

A job's outputs go to `DATA/jobs/<id>/out`, written under temporary names by the pipeline; the
job's results are registered in the same transaction that marks it succeeded, so a partial
output is never listed. A worker that dies (SIGKILL, out of memory, the service killed) leaves
its job `running` with a stale heartbeat: the supervisor (or the next start of the service)
queues it again to resume (finished slides are skipped by content key) or, after
`max_attempts` runs, fails it with a message saying so.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ..store.atomic import pid_alive
from .config import ServiceConfig
from .db import Job, Result, make_engine, now, sessions

HOST = socket.gethostname()


class Cancelled(BaseException):  # noqa: N818 - a stop request, like KeyboardInterrupt
    """The user cancelled the running job."""


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


def worker_main(config: dict[str, Any], parent_pid: int) -> None:
    """Entry point of a worker process (spawned: nothing inherited from the web process)."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the web process, which stops us
    _die_with_parent()
    cfg = ServiceConfig(**config)
    make = sessions(make_engine(cfg.url))
    me = worker_id()
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
    """Take the oldest queued job: a conditional UPDATE, so two workers never take the same."""
    with make() as s:
        ids = s.scalars(
            select(Job.id).where(Job.state == "queued").order_by(Job.created_at).limit(8)
        ).all()
        for jid in ids:
            res = s.execute(
                update(Job)
                .where(Job.id == jid, Job.state == "queued")
                .values(
                    state="running",
                    worker=me,
                    attempts=Job.attempts + 1,
                    started_at=now(),
                    heartbeat_at=now(),
                    message="starting",
                )  # fmt: skip
            )
            s.commit()
            if res.rowcount == 1:
                return jid
    return None


class _Tracker:
    """Progress of the running job, written to the database by a heartbeat thread (so slide
    work never waits on the database) which also notices cancel requests."""

    def __init__(self, make: sessionmaker[Session], job_id: str, me: str, n_slides: int,
                 every: float):  # fmt: skip
        self.make, self.job_id, self.me, self.n = make, job_id, me, max(n_slides, 1)
        self.every = every
        self.slide_index, self.done, self.total, self.name = 0, 0, 0, ""
        self.cancel = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def fraction(self) -> float:
        part = self.done / self.total if self.total else 0.0
        return min(1.0, (self.slide_index + part) / self.n)

    def message(self) -> str:
        if not self.name:
            return "starting"
        where = f"slide {self.slide_index + 1}/{self.n} {self.name}"
        return f"{where}: {self.done}/{self.total}" if self.total else where

    def start_slide(self, index: int) -> None:
        self.slide_index, self.done, self.total, self.name = index, 0, 0, ""
        self.check()

    def progress(self, name: str, total: int):  # ProgressStart
        self.name, self.total, self.done = name, int(total), 0

        def advance(n: int) -> None:
            self.done += int(n)
            self.check()

        return advance

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(Exception), self.make() as s:
                s.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.worker == self.me, Job.state == "running")
                    .values(
                        heartbeat_at=now(),
                        progress=round(self.fraction(), 4),
                        message=self.message(),
                    )  # fmt: skip
                )
                s.commit()
                if s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                    self.cancel.set()

    def __enter__(self) -> _Tracker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _finish(make: sessionmaker[Session], job_id: str, me: str, results: list[Result] = (),
            **values: Any) -> bool:  # fmt: skip
    """Set the job's final state (and register its results) only if this worker still owns
    it: a job taken back by the supervisor meanwhile is not finished twice."""
    with make() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == me, Job.state == "running")
            .values(finished_at=now(), **values)
        )
        if res.rowcount != 1:
            s.rollback()
            return False
        s.add_all(results)
        s.commit()
        return True


def run_job(cfg: ServiceConfig, make: sessionmaker[Session], job_id: str, me: str) -> None:
    from ..errors import SlidepressError
    from ..pipeline.batch import job_from_dict, run_slide, write_report
    from ..pipeline.items import SlideItem

    with make() as s:
        job = s.get(Job, job_id)
    folder = job_dir(cfg, job_id)
    if job.attempts > cfg.max_attempts:
        _finish(make, job_id, me, state="failed", error=_gave_up(job.attempts - 1))
        shutil.rmtree(folder, ignore_errors=True)
        return
    out = folder / "out"
    tracker = _Tracker(make, job_id, me, len(job.items), cfg.heartbeat_seconds)
    outcomes, items = [], []
    try:
        with tracker:
            batch = job_from_dict(job.batch_job)
            batch.prepare()
            out.mkdir(parents=True, exist_ok=True)
            stems = Counter(SlideItem.from_dict(e["item"]).stem for e in job.items)
            for i, entry in enumerate(job.items):
                tracker.start_slide(i)
                item = entry["item"]
                if not Path(item["path"]).exists():
                    outcomes.append(_missing(entry))
                    items.append(item)
                    continue
                slide = SlideItem.from_dict(item)
                # two uploads with one file name: each its own folder, so outputs never clash
                where = out / entry["upload"][:12] if stems[slide.stem] > 1 else out
                outcome = run_slide(slide, batch, where, tracker.progress)
                if outcome.traceback:  # a bug: for the operator's console, not the user
                    print(f"job {job_id}: {outcome.error}\n{outcome.traceback}", file=sys.stderr)
                outcome.fields = {"upload": entry["upload"], **outcome.fields}
                outcomes.append(outcome)
                items.append(item)
            tracker.check()
            results = _collect(cfg, job, list(zip(items, outcomes, strict=True)), out)
            report = write_report(out / "report.csv", outcomes)
            results.append(_result(cfg, job, report, "report", ""))
    except Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        _finish(make, job_id, me, state="cancelled", message="cancelled by the user")
        return
    except Stopped:
        _requeue(make, job_id, me, "the service stopped; queued again to resume")
        raise
    except SlidepressError as e:  # the job as a whole (e.g. an encoder that cannot load)
        shutil.rmtree(folder, ignore_errors=True)
        _finish(make, job_id, me, state="failed", error=str(e), progress=1.0)
        return
    except Exception as e:  # noqa: BLE001 - a bug fails this job, not the worker
        shutil.rmtree(folder, ignore_errors=True)
        _finish(make, job_id, me, state="failed", progress=1.0,
                error=f"internal error: {type(e).__name__}: {e}")  # fmt: skip
        return
    rows = [_public_row(o) for o in outcomes]
    failed = [o for o in outcomes if o.status == "failed"]
    state = "failed" if len(failed) == len(outcomes) else "succeeded"
    error = "; ".join(o.error for o in failed)
    message = (f"{len(outcomes) - len(failed)} of {len(outcomes)} slides done"
               + (f", {len(failed)} failed" if failed else ""))  # fmt: skip
    if state == "failed":
        results = []  # nothing to show: keep no half results
    ok = _finish(make, job_id, me, results, state=state, progress=1.0, outcomes=rows,
                 error=error, message=message, summary=_summary(job.kind, outcomes))  # fmt: skip
    if state == "failed" and ok:
        shutil.rmtree(folder, ignore_errors=True)


def _public_row(outcome) -> dict[str, Any]:
    """The report row without server paths (a user sees file names only)."""
    row = {**outcome.row(), "internal": outcome.internal}
    row["path"] = outcome.slide
    row["outputs"] = ";".join(Path(p).name for p in outcome.outputs)
    return row


def _gave_up(runs: int) -> str:
    return (
        f"the job was interrupted {runs} times (worker process killed or service restarted) "
        "and is not retried again; submit it anew if the cause is fixed"
    )


def _missing(entry: dict[str, Any]):
    from ..pipeline.batch import Outcome

    name = Path(entry["item"]["path"]).name
    return Outcome(name, name, "failed", error=f"{name}: the upload was deleted before the job ran")


def _result(cfg: ServiceConfig, job: Job, path: Path, role: str, slide: str) -> Result:
    from ..pipeline.batch import _bytes

    return Result(
        job_id=job.id, user_id=job.user_id, name=path.name,
        path=str(path.relative_to(cfg.data_dir)), role=role, slide=slide,
        bytes=_bytes([path]), is_dir=path.is_dir(),
    )  # fmt: skip


def _collect(cfg: ServiceConfig, job: Job, done: list[tuple], out: Path) -> list[Result]:
    """Result rows for every finished slide's outputs (+ previews made for compress jobs)."""
    from ..pipeline.items import SlideItem
    from .previews import compress_previews

    results = []
    for item, o in done:
        if o.status == "failed":
            continue
        for p in map(Path, o.outputs):
            role = "preview" if p.suffix == ".png" else ("container" if p.suffix == ".spz"
                                                          else "grid")  # fmt: skip
            results.append(_result(cfg, job, p, role, o.slide))
            if role == "container":
                try:
                    pngs = compress_previews(SlideItem.from_dict(item), p, out / "previews")
                except Exception as e:  # noqa: BLE001 - a preview must not fail the job
                    o.notes.append(f"no preview: {e}")
                    pngs = []
                results.extend(_result(cfg, job, png, "preview", o.slide) for png in pngs)
    return results


def _summary(kind: str, outcomes: list) -> dict[str, Any]:
    done = [o for o in outcomes if o.status != "failed"]
    s: dict[str, Any] = {
        "slides": len(outcomes), "done": len(done), "failed": len(outcomes) - len(done),
        "bytes_in": sum(o.bytes_in for o in done), "bytes_out": sum(o.bytes_out for o in done),
        "seconds": round(sum(o.seconds for o in outcomes), 3),
    }  # fmt: skip
    if s["bytes_out"]:
        s["ratio"] = round(s["bytes_in"] / s["bytes_out"], 3)
    return s


def _requeue(make: sessionmaker[Session], job_id: str, me: str, message: str) -> None:
    """Back to the queue without counting the run (a clean stop, not a crash)."""
    with contextlib.suppress(Exception), make() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == me, Job.state == "running")
            .values(state="queued", worker="", attempts=Job.attempts - 1, message=message)
        )
        s.commit()


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
                values = {"state": "failed", "error": _gave_up(job.attempts),
                          "finished_at": now(), "progress": 1.0}  # fmt: skip
            else:
                values = {"state": "queued", "message": "its worker stopped (crash or "
                          "restart of the service); queued again to resume"}  # fmt: skip
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "running", Job.worker == job.worker)
                .values(worker="", **values)
            )
            s.commit()
            if res.rowcount == 1:
                handled.append(job.id)
                if values["state"] != "queued":
                    shutil.rmtree(job_dir(cfg, job.id), ignore_errors=True)
    return handled


# -- the supervisor (web process) ---------------------------------------------------------------
class Supervisor:
    """Keeps `cfg.workers` worker processes alive and hands back the jobs of dead ones."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.make = sessions(make_engine(cfg.url))
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
        last_stale_check = 0.0
        while not self._stop.wait(1.0):
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
