"""Storage per user (quota) and retention: what a user holds on disk (uploads + results, as
recorded), and the purge that deletes finished jobs' results and unused uploads past their
age. The supervisor purges once an hour when `retention_days` is set; `slidepress admin
purge` does it on demand."""

from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from .config import GB, ServiceConfig
from .db import ACTIVE_STATES, Job, Result, Upload, UploadSession, User, now


def used_bytes(s: Session, user_id: int) -> int:
    """Bytes of a user's uploads and results."""
    up = s.scalar(select(func.coalesce(func.sum(Upload.bytes), 0))
                  .where(Upload.user_id == user_id))  # fmt: skip
    res = s.scalar(select(func.coalesce(func.sum(Result.bytes), 0))
                   .where(Result.user_id == user_id))  # fmt: skip
    return int(up or 0) + int(res or 0)


def remaining(cfg: ServiceConfig, s: Session, user_id: int) -> int | None:
    """Bytes the user may still store; None: no quota."""
    if not cfg.quota_bytes:
        return None
    return max(0, cfg.quota_bytes - used_bytes(s, user_id))


def quota_message(cfg: ServiceConfig, used: int) -> str:
    return (
        f"storage quota reached: {used / GB:.2f} of {cfg.quota_bytes / GB:.2f} GB used by your "
        "uploads and results; delete some (DELETE /api/uploads/ID, /api/jobs/ID) and retry"
    )


def usage(s: Session) -> list[dict[str, Any]]:
    """Per user: uploads and results, count and bytes."""
    rows = []
    for u in s.scalars(select(User).order_by(User.name)):
        n_up, b_up = s.execute(select(func.count(), func.coalesce(func.sum(Upload.bytes), 0))
                               .where(Upload.user_id == u.id)).one()  # fmt: skip
        n_res, b_res = s.execute(select(func.count(), func.coalesce(func.sum(Result.bytes), 0))
                                 .where(Result.user_id == u.id)).one()  # fmt: skip
        rows.append({"user": u.name, "uploads": n_up, "upload_bytes": int(b_up),
                     "results": n_res, "result_bytes": int(b_res)})  # fmt: skip
    return rows


def expires_at(cfg: ServiceConfig, finished_at: float | None) -> float | None:
    if not cfg.retention_days or finished_at is None:
        return None
    return finished_at + cfg.retention_days * 86400


def purge(cfg: ServiceConfig, make: sessionmaker[Session], days: float | None = None,
          user: str | None = None) -> dict[str, int]:  # fmt: skip
    """Delete finished jobs (with their results) that finished more than `days` ago
    (default: the retention setting; 0 or None: nothing), uploads older than that which no
    queued or running job uses, and resumable uploads abandoned that long. `user`: only that
    user's. Returns counts."""
    days = cfg.retention_days if days is None else days
    if not days:
        return {"jobs": 0, "uploads": 0, "bytes": 0}
    cutoff = now() - days * 86400
    from .logs import event
    from .worker import job_dir

    freed = n_jobs = n_uploads = 0
    with make() as s:
        uid = None
        if user is not None:
            uid = s.scalar(select(User.id).where(User.name == user))
            if uid is None:
                from ..errors import UsageError

                raise UsageError(f"no user {user!r}")
        q = select(Job).where(Job.state.not_in(ACTIVE_STATES), Job.finished_at < cutoff)
        if uid is not None:
            q = q.where(Job.user_id == uid)
        for job in s.scalars(q).all():
            freed += int(s.scalar(select(func.coalesce(func.sum(Result.bytes), 0))
                                  .where(Result.job_id == job.id)) or 0)  # fmt: skip
            s.execute(delete(Result).where(Result.job_id == job.id))
            s.execute(delete(Job).where(Job.id == job.id))
            s.commit()
            shutil.rmtree(job_dir(cfg, job.id), ignore_errors=True)
            n_jobs += 1
        in_use = {e["upload"] for j in s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES)))
                  for e in j.items}  # fmt: skip
        q = select(Upload).where(Upload.created_at < cutoff)
        if uid is not None:
            q = q.where(Upload.user_id == uid)
        for up in s.scalars(q).all():
            if up.id in in_use:
                continue
            s.delete(up)
            s.commit()
            shutil.rmtree((cfg.data_dir / up.path).parent, ignore_errors=True)
            freed += up.bytes
            n_uploads += 1
        q = select(UploadSession).where(UploadSession.updated_at < cutoff)
        if uid is not None:
            q = q.where(UploadSession.user_id == uid)
        for sess in s.scalars(q).all():  # resumable uploads abandoned that long ago
            s.delete(sess)
            s.commit()
            shutil.rmtree((cfg.data_dir / sess.path).parent, ignore_errors=True)
    if n_jobs or n_uploads:
        event("storage.purged", jobs=n_jobs, uploads=n_uploads, bytes=freed, days=days)
    return {"jobs": n_jobs, "uploads": n_uploads, "bytes": freed}
