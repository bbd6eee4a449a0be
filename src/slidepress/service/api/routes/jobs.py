"""Jobs: queue an encode, compress, compare or export job over uploads and/or results
(containers made by earlier compress jobs, used again without uploading them), follow it,
cancel it, delete it."""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Response
from sqlalchemy import delete, func, select

from ...db import ACTIVE_STATES, Job, Result, Upload
from ...jobs import JobRequest, batch_job
from ...logs import event
from ...storage import quota_message, remaining, remove_job_files, storage, used_bytes
from ..deps import ID, Config, Sessions, User, own
from ..models import JobOut
from .paging import Page, paginate

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def job_out(j: Job) -> JobOut:
    return JobOut(
        id=j.id, kind=j.kind, state=j.state, progress=j.progress, message=j.message,
        error=j.error, params=j.params, uploads=[e["upload"] for e in j.items if e["upload"]],
        results=[e["result"] for e in j.items if e.get("result")],
        originals=[e["original"] for e in j.items if e.get("original")],
        attempts=j.attempts, created_at=j.created_at, started_at=j.started_at,
        finished_at=j.finished_at, outcomes=j.outcomes or [], summary=j.summary or {},
    )  # fmt: skip


@router.post("", status_code=201, response_model=JobOut,
             responses={404: {"description": "an unknown upload or result"},
                        410: {"description": "a result gone from the server's storage"},
                        422: {"description": "invalid options, a result that is not a "
                                             "container, an export of an upload that is not "
                                             "one, a compare input without a known original"},
                        429: {"description": "too many queued or running jobs"},
                        507: {"description": "storage quota reached"}})  # fmt: skip
def create_job(req: Annotated[JobRequest, Body()], ident: User, cfg: Config,
               make: Sessions) -> JobOut:  # fmt: skip
    """Queue an `encode` (NIC grids), `compress` (tile container), `compare` (what
    compression did to a slide's NIC grid: per-cell cosine, heat map, summary) or `export`
    (a container as pyramidal TIFF or DICOM WSI, coded tiles copied) job over uploads and/or
    results: a result of role `container` (a compress job's .spz) is a slide like an upload,
    so a container can be encoded, transcoded, compared with its original or exported
    without re-uploading. A compare job's originals are uploads (`originals`), or else each
    result's own source, as its compress job recorded it."""
    try:
        spec = batch_job(req, cfg.threads_per_job)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    if len(req.uploads) + len(req.results) > cfg.max_slides_per_job:
        raise HTTPException(422, f"at most {cfg.max_slides_per_job} slides per job")
    from ....pipeline.items import SlideItem

    with make() as s:
        active = s.scalar(select(func.count()).where(
            Job.user_id == ident.user_id, Job.state.in_(ACTIVE_STATES)))  # fmt: skip
        if active >= cfg.max_active_jobs_per_user:
            limit = cfg.max_active_jobs_per_user
            msg = f"{active} jobs queued or running (limit {limit}); wait or cancel one"
            raise HTTPException(429, msg)
        if remaining(cfg, s, ident.user_id) == 0:
            raise HTTPException(507, quota_message(cfg, used_bytes(s, ident.user_id)))
        items = []
        mpp = getattr(req, "mpp_override", None)
        for uid in req.uploads:
            u = own(s, Upload, uid, ident, "upload")
            if req.kind == "export" and u.kind != "container":
                raise HTTPException(422, (
                    f"upload {uid} ({u.filename}) is a {u.kind} slide, not a container: export "
                    "writes a slidepress container (.spz) as TIFF or DICOM; compress it first"
                ))  # fmt: skip
            item = SlideItem(cfg.data_dir / u.path, mpp)
            items.append({"upload": uid, "item": item.to_dict(), "label": u.filename})
        for rid in req.results:
            items.append(result_item(cfg, s, rid, ident, mpp, SlideItem))
        if req.kind == "compare":
            spec["originals"] = compare_originals(cfg, s, req, items, ident)
        job = Job(user_id=ident.user_id, kind=req.kind, params=req.model_dump(),
                  batch_job=spec, items=items, message="queued")  # fmt: skip
        s.add(job)
        s.commit()
    event("job.queued", job=job.id, user=ident.name, kind=job.kind, slides=len(items))
    return job_out(job)


def result_item(cfg, s, rid: str, ident, mpp_override, slide_item) -> dict:
    """A job item for one of the user's results: a container, still in the store (the data
    dir, or the object store: the runner stages it). `upload` stays empty (every item has the
    key); `result` names it."""
    r = own(s, Result, rid, ident, "result")
    if r.role != "container":
        raise HTTPException(422, (
            f"result {rid} ({r.name}) is a {r.role}, not a container: only a compress job's "
            "container (.spz, role 'container') can be the input of a job"))  # fmt: skip
    if not storage(cfg).exists(r.path):
        raise HTTPException(410, f"result {rid} ({r.name}) is gone from the server's storage")
    item = slide_item(cfg.data_dir / r.path, mpp_override)
    return {"upload": "", "result": rid, "item": item.to_dict(), "label": r.name}


