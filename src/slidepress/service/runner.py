"""The job runner (in a worker process): run one claimed job through the pipeline's batch
runner, record progress (a heartbeat thread that also notices cancel requests), outcomes and
results, and log one line when it starts and when it ends.

A job's outputs go to `DATA/jobs/<id>/out`, written under temporary names by the pipeline; the
job's results are registered in the same transaction that marks it succeeded, so a partial
output is never listed. Errors are rewritten for the service's user (`messages.for_user`):
the upload's label instead of a server path, request fields instead of CLI flags.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from .config import ServiceConfig
from .db import Job, Result, User, now
from .logs import event
from .messages import for_user
from .storage import drop_scratch, publish_results, stage_inputs
from .worker import Stopped, job_dir


class Cancelled(BaseException):  # noqa: N818 - a stop request, like KeyboardInterrupt
    """The user cancelled the running job."""


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


def _user_name(make: sessionmaker[Session], user_id: int) -> str:
    with contextlib.suppress(Exception), make() as s:
        return s.scalar(select(User.name).where(User.id == user_id)) or str(user_id)
    return str(user_id)


def run_job(cfg: ServiceConfig, make: sessionmaker[Session], job_id: str, me: str) -> None:
    from ..errors import SlidepressError
    from ..pipeline.batch import job_from_dict, run_slide, write_report
    from ..pipeline.items import SlideItem

    with make() as s:
        job = s.get(Job, job_id)
    t0 = time.monotonic()
    who = {"job": job_id, "user": _user_name(make, job.user_id), "kind": job.kind}
    event("job.started", **who, attempt=job.attempts, slides=len(job.items), worker=me)

    def ended(state: str, **fields: Any) -> None:
        level = 30 if state == "failed" else 20  # WARNING / INFO
        event(f"job.{state}", level, **who, seconds=round(time.monotonic() - t0, 3), **fields)

    def public(text: str) -> str:
        return for_user(text, cfg.data_dir, job.items)

    folder = job_dir(cfg, job_id)
    if job.attempts > cfg.max_attempts:
        _finish(make, job_id, me, state="failed", error=gave_up(job.attempts - 1))
        shutil.rmtree(folder, ignore_errors=True)
        ended("failed", error="gave up after interruptions")
        return
    out = folder / "out"
    tracker = _Tracker(make, job_id, me, len(job.items), cfg.heartbeat_seconds)
    outcomes, items = [], []
    try:
        with tracker:
            stage_inputs(cfg, make, job)  # storage.py: from an object store, else in place
            batch = job_from_dict(job.batch_job)
            batch.prepare()
            out.mkdir(parents=True, exist_ok=True)
            stems = Counter(SlideItem.from_dict(e["item"]).stem for e in job.items)
            gone = _deleted_results(make, job)
            for i, entry in enumerate(job.items):
                tracker.start_slide(i)
                item = entry["item"]
                if entry.get("result") in gone or not Path(item["path"]).exists():
                    outcomes.append(_missing(entry))
                    items.append(item)
                    continue
                slide = SlideItem.from_dict(item)
                # two inputs with one file name: each its own folder, so outputs never clash
                key = entry["upload"] or entry.get("result", "")
                where = out / key[:12] if stems[slide.stem] > 1 else out
                try:
                    outcome = run_slide(slide, batch, where, tracker.progress)
                except MemoryError:
                    outcome = _out_of_memory(cfg, entry)
                if outcome.traceback:  # a bug: for the operator's console, not the user
                    print(f"job {job_id}: {outcome.error}\n{outcome.traceback}", file=sys.stderr)
                if "MemoryError" in (outcome.traceback or "") + (outcome.error or ""):
                    outcome.error = _out_of_memory(cfg, entry).error
                elif outcome.error:
                    outcome.error = public(outcome.error)
                source = ({"upload": entry["upload"]} if entry["upload"]
                          else {"result": entry.get("result", "")})  # fmt: skip
                for key, value in (entry.get("original") or {}).items():  # compare jobs
                    if key in ("upload", "result"):
                        source[f"original_{key}"] = value
                outcome.fields = {**source, **outcome.fields}
                outcomes.append(outcome)
                items.append(item)
            tracker.check()
            results = _collect(cfg, job, list(zip(items, outcomes, strict=True)), out)
            report = write_report(out / "report.csv", outcomes)
            results.append(_result(cfg, job, report, "report", ""))
            publish_results(cfg, results)  # storage.py: whole objects, before registering
    except Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        _finish(make, job_id, me, state="cancelled", message="cancelled by the user")
        ended("cancelled")
        return
    except Stopped:
        _requeue(make, job_id, me, "the service stopped; queued again to resume")
        event("job.requeued", **who, reason="service stopping")
        raise
    except SlidepressError as e:  # the job as a whole (e.g. an encoder that cannot load)
        shutil.rmtree(folder, ignore_errors=True)
        _finish(make, job_id, me, state="failed", error=public(str(e)), progress=1.0)
        ended("failed", error=public(str(e)))
        return
    except MemoryError:
        shutil.rmtree(folder, ignore_errors=True)
        error = _out_of_memory(cfg, None).error
        _finish(make, job_id, me, state="failed", error=error, progress=1.0)
        ended("failed", error=error)
        return
    except Exception as e:  # noqa: BLE001 - a bug fails this job, not the worker
        shutil.rmtree(folder, ignore_errors=True)
        error = public(f"internal error: {type(e).__name__}: {e}")
        _finish(make, job_id, me, state="failed", progress=1.0, error=error)
        ended("failed", error=error)
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
    drop_scratch(cfg, folder)  # storage.py: outputs kept in an object store, not here
    if ok:
        ended(state, slides=len(outcomes), failed=len(failed), error=error or None)


def _out_of_memory(cfg: ServiceConfig, entry: dict[str, Any] | None):
    from ..pipeline.batch import Outcome

    label = (entry.get("label") or Path(entry["item"]["path"]).name) if entry else "the job"
    gb = cfg.worker_memory_limit / 1024**3
    return Outcome(
        label,
        label,
        "failed",
        error=(
            f"{label}: ran out of the worker's memory limit ({gb:.1f} GB); send a smaller "
            "image or a tiled slide format, or ask the administrator (worker_memory_gb)"
        ),
    )


def _public_row(outcome) -> dict[str, Any]:
    """The report row without server paths (a user sees file names only)."""
    row = {**outcome.row(), "internal": outcome.internal}
    row["path"] = outcome.slide
    row["outputs"] = ";".join(Path(p).name for p in outcome.outputs)
    return row


def gave_up(runs: int) -> str:
    return (
        f"the job was interrupted {runs} times (worker process killed or service restarted) "
        "and is not retried again; submit it anew if the cause is fixed"
    )


def _deleted_results(make: sessionmaker[Session], job: Job) -> set[str]:
    """Ids of the job's input results no longer recorded (deleted, or their job deleted or
    purged by retention) since the job was queued."""
    wanted = {e["result"] for e in job.items if e.get("result")}
    if not wanted:
        return set()
    with make() as s:
        there = set(s.scalars(select(Result.id).where(Result.id.in_(wanted),
                                                      Result.user_id == job.user_id)))  # fmt: skip
    return wanted - there


def _missing(entry: dict[str, Any]):
    from ..pipeline.batch import Outcome

    name = entry.get("label") or Path(entry["item"]["path"]).name
    if entry.get("result"):
        error = (f"{name}: the result {entry['result']} was deleted before the job ran (it, or "
                 "the job that made it, was deleted or purged by retention); upload the "
                 "container or submit the job with another result")  # fmt: skip
    else:
        error = f"{name}: the upload was deleted before the job ran"
    return Outcome(
        name,
        name,
        "failed",
        error=error,
        fields={k: entry[k] for k in ("upload", "result") if entry.get(k)},
    )


def _result(cfg: ServiceConfig, job: Job, path: Path, role: str, slide: str) -> Result:
    from ..pipeline.batch import output_bytes

    return Result(
        job_id=job.id, user_id=job.user_id, name=path.name,
        path=str(path.relative_to(cfg.data_dir)), role=role, slide=slide,
        bytes=output_bytes([path]), is_dir=path.is_dir(),
    )  # fmt: skip


# the role of an output by its job kind (images are previews whatever the kind)
ROLES = {"encode": "grid", "compress": "container", "export": "export"}
COMPARE_ROLES = {"cosine.npy": "cosine", "compare.json": "summary"}


def result_role(kind: str, path: Path) -> str:
    if path.suffix == ".png":
        return "preview"
    if kind == "compare":
        return COMPARE_ROLES.get(path.name, "summary")
    return ROLES.get(kind, "grid")


def _collect(cfg: ServiceConfig, job: Job, done: list[tuple], out: Path) -> list[Result]:
    """Result rows for every finished slide's outputs (+ previews made for compress jobs)."""
    from ..pipeline.items import SlideItem
    from .previews import compress_previews

    results = []
    for item, o in done:
        if o.status == "failed":
            continue
        for p in map(Path, o.outputs):
            role = result_role(job.kind, p)
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
            .values(
                state="queued",
                worker="",
                attempts=Job.attempts - 1,
                message=message,
                progress=0.0,
                started_at=None,
            )
        )
        s.commit()
