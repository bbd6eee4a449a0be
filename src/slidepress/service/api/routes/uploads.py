"""Uploads: the raw request body streamed to disk, capped by the upload limit and the user's
remaining quota; a zip of a DICOM folder unpacked under the same cap; a slidepress container
(.spz) kept whole once it validates. With an object store (`--storage`), the finished upload
is put there before it is recorded (storage.py)."""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

import shutil
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ....errors import StorageError
from ...auth import Identity
from ...config import ServiceConfig
from ...db import ACTIVE_STATES, Job, Upload, new_id
from ...logs import event
from ...messages import for_user
from ...storage import publish_upload, quota_message, remaining, remove_upload_files, used_bytes
from ...uploads import (
    Received,
    UploadRejected,
    accept_container,
    extract_dicom_zip,
    is_container_zip,
    receive,
    sanitize_filename,
)
from ..deps import ID, Config, Sessions, User, own
from ..models import UploadOut
from .paging import Page, paginate

router = APIRouter(prefix="/api/uploads", tags=["uploads"])


def upload_out(u: Upload) -> UploadOut:
    return UploadOut(id=u.id, filename=u.filename, kind=u.kind, bytes=u.bytes,
                     sha256=u.sha256, created_at=u.created_at)  # fmt: skip


@router.post("", status_code=201, response_model=UploadOut,
             responses={413: {"description": "over the upload limit"},
                        415: {"description": "not a slide"},
                        507: {"description": "storage quota reached"}})  # fmt: skip
async def upload(
    request: Request, ident: User, cfg: Config, make: Sessions,
    filename: Annotated[str, Query(max_length=1000, description="the file's name")],
) -> UploadOut:  # fmt: skip
    """Send the file as the raw request body (streamed to disk, never held in memory).
    A DICOM slide goes as a zip of its folder (stored, not deflated); a slidepress
    container (.spz, e.g. a compress job's result) as it is. Types are sniffed from the
    content. The file, or the zip unpacked, may be at most the upload limit and
    the user's remaining quota."""
    limit, reason = upload_limit(cfg, make, ident)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(cfg, limit, reason)
    uid = new_id()
    folder = cfg.data_dir / "uploads" / str(ident.user_id) / uid
    name = sanitize_filename(filename)
    t0 = time.monotonic()
    try:
        got = await receive(request.stream(), folder, name, limit)
    except UploadRejected as e:
        shutil.rmtree(folder, ignore_errors=True)
        event("upload.refused", user=ident.name, filename=name, status=e.status, reason=str(e))
        raise HTTPException(e.status, str(e)) from None
    except ClientDisconnect:  # the client went away: one log line, not an ASGI traceback
        shutil.rmtree(folder, ignore_errors=True)
        event("upload.disconnected", user=ident.name, filename=name,
              seconds=round(time.monotonic() - t0, 3))  # fmt: skip
        return Response(status_code=499)  # nobody reads it
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return await store(cfg, make, ident, uid, folder, got, limit, reason, t0)


def upload_limit(cfg: ServiceConfig, make: sessionmaker[Session],
                 ident: Identity) -> tuple[int, str]:  # fmt: skip
    """The most bytes this user's next upload may hold (the upload limit or the remaining
    quota) and why; 507 when the quota is used up."""
    with make() as s:
        left = remaining(cfg, s, ident.user_id)
        used = used_bytes(s, ident.user_id) if left is not None else 0
    if left == 0:
        raise HTTPException(507, quota_message(cfg, used))
    if left is not None and left < cfg.max_upload_bytes:
        return left, f" (your remaining quota: {quota_message(cfg, used)})"
    return cfg.max_upload_bytes, f" (the upload limit of {cfg.max_upload_bytes} bytes)"


def too_large(cfg: ServiceConfig, limit: int, reason: str) -> HTTPException:
    status = 413 if limit == cfg.max_upload_bytes else 507
    return HTTPException(status, f"upload larger than {limit} bytes{reason}")


async def store(cfg: ServiceConfig, make: sessionmaker[Session], ident: Identity, uid: str,
                folder: Path, got: Received, limit: int, reason: str,
                t0: float) -> UploadOut:  # fmt: skip
    """Keep a container whole (validated) or unpack a DICOM zip (under `limit`), record the
    upload, log it; on a refusal nothing stays in `folder`."""
    try:
        if got.kind == "zip" and await run_in_threadpool(is_container_zip, got.path,
                                                         got.filename):  # fmt: skip
            try:
                got.path = await run_in_threadpool(accept_container, got.path, folder,
                                                   got.filename)  # fmt: skip
            except UploadRejected as e:  # no server path, no command-line advice
                raise UploadRejected(e.status, for_user(str(e), cfg.data_dir)) from None
            got.kind = "container"
        elif got.kind == "zip":
            target = folder / (Path(got.filename).stem or "dicom")
            await run_in_threadpool(
                extract_dicom_zip, got.path, target, limit, cfg.max_zip_members,
                cfg.max_zip_ratio, reason,
            )  # fmt: skip
            got.path.unlink()
            got.path, got.kind = target, "dicom"
    except UploadRejected as e:
        shutil.rmtree(folder, ignore_errors=True)
        event("upload.refused", user=ident.name, filename=got.filename, status=e.status,
              reason=str(e))  # fmt: skip
        raise HTTPException(e.status, str(e)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:  # into the object store, when there is one (then the local copy goes)
        await run_in_threadpool(publish_upload, cfg, got.path)
    except StorageError as e:
        shutil.rmtree(folder, ignore_errors=True)
        event("upload.refused", 40, user=ident.name, filename=got.filename, status=503,
              reason=str(e))  # fmt: skip
        raise HTTPException(503, f"the service cannot store the upload now: {e}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    row = Upload(id=uid, user_id=ident.user_id, filename=got.filename, kind=got.kind,
                 path=str(got.path.relative_to(cfg.data_dir)), bytes=got.bytes,
                 sha256=got.sha256)  # fmt: skip
    with make() as s:
        s.add(row)
        s.commit()
    event("upload.stored", user=ident.name, upload=uid, filename=got.filename, kind=got.kind,
          bytes=got.bytes, seconds=round(time.monotonic() - t0, 3))  # fmt: skip
    return upload_out(row)


@router.get("", response_model=list[UploadOut])
def list_uploads(ident: User, make: Sessions, response: Response, page: Page) -> list[UploadOut]:
    """The user's uploads, oldest first (`limit`/`offset` page them; the total is in the
    X-Total-Count header)."""
    with make() as s:
        q = select(Upload).where(Upload.user_id == ident.user_id)
        rows = paginate(s, q, q.order_by(Upload.created_at, Upload.id), page, response)
    return [upload_out(u) for u in rows]


@router.get("/{upload_id}", response_model=UploadOut)
def get_upload(upload_id: ID, ident: User, make: Sessions) -> UploadOut:
    with make() as s:
        return upload_out(own(s, Upload, upload_id, ident, "upload"))


@router.delete("/{upload_id}", status_code=204, response_class=Response,
               responses={409: {"description": "a queued or running job uses it"}})  # fmt: skip
def delete_upload(upload_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    with make() as s:
        u = own(s, Upload, upload_id, ident, "upload")
        for j in s.scalars(select(Job).where(Job.user_id == ident.user_id,
                                             Job.state.in_(ACTIVE_STATES))):  # fmt: skip
            if any(e["upload"] == upload_id for e in j.items):
                raise HTTPException(409, f"upload {upload_id} is in use by job {j.id}")
        s.delete(u)
        s.commit()
    remove_upload_files(cfg, u.path)
    return Response(status_code=204)
