"""Resumable uploads for multi-GB slides: open a session with the file's size, send parts
with `Content-Range: bytes START-END/SIZE` (each starting where the last stopped), ask for
the offset after a dropped connection and go on from there. The last part completes the
upload: typed, SHA-256 over the whole file, a DICOM zip unpacked, as a one-request upload.
The parts so far are kept by the instance that opened the session (its data dir): behind a
proxy with several instances, a session's requests go to one instance."""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

import asyncio
import re
import shutil
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ...db import UploadSession, new_id, now
from ...logs import event
from ...uploads import UploadRejected, hash_file, place, sanitize_filename
from ..deps import ID, Config, Sessions, User, own
from ..models import UploadOut
from .uploads import store, too_large, upload_limit

router = APIRouter(prefix="/api/uploads/resumable", tags=["uploads"])
PART = "data"  # the bytes so far, in the session's folder
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class SessionOut(BaseModel):
    id: str
    filename: str
    size: int
    offset: int = Field(description="bytes received so far: send the next part from here")
    upload: UploadOut | None = Field(None, description="the finished upload, after the last part")


def _out(u: UploadSession, upload: UploadOut | None = None) -> SessionOut:
    return SessionOut(id=u.id, filename=u.filename, size=u.size, offset=u.offset, upload=upload)


@router.post("", status_code=201, response_model=SessionOut,
             responses={413: {"description": "over the upload limit"},
                        507: {"description": "over the remaining quota"}})  # fmt: skip
def open_session(
    ident: User, cfg: Config, make: Sessions,
    filename: Annotated[str, Query(max_length=1000, description="the file's name")],
    size: Annotated[int, Query(ge=1, description="the whole file's bytes")],
) -> SessionOut:  # fmt: skip
    """Start a resumable upload of `size` bytes."""
    limit, reason = upload_limit(cfg, make, ident)
    if size > limit:
        raise too_large(cfg, limit, reason)
    sid = new_id()
    folder = cfg.data_dir / "uploads" / str(ident.user_id) / sid
    folder.mkdir(parents=True)
    (folder / PART).touch()
    row = UploadSession(id=sid, user_id=ident.user_id, filename=sanitize_filename(filename),
                        path=str((folder / PART).relative_to(cfg.data_dir)), size=size)  # fmt: skip
    with make() as s:
        s.add(row)
        s.commit()
    return _out(row)


@router.get("/{session_id}", response_model=SessionOut)
def get_session(session_id: ID, ident: User, make: Sessions) -> SessionOut:
    """Where to resume: `offset`."""
    with make() as s:
        return _out(own(s, UploadSession, session_id, ident, "upload session"))


RANGE_ERRORS = {
    409: {"description": "the part does not start at the offset"},
    416: {"description": "a malformed or out-of-range Content-Range"},
}


@router.put("/{session_id}", response_model=SessionOut, responses=RANGE_ERRORS)
async def put_part(
    session_id: ID, request: Request, ident: User, cfg: Config, make: Sessions,
    content_range: Annotated[str, Header(description="bytes START-END/SIZE (END inclusive)")],
) -> SessionOut:  # fmt: skip
    """Append one part (the raw body). After a dropped connection the bytes that arrived are
    kept: GET the session for the offset and send from there."""
    with make() as s:
        sess = own(s, UploadSession, session_id, ident, "upload session")
    m = _RANGE.match(content_range.strip())
    if not m or int(m.group(3)) != sess.size or int(m.group(1)) > int(m.group(2)) \
            or int(m.group(2)) >= sess.size:  # fmt: skip
        raise HTTPException(416, f"Content-Range must be 'bytes START-END/{sess.size}' within "
                            "the file")  # fmt: skip
    start, end = int(m.group(1)), int(m.group(2))
    if start != sess.offset:
        raise HTTPException(409, f"this session is at offset {sess.offset}; send the part "
                            f"that starts there (bytes {sess.offset}-...)")  # fmt: skip
    path = cfg.data_dir / sess.path
    if not path.is_file():  # several instances: the parts so far are on the one that opened it
        raise HTTPException(409, "this upload session's parts are on another instance of the "
                            "service: send every part of a session to the same instance (the "
                            "proxy routes by session id), or start a new session")  # fmt: skip
    written, cut = 0, False
    try:
        with open(path, "r+b") as f:
            f.seek(start)
            async for chunk in request.stream():
                if written + len(chunk) > end - start + 1:
                    raise HTTPException(416, "the part is longer than its Content-Range")
                f.write(chunk)
                written += len(chunk)
            f.truncate(start + written)
    except ClientDisconnect:
        cut = True
    offset = start + written
    with make() as s:
        s.query(UploadSession).filter_by(id=session_id).update({"offset": offset,
                                                                "updated_at": now()})  # fmt: skip
        s.commit()
        sess.offset = offset
    if cut:
        event("upload.disconnected", user=ident.name, filename=sess.filename, resumable=True,
              offset=offset, size=sess.size)  # fmt: skip
        return Response(status_code=499)
    if offset < sess.size:
        return _out(sess)
    return _out(sess, await _complete(sess, ident, cfg, make))


async def _complete(sess: UploadSession, ident, cfg, make) -> UploadOut:
    t0 = time.monotonic()
    folder = (cfg.data_dir / sess.path).parent
    with make() as s:
        s.query(UploadSession).filter_by(id=sess.id).delete()
        s.commit()
    try:
        limit, reason = upload_limit(cfg, make, ident)  # the quota may have shrunk since
        if sess.size > limit:
            raise too_large(cfg, limit, reason)
    except HTTPException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        sha, head = await run_in_threadpool(hash_file, cfg.data_dir / sess.path)
        got = place(cfg.data_dir / sess.path, folder, sess.filename, sess.size, sha, head)
    except UploadRejected as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(e.status, str(e)) from None
    return await store(cfg, make, ident, sess.id, folder, got, limit, reason, t0)


@router.delete("/{session_id}", status_code=204, response_class=Response)
async def abort_session(session_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    """Give up a resumable upload: its bytes are deleted."""
    with make() as s:
        sess = own(s, UploadSession, session_id, ident, "upload session")
        s.delete(sess)
        s.commit()
    await asyncio.to_thread(shutil.rmtree, (cfg.data_dir / sess.path).parent, True)
    return Response(status_code=204)