def compare_originals(cfg, s, req, items: list[dict], ident) -> dict[str, str]:
    """The original of every compare input (item path -> original path): the uploads named
    in `originals`, one per input, or else each result's source. Each item records it
    (`original`: upload or result id, label) for the runner's report and the page."""
    out = {}
    for i, entry in enumerate(items):
        if req.originals:
            u = own(s, Upload, req.originals[i], ident, "upload")
            path, source = cfg.data_dir / u.path, {"upload": u.id, "label": u.filename}
        else:
            path, source = result_source(cfg, s, s.get(Result, entry["result"]), ident)
        entry["original"] = source
        out[entry["item"]["path"]] = str(path)
    return out


def result_source(cfg, s, r: Result, ident) -> tuple[Path, dict]:
    """(path, {upload or result id, label}) of what the compress job that made container `r`
    ran on: the report row listing `r` among its outputs names it. 422 when it is not known
    or no longer there (the caller gives `originals` then)."""
    job = s.get(Job, r.job_id)
    rows = [
        o
        for o in (job.outcomes if job else None) or []
        if o.get("slide") == r.slide and r.name in str(o.get("outputs", "")).split(";")
    ]
    if len(rows) > 1:  # two inputs of one name: each wrote into its own folder (id[:12])
        parts = Path(r.path).parts
        rows = [o for o in rows if (o.get("upload") or o.get("result") or "")[:12] in parts]
    give = "upload the original and name it in originals"
    if len(rows) != 1 or not (rows[0].get("upload") or rows[0].get("result")):
        raise HTTPException(422, f"result {r.id} ({r.name}): its original is not known; {give}")
    o = rows[0]
    if o.get("upload"):
        u = s.get(Upload, o["upload"])
        if u is None or u.user_id != ident.user_id or not storage(cfg).exists(u.path):
            raise HTTPException(422, (f"result {r.id} ({r.name}): its original upload "
                                      f"{o['upload']} was deleted; {give}"))  # fmt: skip
        return cfg.data_dir / u.path, {"upload": u.id, "label": u.filename}
    src = s.get(Result, o["result"])
    if src is None or src.user_id != ident.user_id or not storage(cfg).exists(src.path):
        raise HTTPException(422, (f"result {r.id} ({r.name}): the container it was made from "
                                  f"({o['result']}) was deleted; {give}"))  # fmt: skip
    return cfg.data_dir / src.path, {"result": src.id, "label": src.name}


@router.get("", response_model=list[JobOut])
def list_jobs(
    ident: User, make: Sessions, response: Response, page: Page,
    state: Annotated[State | None, Query(description="only jobs in this state")] = None,
) -> list[JobOut]:  # fmt: skip
    """The user's jobs, oldest first (`limit`/`offset` page them; X-Total-Count)."""
    with make() as s:
        q = select(Job).where(Job.user_id == ident.user_id)
        if state:
            q = q.where(Job.state == state)
        rows = paginate(s, q, q.order_by(Job.created_at, Job.id), page, response)
    return [job_out(j) for j in rows]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: ID, ident: User, make: Sessions) -> JobOut:
    with make() as s:
        return job_out(own(s, Job, job_id, ident, "job"))


@router.post("/{job_id}/cancel", response_model=JobOut,
             responses={409: {"description": "the job already ended"}})  # fmt: skip
def cancel_job(job_id: ID, ident: User, make: Sessions) -> JobOut:
    """A queued job is cancelled at once; a running one within seconds."""
    with make() as s:
        job = own(s, Job, job_id, ident, "job")
        if job.state == "queued":
            s.execute(Job.__table__.update()
                      .where(Job.id == job_id, Job.state == "queued")
                      .values(state="cancelled", message="cancelled by the user"))  # fmt: skip
            event("job.cancelled", job=job_id, user=ident.name, was="queued")
        elif job.state == "running":
            job.cancel_requested = True
            job.message = "cancelling"
            event("job.cancel_requested", job=job_id, user=ident.name)
        else:
            raise HTTPException(409, f"job {job_id} already {job.state}")
        s.commit()
        s.refresh(job)
        return job_out(job)


@router.delete("/{job_id}", status_code=204, response_class=Response,
               responses={409: {"description": "the job is queued or running"}})  # fmt: skip
def delete_job(job_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    """Delete a finished job with all its results."""
    with make() as s:
        job = own(s, Job, job_id, ident, "job")
        if job.state in ACTIVE_STATES:
            raise HTTPException(409, f"job {job_id} is {job.state}; cancel it first")
        s.execute(delete(Result).where(Result.job_id == job_id))
        s.execute(delete(Job).where(Job.id == job_id))
        s.commit()
    remove_job_files(cfg, job_id)
    return Response(status_code=204)
